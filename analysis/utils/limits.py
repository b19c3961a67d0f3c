"""Limits checked before reading untrusted files: the memory budget of one load, and turning text
from other libraries into one clean line for a message.

    check_load_budget(path, declared_bytes, "its tensors")   # CheckpointError when over budget

The budget is $DYNAPRUNE_MAX_LOAD_BYTES (default 4 GiB): every checkpoint, model or trajectory
file is measured against it (what it declares, not only what it is) before anything is allocated.
"""
from __future__ import annotations

import os
import re

from analysis.errors import CheckpointError, InvalidInputError

MAX_LOAD_BYTES_VARIABLE = "DYNAPRUNE_MAX_LOAD_BYTES"
DEFAULT_MAX_LOAD_BYTES = 4 * 1024**3
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")


def max_load_bytes(raw: str | None = None) -> int:
    """The memory budget of one load in bytes, from $DYNAPRUNE_MAX_LOAD_BYTES (or `raw`)."""
    raw = os.environ.get(MAX_LOAD_BYTES_VARIABLE, "") if raw is None else raw
    if not raw.strip():
        return DEFAULT_MAX_LOAD_BYTES
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidInputError(f"{MAX_LOAD_BYTES_VARIABLE} must be a whole number of bytes, got {raw!r}") from None
    if value < 1:
        raise InvalidInputError(f"{MAX_LOAD_BYTES_VARIABLE} must be positive, got {raw!r}")
    return value


def human_bytes(count: int | float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"  # unreachable


def check_load_budget(path, nbytes: int | float, what: str = "it") -> None:
    """Refuse to load `path` when `what` it declares needs more than the memory budget."""
    budget = max_load_bytes()
    if nbytes > budget:
        raise CheckpointError(
            f"{path}: {what} would need {human_bytes(nbytes)} of memory, more than the "
            f"{human_bytes(budget)} budget; refused before allocating ({MAX_LOAD_BYTES_VARIABLE} raises it)")


def one_line(text: object, limit: int = 300) -> str:
    """`text` without terminal escape codes, its lines joined, at most `limit` characters."""
    flat = " ".join(_ANSI_ESCAPE.sub("", str(text)).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."
