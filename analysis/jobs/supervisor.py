"""The process that owns one job from queue to final status; started by submit/resume as

    python -m analysis.jobs <job id>        (with DYNAPRUNE_HOME set, in its own session)

It records itself in status.json, waits for a free slot in submission order, runs
`python -m analysis.cli <args>` in its own process group with output
appended to log.txt, writes a heartbeat into status.json every few seconds, forwards a
cancellation as SIGTERM (then SIGKILL after the job's kill timeout) and writes the final status.

A slot is an flock on <jobs>/.slots/<n>.lock for n < max_jobs. The command inherits the locked
descriptor, so the slot stays taken while the command lives even if this supervisor is killed.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from analysis.jobs import records, store
from analysis.jobs.process import process_token, signal_group, signal_name
from analysis.jobs.reporting import JOB_ATTEMPT_ENV_VAR, JOB_ID_ENV_VAR

POLL_S = 0.2
DEFAULT_KILL_TIMEOUT_S = 30.0


def command_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "analysis.cli", *args]


class _CancelSignal:
    """SIGTERM/SIGINT to the supervisor itself (shutdown, a user's kill) mean: cancel the job."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        self.received = True


def _log(job_dir: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(job_dir / "log.txt", "a", encoding="utf-8") as handle:
        handle.write(f"[dynaprune jobs {stamp}] {line}\n")


def _first_in_queue(home: Path, job_id: str) -> bool:
    """Whether no earlier-queued job is still waiting (jobs start in submission order)."""
    waiting = []
    for job_dir in store.job_dirs(home):
        try:
            status = store.read_status(job_dir)
        except store.CorruptJobError:
            continue
        if status["state"] != records.QUEUED or store.loss_reason(status) is not None:
            continue
        queued_ns = status.get("queued_ns")
        waiting.append((queued_ns if isinstance(queued_ns, int) else 0, job_dir.name))
    return bool(waiting) and min(waiting)[1] == job_id


def slot_path(home: Path, index: int) -> Path:
    """The lock file of run slot `index`; whoever holds its flock occupies the slot."""
    return store.jobs_dir(home) / ".slots" / f"{index}.lock"


def _try_slot(home: Path, max_jobs: int) -> int | None:
    for index in range(max_jobs):
        path = slot_path(home, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def _mark_cancelled_while_queued(job_dir: Path) -> None:
    def change(status: dict) -> dict | None:
        if status["state"] != records.QUEUED:
            return None
        status.update(state=records.CANCELLED, ended_at=time.time(), message="cancelled before it started")
        return status

    store.update_status(job_dir, change)


def _wait_for_slot(job_dir: Path, home: Path, max_jobs: int, cancel: _CancelSignal) -> int | None:
    """Block until this job may run; returns the slot descriptor, or None if it left the queue."""
    last_heartbeat = 0.0
    while True:
        if cancel.received:
            _mark_cancelled_while_queued(job_dir)
            return None
        status = store.read_status(job_dir)
        if status["state"] != records.QUEUED:
            return None
        now = time.time()
        if now - last_heartbeat >= store.HEARTBEAT_INTERVAL_S:
            _heartbeat(job_dir, expected_state=records.QUEUED)
            last_heartbeat = now
        slot = _try_slot(home, max_jobs)
        if slot is not None:
            with store.file_lock(store.jobs_dir(home) / ".queue.lock"):
                if _first_in_queue(home, job_dir.name):
                    started = _mark_running(job_dir)
                    if started:
                        return slot
                    os.close(slot)
                    return None
            os.close(slot)
        time.sleep(POLL_S)


def _mark_running(job_dir: Path) -> bool:
    def change(status: dict) -> dict | None:
        if status["state"] != records.QUEUED:
            return None
        status.update(state=records.RUNNING, started_at=time.time(), heartbeat_at=time.time(), message="starting")
        return status

    return store.update_status(job_dir, change)["state"] == records.RUNNING


def _heartbeat(job_dir: Path, expected_state: str) -> None:
    def change(status: dict) -> dict | None:
        if status["state"] != expected_state:
            return None
        status["heartbeat_at"] = time.time()
        return status

    store.update_status(job_dir, change)


def _final_state(return_code: int, cancel_requested: bool) -> tuple[str, int, str]:
    """(state, exit code in shell convention, message) for a finished command."""
    exit_code = return_code if return_code >= 0 else 128 - return_code
    if return_code == 0:
        return records.SUCCEEDED, 0, "finished"
    if cancel_requested:
        return records.CANCELLED, exit_code, f"cancelled (exit code {exit_code})"
    if return_code == -signal.SIGKILL:
        return records.LOST, exit_code, ("lost: the command was killed (SIGKILL) without a final status; "
                                       "resume it to continue")
    if return_code < 0:
        return records.FAILED, exit_code, f"failed: killed by {signal_name(-return_code)}"
    return records.FAILED, exit_code, f"failed with exit code {exit_code}; see the log"


def _fail(job_dir: Path, message: str) -> None:
    store.update_status(job_dir, lambda s: {**s, "state": records.FAILED, "ended_at": time.time(), "message": message})
    _log(job_dir, message)


def _run_command(job_dir: Path, spec: dict, slot: int, cancel: _CancelSignal) -> None:
    from analysis.cli import COMMANDS

    if spec["args"][0] not in COMMANDS:  # spec.json edited by hand since submit checked it
        _fail(job_dir, f"failed: {spec['args'][0]!r} is not a dynaprune command")
        return
    argv = command_argv(spec["args"])
    attempt = store.read_status(job_dir).get("attempt", 1)
    # the command writes its own exit record for this attempt (analysis.cli.run_main), which tells
    # the truth should this supervisor be killed while the command runs on, and reports its progress
    # into status.json (analysis.jobs.reporting)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{JOB_ID_ENV_VAR: job_dir.name, JOB_ATTEMPT_ENV_VAR: str(attempt)})
    _log(job_dir, f"attempt {attempt} started: dynaprune {' '.join(spec['args'])}")
    try:
        with open(job_dir / "log.txt", "ab") as log:
            child = subprocess.Popen(
                argv, cwd=spec.get("cwd") or None, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, pass_fds=(slot,), env=env,
            )
    except OSError as error:
        _fail(job_dir, f"failed: could not start the command ({error})")
        return
    token = process_token(child.pid)
    store.update_status(job_dir, lambda s: {**s, "command": token, "pid": child.pid, "message": "running"})

    last_heartbeat, term_sent_at, kill_sent = time.time(), None, False
    cancel_requested, kill_timeout = False, DEFAULT_KILL_TIMEOUT_S
    while (return_code := child.poll()) is None:
        time.sleep(POLL_S)
        if not cancel_requested:
            try:
                status = store.read_status(job_dir)
            except store.CorruptJobError:
                status = {}
            cancel_requested = cancel.received or bool(status.get("cancel_requested"))
            if isinstance(status.get("kill_timeout_s"), (int, float)):
                kill_timeout = float(status["kill_timeout_s"])
        if cancel_requested and term_sent_at is None:
            store.update_status(job_dir, lambda s: {**s, "cancel_requested": True, "message": "cancelling"})
            _log(job_dir, "cancel requested: SIGTERM to the command")
            signal_group(token, signal.SIGTERM)
            term_sent_at = time.monotonic()
        if term_sent_at is not None and not kill_sent and time.monotonic() - term_sent_at > kill_timeout:
            _log(job_dir, f"command still running {kill_timeout:.0f} s after SIGTERM: SIGKILL")
            signal_group(token, signal.SIGKILL)
            kill_sent = True
        if time.time() - last_heartbeat >= store.HEARTBEAT_INTERVAL_S:
            _heartbeat(job_dir, expected_state=records.RUNNING)
            last_heartbeat = time.time()

    state, exit_code, message = _final_state(return_code, cancel_requested)
    _log(job_dir, f"attempt ended: {state}, exit code {exit_code}")

    def finish(status: dict) -> dict:
        status.update(state=state, exit_code=exit_code, ended_at=time.time(), heartbeat_at=time.time(), message=message)
        return status

    store.update_status(job_dir, finish)


def supervise(job_id: str, home: Path) -> int:
    job_dir = store.job_path(job_id, home)
    spec = store.read_spec(job_dir)
    cancel = _CancelSignal()
    max_jobs = store.read_status(job_dir).get("max_jobs")
    max_jobs = max_jobs if isinstance(max_jobs, int) and max_jobs > 0 else 1
    slot = _wait_for_slot(job_dir, home, max_jobs, cancel)
    if slot is None:
        return 0
    try:
        _run_command(job_dir, spec, slot, cancel)
    finally:
        # Released only after the final status is written, so job intervals never overlap.
        os.close(slot)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m analysis.jobs JOB_ID", file=sys.stderr)
        return 2
    home = store.resolve_home()
    job_dir = store.job_path(argv[0], home)
    if not store.record_supervisor(job_dir, process_token(os.getpid())):
        return 1  # cancelled already, or another supervisor owns the job
    return supervise(argv[0], home)
