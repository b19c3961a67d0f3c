"""Uploaded trajectories kept under the dynaprune home, one folder per dashboard session, and
their clean-up: a session folder nothing has touched for a while is removed, so uploads do not
pile up on a shared machine, unless a job that may still run or resume reads from it.

    removed = remove_stale_uploads()          # what the dashboard does once when it starts

The age limit is $DYNAPRUNE_UPLOAD_RETENTION_DAYS (default 7; 0 keeps uploads forever).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from analysis.errors import InvalidInputError
from analysis.jobs import SUCCEEDED, list_jobs, resolve_home

UPLOADS_FOLDER = "uploads"
DEFAULT_RETENTION_DAYS = 7.0


def uploads_root(home: str | os.PathLike | None = None) -> Path:
    return resolve_home(home) / UPLOADS_FOLDER


def retention_seconds(raw: str | None = None) -> float | None:
    """The age limit in seconds from $DYNAPRUNE_UPLOAD_RETENTION_DAYS (or `raw`); None: keep forever."""
    raw = os.environ.get("DYNAPRUNE_UPLOAD_RETENTION_DAYS", "") if raw is None else raw
    if not raw.strip():
        return DEFAULT_RETENTION_DAYS * 86400
    try:
        days = float(raw)
    except ValueError:
        raise InvalidInputError(f"DYNAPRUNE_UPLOAD_RETENTION_DAYS must be a number of days, got {raw!r}") from None
    if days != days or days < 0:
        raise InvalidInputError(f"DYNAPRUNE_UPLOAD_RETENTION_DAYS must be >= 0, got {raw!r}")
    return None if days == 0 else days * 86400


def newest_change(folder: Path) -> float:
    """The latest modification time of a folder or anything inside it (links are not followed)."""
    newest = folder.lstat().st_mtime
    for root, directories, files in os.walk(folder, followlinks=False):
        for name in directories + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue  # removed meanwhile
    return newest


def path_arguments(args: Iterable[str]) -> list[str]:
    """Every argument of a command line that may name a path: plain words and the values of
    `--option=VALUE` (`--option VALUE` gives its value as the next, plain word)."""
    found = []
    for argument in args:
        if argument.startswith("--") and "=" in argument:
            found.append(argument.split("=", 1)[1])
        elif argument and not argument.startswith("-"):
            found.append(argument)
    return found


def paths_used_by_jobs(home: str | os.PathLike | None = None) -> list[Path]:
    """Every path-like argument of the jobs that may still run or be resumed (all but succeeded
    ones), resolved (links and `..` followed) against the job's working folder."""
    used = []
    for job in list_jobs(home=home):
        if job.state == SUCCEEDED:
            continue
        base = Path(job.cwd) if job.cwd else Path.cwd()
        for argument in path_arguments(job.args):
            try:
                used.append((base / argument).resolve())
            except (OSError, RuntimeError, ValueError):
                used.append((base / argument).absolute())
    return used


def _resolved(path: str | os.PathLike) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(path).absolute()


_FROM_ENVIRONMENT = object()


def remove_stale_uploads(home: str | os.PathLike | None = None, *, max_age_s=_FROM_ENVIRONMENT,
                         now: float | None = None, in_use: Iterable[Path] | None = None) -> list[Path]:
    """Remove the session folders under <home>/uploads whose newest file is older than `max_age_s`
    (default: from the environment, see the module docstring; None keeps everything), except those
    holding a path in `in_use` (default: the arguments of jobs that may still run). Returns the
    folders removed. Only real folders directly inside the uploads folder are ever removed."""
    root = uploads_root(home)
    limit = retention_seconds() if max_age_s is _FROM_ENVIRONMENT else max_age_s
    if limit is None or not root.is_dir() or root.is_symlink():
        return []
    now = time.time() if now is None else now
    used = [_resolved(p) for p in (paths_used_by_jobs(home) if in_use is None else in_use)]
    removed = []
    for folder in sorted(root.iterdir()):
        if folder.is_symlink() or not folder.is_dir():
            continue
        real = _resolved(folder)
        if any(path == real or path.is_relative_to(real) for path in used):
            continue
        if now - newest_change(folder) > limit:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
