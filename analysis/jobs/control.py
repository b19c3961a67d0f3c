"""Submit, inspect, cancel and resume background jobs. Every call returns quickly; the work runs
in a detached supervisor process (supervisor.py) that outlives the caller.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import analysis
from analysis.errors import InvalidInputError
from analysis.jobs import records, store
from analysis.jobs.owners import validate_owner
from analysis.jobs.process import is_alive, process_token, signal_group
from analysis.jobs.records import Job
from analysis.jobs.store import JobStateError
from analysis.jobs.supervisor import DEFAULT_KILL_TIMEOUT_S, command_argv
from analysis.runs import read_run_metrics
from analysis.utils.fileio import atomic_write_json

MAX_JOBS_LIMIT = 64
LAUNCH_TIMEOUT_S = 30.0
MAX_LABEL_CHARS = 200


def resolve_max_jobs(max_jobs: int | None = None) -> int:
    """How many jobs may run at once: `max_jobs`, else $DYNAPRUNE_MAX_JOBS, else 1."""
    source = "max_jobs"
    if max_jobs is None:
        raw = os.environ.get("DYNAPRUNE_MAX_JOBS", "").strip()
        if not raw:
            return 1
        source = "DYNAPRUNE_MAX_JOBS"
        try:
            max_jobs = int(raw)
        except ValueError:
            raise InvalidInputError(f"{source}={raw!r} is not a whole number; set it to 1..{MAX_JOBS_LIMIT}") from None
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or not 1 <= max_jobs <= MAX_JOBS_LIMIT:
        raise InvalidInputError(f"{source}={max_jobs!r} is out of range; use 1..{MAX_JOBS_LIMIT}")
    return max_jobs


def validate_args(args: Iterable[str]) -> list[str]:
    """The dynaprune arguments of a job: a list of strings starting with an existing subcommand."""
    from analysis.cli import COMMANDS

    if isinstance(args, (str, bytes)):
        raise InvalidInputError("give the job's command as a list of arguments, e.g. ['train', '--out', 'runs/a'], "
                                "not one string")
    args = list(args)
    if not args:
        raise InvalidInputError("a job needs a dynaprune command, e.g. ['train', '--preset', 'synthetic-tiny', ...]")
    for arg in args:
        if not isinstance(arg, str) or "\x00" in arg:
            raise InvalidInputError(f"job argument {arg!r} is not a plain string")
    if args[0] not in COMMANDS:
        raise InvalidInputError(f"unknown dynaprune command {args[0]!r}; choose one of: {', '.join(sorted(COMMANDS))}")
    return args


def _validate_label(label: str | None) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS or any(ord(c) < 32 for c in label):
        raise InvalidInputError(f"job label must be one line of at most {MAX_LABEL_CHARS} characters")
    return label


def out_dir_of(args: list[str], cwd: Path) -> str | None:
    """The absolute --out directory the command writes to (the last one given, as argparse does)."""
    value = None
    for index, arg in enumerate(args):
        if arg == "--out" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--out="):
            value = arg[len("--out="):]
    return os.path.normpath(os.path.join(cwd, value)) if value else None


def _queued_status(attempt: int, max_jobs: int, history: list[dict], message: str) -> dict:
    return {
        "state": records.QUEUED, "queued_at": time.time(), "queued_ns": time.time_ns(), "attempt": attempt,
        "max_jobs": max_jobs, "history": history, "message": message, "started_at": None, "ended_at": None,
        "heartbeat_at": None, "exit_code": None, "pid": None, "supervisor_pid": None, "command": None,
        "supervisor": None, "cancel_requested": False,
    }


# Run with -I (ignores PYTHONPATH and the user's site directory; it needs only the standard library):
# it puts the supervisor in a session of its own and exits at once, so the supervisor is never a
# child of the caller (no zombies in a long-lived dashboard).
_LAUNCHER = (
    "import subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=2, stderr=2, start_new_session=True)\n"
    "print(child.pid)\n"
)


def _launch_supervisor(job_dir: Path, home: Path) -> None:
    """Start the job's detached supervisor and record it in status.json."""
    package_root = str(Path(analysis.__file__).resolve().parent.parent)
    env = dict(os.environ, DYNAPRUNE_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    supervisor_argv = [sys.executable, "-m", "analysis.jobs", job_dir.name]
    problem = None
    try:
        with open(job_dir / "log.txt", "ab") as log:
            launched = subprocess.run([sys.executable, "-I", "-c", _LAUNCHER, *supervisor_argv], cwd=job_dir, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                      timeout=LAUNCH_TIMEOUT_S, check=True)
        token = process_token(int(launched.stdout.decode().strip()))
        if not store.record_supervisor(job_dir, token) and not is_alive(token):
            problem = "its supervisor exited at once"
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        problem = f"its supervisor could not be started ({error})"
    if problem is None:
        return

    def change(status: dict) -> dict | None:
        if status["state"] != records.QUEUED or is_alive(status.get("supervisor")):
            return None
        status.update(state=records.FAILED, ended_at=time.time(), message=f"failed: {problem}; see the log")
        return status

    store.update_status(job_dir, change)


def submit(args: Iterable[str], *, label: str | None = None, owner: str | None = None, max_jobs: int | None = None,
           home: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> Job:
    """Queue `dynaprune <args>` as a background job and return it (state queued or already running).

    `owner` names who started it (e.g. a workshop participant; owners.validate_owner says what a name
    may hold). `max_jobs` caps how many jobs run at once (default $DYNAPRUNE_MAX_JOBS or 1); jobs
    start in submission order. Relative paths in `args` are resolved against `cwd` (default: current dir).
    """
    args = validate_args(args)
    label = _validate_label(label)
    owner = None if owner is None else validate_owner(owner)
    limit = resolve_max_jobs(max_jobs)
    home = store.resolve_home(home)
    cwd = Path(cwd if cwd is not None else os.getcwd()).absolute()
    if not cwd.is_dir():
        raise InvalidInputError(f"working directory {cwd} does not exist")
    root = store.jobs_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    # Built under a hidden name and renamed into place, so nobody ever sees a half-created job.
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        spec = {
            "version": 1, "args": args, "argv": command_argv(args), "cwd": str(cwd), "label": label,
            "owner": owner, "out_dir": out_dir_of(args, cwd), "created_at": time.time(),
        }
        (staging / "log.txt").touch()
        for _ in range(5):
            job_id = store.new_job_id()
            spec["id"] = job_id
            atomic_write_json(staging / "spec.json", spec)
            store.write_status(staging, _queued_status(1, limit, [], "queued"))
            try:
                os.rename(staging, root / job_id)
                break
            except OSError:
                continue  # id taken (same second, same random suffix); draw another
        else:
            raise InvalidInputError(f"could not create a job directory under {root}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    job_dir = root / job_id
    _launch_supervisor(job_dir, home)
    return store.load_job(job_dir)


def get_job(job_id: str, *, home: str | os.PathLike | None = None) -> Job:
    """The job's current state; an active job whose processes died is reported (and recorded) as lost."""
    return store.load_job(store.job_path(job_id, home))


def list_jobs(*, home: str | os.PathLike | None = None) -> list[Job]:
    """Every job, oldest first. Unreadable jobs appear with state "corrupt" and a message."""
    return [store.load_job(job_dir) for job_dir in store.job_dirs(home)]


def _usable(job: Job) -> Job:
    if job.state == records.CORRUPT:
        raise JobStateError(f"job {job.id} cannot be read: {job.message}")
    return job


def cancel(job_id: str, *, kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S,
           home: str | os.PathLike | None = None) -> Job:
    """Cancel a job. A queued job leaves the queue at once; a running one gets SIGTERM (its command
    writes a resumable checkpoint and exits), then SIGKILL after `kill_timeout_s`. Returns without
    waiting for a running job to stop; use wait() for that."""
    if not isinstance(kill_timeout_s, (int, float)) or kill_timeout_s < 0:
        raise InvalidInputError(f"kill_timeout_s must be a number of seconds >= 0, got {kill_timeout_s!r}")
    job_dir = store.job_path(job_id, home)
    _usable(store.load_job(job_dir))
    seen: dict = {}

    def change(status: dict) -> dict | None:
        seen.update(status)
        if status["state"] == records.QUEUED:
            status.update(state=records.CANCELLED, ended_at=time.time(), message="cancelled before it started")
            return status
        if status["state"] == records.RUNNING:
            status.update(cancel_requested=True, kill_timeout_s=float(kill_timeout_s), message="cancel requested")
            return status
        return None

    status = store.update_status(job_dir, change)
    if seen["state"] not in records.ACTIVE_STATES:
        raise JobStateError(f"job {job_id} already ended ({seen['state']}); nothing to cancel")
    orphaned = not is_alive(status.get("supervisor")) and is_alive(status.get("command"))
    if status["state"] == records.RUNNING and orphaned:
        _stop_orphaned_command(job_dir, status["command"], kill_timeout_s)
    return get_job(job_id, home=home)


def _stop_orphaned_command(job_dir: Path, command: dict, kill_timeout_s: float) -> None:
    """The supervisor died but its command still runs: stop the command from here instead."""
    signal_group(command, signal.SIGTERM)
    deadline = time.monotonic() + kill_timeout_s
    while is_alive(command) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_group(command, signal.SIGKILL)

    def change(status: dict) -> dict | None:
        if status["state"] != records.RUNNING:
            return None
        status.update(state=records.CANCELLED, ended_at=time.time(), message="cancelled (its supervisor was gone)")
        return status

    store.update_status(job_dir, change)


def resume(job_id: str, *, max_jobs: int | None = None, home: str | os.PathLike | None = None) -> Job:
    """Run a failed, cancelled or lost job again, under the same id, with the same arguments.

    The command continues from the checkpoint in its --out directory; log.txt is appended to and
    the previous attempt is kept in the job's history.
    """
    home = store.resolve_home(home)
    job_dir = store.job_path(job_id, home)
    job = _usable(store.load_job(job_dir))
    validate_args(job.args)
    limit = resolve_max_jobs(max_jobs)
    if job.cwd and not Path(job.cwd).is_dir():
        raise JobStateError(f"job {job_id} ran in {job.cwd}, which no longer exists; submit it again instead")

    applied = []

    def change(status: dict) -> dict | None:
        if status["state"] not in records.RESUMABLE_STATES:
            return None
        applied.append(True)
        kept = ("attempt", "state", "started_at", "ended_at", "exit_code", "message")
        previous = {key: status.get(key) for key in kept}
        history = [h for h in status.get("history") or [] if isinstance(h, dict)] + [previous]
        attempt = status.get("attempt") if isinstance(status.get("attempt"), int) else 1
        return _queued_status(attempt + 1, limit, history, "queued (resumed)")

    status = store.update_status(job_dir, change)
    if not applied:
        raise JobStateError(f"job {job_id} is {status['state']}; only failed, cancelled or lost jobs can be resumed")
    _launch_supervisor(job_dir, home)
    return get_job(job_id, home=home)


def wait(job_id: str, *, timeout_s: float, poll_s: float = 0.2, home: str | os.PathLike | None = None) -> Job:
    """Block until the job has ended; raises TimeoutError if it is still active after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(job_id, home=home)
        if job.finished:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.state} after {timeout_s:g} s")
        time.sleep(poll_s)


def read_log(job_id: str, *, tail: int | None = None, home: str | os.PathLike | None = None) -> str:
    """The job's combined output, or its last `tail` lines."""
    path = store.job_path(job_id, home) / "log.txt"
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
        raise InvalidInputError(f"tail must be a whole number >= 0, got {tail!r}")
    if not path.exists():
        return ""
    if tail is None:
        return path.read_text(encoding="utf-8", errors="replace")
    if tail == 0:
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position, data = handle.tell(), b""
        # Read backwards in blocks until enough lines are in hand; logs can be large.
        while position > 0 and data.count(b"\n") <= tail:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return "".join(lines[-tail:])


def read_metrics(job_id: str, *, home: str | os.PathLike | None = None) -> list[dict]:
    """The records the job's command appended to its output directory's metrics file so far (empty if none)."""
    job = _usable(get_job(job_id, home=home))
    if not job.out_dir:
        return []
    return read_run_metrics(job.out_dir)
