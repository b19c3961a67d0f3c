"""On-disk layout of background jobs, and reading a job's true state from it.

    <DYNAPRUNE_HOME>/jobs/<id>/spec.json    what to run: args, argv, cwd, label, owner, out dir (written once)
    <DYNAPRUNE_HOME>/jobs/<id>/status.json  state, pids, times, exit code, heartbeat, message, progress
    <DYNAPRUNE_HOME>/jobs/<id>/log.txt      stdout and stderr of every attempt, appended
    <DYNAPRUNE_HOME>/jobs/<id>/exit.json    the command's own exit record: attempt, pid, exit code
    <DYNAPRUNE_HOME>/jobs/<id>/.lock        serialises read-modify-write of status.json

Job ids are validated against JOB_ID_PATTERN before any path is built from them. Reading a job
also checks that its processes still exist; an active job whose processes are all gone is
recorded as "lost" right there, so no daemon is needed to notice a crash or a reboot; unless
the command left its own exit record for this attempt (its supervisor was killed, the command ran
on and ended), which then gives the final state instead.

A job's owner is the name of whoever started it (a workshop participant; owners.py says what a
name may hold). Its progress is what the running command last reported about itself
(analysis.jobs.reporting): a fraction done, where it stands and an estimate of the time left.
records.py turns the files' contents into a Job.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from analysis.errors import DynapruneError, InvalidInputError
from analysis.jobs.process import is_alive, liveness_is_verifiable
from analysis.jobs.records import (
    ACTIVE_STATES,
    CANCELLED,
    CORRUPT,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    job_from_files,
    plausible_time,
    token_pid,
)
from analysis.utils.fileio import atomic_write_json

# UTC time to the microsecond, then randomness: ids sort in creation order and never collide in practice.
JOB_ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}-[0-9a-f]{8}$")
HEARTBEAT_INTERVAL_S = 2.0
# Only used where pids cannot be verified (no /proc): a heartbeat older than this means lost.
HEARTBEAT_STALE_S = 30.0
# A queued job has no supervisor for the instant between submit writing it and the supervisor
# starting; within this window the missing supervisor is not yet a loss.
LAUNCH_GRACE_S = 60.0
LOCK_TIMEOUT_S = 15.0


class UnknownJobError(InvalidInputError):
    """No job with this id exists under the jobs home."""


class JobStateError(InvalidInputError):
    """The job is in a state that does not allow the requested action (e.g. resuming a running job)."""


class CorruptJobError(DynapruneError):
    """spec.json or status.json of a job cannot be read."""


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The dynaprune home: `home`, else $DYNAPRUNE_HOME, else the per-user data directory."""
    if home is None:
        home = os.environ.get("DYNAPRUNE_HOME") or None
    if home is None:
        import platformdirs

        home = platformdirs.user_data_dir("dynaprune")
    return Path(home).expanduser().absolute()


def jobs_dir(home: str | os.PathLike | None = None) -> Path:
    return resolve_home(home) / "jobs"


