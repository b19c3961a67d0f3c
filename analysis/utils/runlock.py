"""One writer per run directory: a lock file created with O_CREAT | O_EXCL that holds the writer's
pid (and its start time, so a recycled pid is not mistaken for it).

    with run_lock("runs/a"):          # RunLockedError at once while another live process holds it
        ...                           # train, prune: write the run

A lock left by a process that died (kill -9, a crash, a reboot) is recognised as stale and taken
over. The folder is created if needed, and removed again if it is still empty when the block fails.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from analysis.errors import InvalidInputError

LOCK_FILE = ".dynaprune.lock"
_UNWRITTEN_LOCK_S = 10.0  # a lock still empty after this long was left by a writer that died


class RunLockedError(InvalidInputError):
    """Another live process is writing the same run directory."""


def _start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _holder_alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    ticks = holder.get("start_ticks")
    return ticks is None or _start_ticks(pid) in (None, ticks)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read_holder(lock: Path) -> dict | None:
    """The lock's content, {} when unreadable (a writer between create and write), None when gone."""
    try:
        value = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _create(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid())}, handle)
    return True


def acquire(directory: Path) -> Path:
    """Create the lock of `directory` (which must exist); RunLockedError if a live process holds it."""
    lock = directory / LOCK_FILE
    for _ in range(5):
        if _create(lock):
            return lock
        holder = _read_holder(lock)
        if holder is None:
            continue  # released meanwhile
        unwritten_and_old = holder == {} and _age_s(lock) > _UNWRITTEN_LOCK_S  # its writer died writing it
        if not unwritten_and_old and (holder == {} or _holder_alive(holder)):
            who = f"process {holder['pid']}" if holder.get("pid") else "another process"
            raise RunLockedError(f"{directory} is being written by {who} (lock file {lock}); wait for it to "
                                 "finish or stop it, or choose another output directory")
        # Stale. Removed under a lock on the folder, and only if it is still the same stale lock,
        # so two processes taking it over at once never remove each other's new lock.
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _read_holder(lock) == holder:
                lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    raise RunLockedError(f"{directory}: could not take the lock file {lock}; try again")


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `directory` for the block (see the module docstring)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory} is a file; choose a directory for the run")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire(directory)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    try:
        yield directory
    except BaseException:
        lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: nothing half-written is left of a run that never began
        raise
    else:
        lock.unlink(missing_ok=True)
