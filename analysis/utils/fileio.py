"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.
Also reading back the JSON files written here, and making a file name from text a user chose."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from analysis.errors import CheckpointError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file lives in the same directory (so the rename is atomic) and starts with
    ".tmp-" so directory scans can ignore it. On any exception it is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_json_line(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line (metrics logs). A torn last line is skipped by read_json_lines."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(obj, sort_keys=True, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a torn or corrupt line instead of failing."""
    records = []
    p = Path(path)
    if not p.exists():
        return records
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def read_json_object(path: str | os.PathLike, what: str, remedy: str) -> dict:
    """The JSON object in `path`; CheckpointError naming the file, `what` it holds (e.g. "the run
    description") and the `remedy` if it cannot be read, is not JSON or holds something else."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: cannot read {what} ({error}); {remedy}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected {what} as a JSON object; {remedy}")
    return value


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link (never what it points to) or a folder with everything in it; nothing if absent."""
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def safe_file_name(name: str, default: str) -> str:
    """`name` without any folder part, with every run of characters outside [A-Za-z0-9._-] made one
    "_" and no leading or trailing dots or underscores (so never hidden, never "..");
    `default` when nothing is left."""
    base = re.split(r"[\\/]", str(name))[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or default


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, paths
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