def new_job_id() -> str:
    now = time.time_ns()
    seconds, micros = divmod(now // 1000, 1_000_000)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}.{micros:06d}-{secrets.token_hex(4)}"


def validate_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidInputError(
            f"invalid job id {job_id!r}: ids look like 20250101T120000.123456-0123abcd; "
            "list them with `dynaprune jobs list`"
        )
    return job_id


def job_path(job_id: str, home: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path:
    path = jobs_dir(home) / validate_job_id(job_id)
    if must_exist and not path.is_dir():
        raise UnknownJobError(f"no job {job_id!r} under {path.parent}; list jobs with `dynaprune jobs list`")
    return path


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive flock on `path`, polled so that a wedged holder turns into an error, not a hang."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DynapruneError(f"timed out waiting for lock {path}; is a job process wedged?") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def job_lock(job_dir: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(job_dir / ".lock")


def _read_json_dict(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptJobError(f"{path} is missing; the job directory is incomplete — delete {path.parent}") from None
    except (OSError, ValueError, RecursionError) as error:
        raise CorruptJobError(f"{path} is not valid JSON ({error}); delete {path.parent} or restore the file") from None
    if not isinstance(value, dict):
        raise CorruptJobError(f"{path} does not hold a JSON object; delete {path.parent} or restore the file")
    return value


def read_spec(job_dir: Path) -> dict:
    spec = _read_json_dict(job_dir / "spec.json")
    args = spec.get("args")
    if not (isinstance(args, list) and args and all(isinstance(a, str) for a in args)):
        raise CorruptJobError(f"{job_dir / 'spec.json'} has no valid 'args' list; delete {job_dir}")
    return spec


def read_status(job_dir: Path) -> dict:
    status = _read_json_dict(job_dir / "status.json")
    if status.get("state") not in STATES:
        raise CorruptJobError(f"{job_dir / 'status.json'} has unknown state {status.get('state')!r}; delete {job_dir}")
    return status


def write_status(job_dir: Path, status: dict) -> None:
    atomic_write_json(job_dir / "status.json", status)


def update_status(job_dir: Path, change) -> dict:
    """Apply `change(status) -> status | None` under the job lock; None means leave the file alone."""
    with job_lock(job_dir):
        status = read_status(job_dir)
        new_status = change(dict(status))
        if new_status is None:
            return status
        write_status(job_dir, new_status)
        return new_status


def record_supervisor(job_dir: Path, token: dict) -> bool:
    """Record `token` as the queued job's supervisor unless a live one is recorded already;
    True when the status now names this token. Submit and the supervisor both call it."""

    def change(status: dict) -> dict | None:
        current = status.get("supervisor")
        if current == token or status["state"] != QUEUED or is_alive(current):
            return None
        status.update(supervisor=token, supervisor_pid=token["pid"], heartbeat_at=time.time())
        return status

    return update_status(job_dir, change).get("supervisor") == token


def loss_reason(status: dict, now: float | None = None) -> str | None:
    """Why an active job must be considered lost, or None while it is (or may be) alive."""
    if status.get("state") not in ACTIVE_STATES:
        return None
    now = time.time() if now is None else now
    supervisor, command = status.get("supervisor"), status.get("command")
    if supervisor is None and command is None:
        queued_at = status.get("queued_at")
        if isinstance(queued_at, (int, float)) and now - queued_at < LAUNCH_GRACE_S:
            return None
        return "its supervisor process never started"
    if liveness_is_verifiable():
        if is_alive(supervisor) or is_alive(command):
            return None
        return "its processes are gone without a final status (killed, crashed, or the machine restarted)"
    heartbeat = status.get("heartbeat_at")
    fresh = isinstance(heartbeat, (int, float)) and now - heartbeat < HEARTBEAT_STALE_S
    if fresh and (is_alive(supervisor) or is_alive(command)):
        return None
    return f"no heartbeat for more than {HEARTBEAT_STALE_S:.0f} s"


EXIT_RECORD_FILE = "exit.json"


def write_exit_record(job_dir: Path, attempt: int, exit_code: int) -> None:
    """What the job's command writes as it exits (analysis.cli.run_main): its attempt, pid and exit code."""
    atomic_write_json(job_dir / EXIT_RECORD_FILE, {"attempt": attempt, "pid": os.getpid(), "exit_code": exit_code,
                                                    "ended_at": time.time()})


def read_exit_record(job_dir: Path, status: dict) -> dict | None:
    """The exit record of the attempt `status` describes, written by the command it started; None if
    there is none (the command was killed, or the record is an earlier attempt's or unreadable)."""
    try:
        record = json.loads((job_dir / EXIT_RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("exit_code"), int):
        return None
    if record.get("attempt") != status.get("attempt") or record.get("pid") != token_pid(status.get("command")):
        return None
    return record


def _ended_by_record(current: dict, record: dict) -> dict:
    code = record["exit_code"]
    if code == 0:
        state, message = SUCCEEDED, "finished"
    elif current.get("cancel_requested"):
        state, message = CANCELLED, f"cancelled (exit code {code})"
    else:
        state, message = FAILED, f"failed with exit code {code}; see the log"
    ended = plausible_time(record.get("ended_at")) or time.time()
    current.update(state=state, exit_code=code, ended_at=ended,
                   message=f"{message} (its supervisor was gone; from the command's own exit record)")
    return current


def mark_lost_if_dead(job_dir: Path, status: dict) -> dict:
    """Record an active job whose processes died: by the command's own exit record when it left
    one, else as lost. Re-checked under the lock, so a supervisor writing its final status at
    this very moment wins."""
    if loss_reason(status) is None:
        return status

    def change(current: dict) -> dict | None:
        reason = loss_reason(current)
        if reason is None:
            return None
        record = read_exit_record(job_dir, current)
        if record is not None:
            return _ended_by_record(current, record)
        current.update(state=LOST, ended_at=time.time(), message=f"lost: {reason}; resume it to continue")
        return current

    return update_status(job_dir, change)


def record_progress(job_dir: Path, attempt: int, progress: dict) -> bool:
    """Store `progress` (JobProgress's fields) as the job's progress, if the job is still running
    attempt `attempt`; True when it was stored. What a job's command calls (analysis.jobs.reporting)."""

    def change(status: dict) -> dict | None:
        if status["state"] != RUNNING or status.get("attempt", 1) != attempt:
            return None
        status["progress"] = progress
        return status

    return update_status(job_dir, change).get("progress") == progress


def load_job(job_dir: Path) -> Job:
    """Read a job, detecting a loss on the way; unreadable files give a Job in state CORRUPT."""
    job_id = job_dir.name
    try:
        spec = read_spec(job_dir)
        status = mark_lost_if_dead(job_dir, read_status(job_dir))
        return job_from_files(spec, status, job_id)
    except CorruptJobError as error:
        return Job(id=job_id, state=CORRUPT, message=str(error))


def job_dirs(home: str | os.PathLike | None = None) -> list[Path]:
    """Every job directory, oldest id first. Lock files, slots and half-created jobs are skipped."""
    root = jobs_dir(home)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if JOB_ID_PATTERN.fullmatch(p.name) and p.is_dir())
