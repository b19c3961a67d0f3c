"""Identify an OS process across time, so that a recycled pid is never mistaken for a job's process.

A token is {"pid", "start_ticks", "boot_id"}: the pid plus the process start time from
/proc/<pid>/stat and the kernel boot id. A process is the token's process only while all three
match; after a reboot or once the pid is reused by another program, the token is dead. Where /proc
does not exist (not Linux) only the pid can be checked, and callers fall back on heartbeats.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def liveness_is_verifiable() -> bool:
    """True where process start times can be read, so a reused pid is recognised."""
    return (_PROC / "self" / "stat").exists()


def boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def _stat_after_command(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat, or None if the process does not exist."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses; everything after the last ')'
    # has a fixed format.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields if len(fields) > 19 else None


def _valid_pid(value: Any) -> bool:
    # pid 0, 1 and negative numbers have special meanings for kill(); never signal them.
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def process_token(pid: int) -> dict:
    """A token for the running process `pid` (typically a child just started)."""
    fields = _stat_after_command(pid)
    start_ticks = int(fields[19]) if fields else None
    return {"pid": int(pid), "start_ticks": start_ticks, "boot_id": boot_id()}


def is_alive(token: Any) -> bool:
    """Whether the process a token names is still running (a zombie counts as gone)."""
    if not isinstance(token, dict) or not _valid_pid(token.get("pid")):
        return False
    pid = token["pid"]
    if liveness_is_verifiable():
        recorded_boot = token.get("boot_id")
        current_boot = boot_id()
        if recorded_boot and current_boot and recorded_boot != current_boot:
            return False
        fields = _stat_after_command(pid)
        if fields is None or fields[0] in ("Z", "X", "x"):
            return False
        # A token without a start time was taken after its process had already gone.
        return token.get("start_ticks") == int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(token: Any, sig: int) -> bool:
    """Send `sig` to the process group the token's process leads (or to the process alone if it
    leads none). Returns False, sending nothing, when the token's process is gone."""
    if not is_alive(token):
        return False
    pid = token["pid"]
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
