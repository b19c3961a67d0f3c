"""Run one trial of a sweep: a `dynaprune prune` process into the trial's folder, watched until it
ends. The same function runs a trial for every backend (a local worker thread, a Ray task on any node).

    record = execute_trial(task)      # task: trial_task(...); record: what the sweep keeps of the run

The prune command is resumable, so running a trial again continues it. The child process gets its
own session (a Ctrl-C at the terminal reaches only the sweep, which stops its trials with SIGTERM:
each writes a resumable checkpoint) and SIGTERM when the process that started it dies (a Ray worker
killed with its node), so a retried trial never finds its folder still being written.

Early stopping (off unless the spec enables it): after each stage, a trial whose best validation
perplexity at that stage is above (1 + margin) x the median of the other trials that have reached
that stage (at least `min_trials` of them, read from their metrics.jsonl) is stopped; it is recorded
as "stopped" and not run again.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import analysis
from analysis.runs import METRICS_FILE
from analysis.utils.fileio import read_json_lines
from analysis.utils.runlock import LOCK_FILE, _holder_alive, _read_holder

SUCCEEDED, FAILED, STOPPED, CANCELLED = "succeeded", "failed", "stopped", "cancelled"
LOST = "lost"  # Ray gave up on it (its worker or node died too often); resumed on the next run
DONE_STATES = (SUCCEEDED, STOPPED)  # not run again when the sweep resumes (failed ones only with --retry-failed)
LOG_TAIL_LINES = 20
POLL_S = 0.5
STOP_GRACE_S = 60.0  # a stopped prune saves its checkpoint after the current batch; then SIGKILL
LOCK_WAIT_S = 120.0  # an earlier attempt's process (its node was killed) may still be saving
ATTEMPT_MARK = b"=== "


def trial_task(name: str, argv: list[str], out: Path, log: Path, early_stop: dict | None = None,
               peers_dir: Path | None = None) -> dict:
    """What a backend hands to execute_trial: plain data, so it travels to a Ray worker as it is."""
    return {"name": name, "argv": list(argv), "out": str(out), "log": str(log),
            "early_stop": early_stop or {"enabled": False}, "peers_dir": str(peers_dir or Path(out).parent)}


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _node() -> dict:
    node = {"host": socket.gethostname(), "worker_pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            node["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return node


def stage_values(run_dir: Path) -> dict[int, float]:
    """{stage: best validation perplexity} of a pipeline's finished stages."""
    return {int(e["stage"]): float(e["best_val_ppl"]) for e in read_json_lines(Path(run_dir) / METRICS_FILE)
            if e.get("event") == "stage_end" and "best_val_ppl" in e}


def hopeless(name: str, stage: int, value: float, peers_dir: Path, margin: float, min_trials: int) -> bool:
    """ASHA-style rule: worse than the median of the other trials at this stage by more than `margin`."""
    others = []
    for peer in Path(peers_dir).iterdir():
        if peer.name != name and peer.is_dir():
            reached = stage_values(peer).get(stage)
            if reached is not None:
                others.append(reached)
    return len(others) >= min_trials and value > median(others) * (1 + margin)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def log_attempts(path: Path) -> int:
    """How often the trial was started (each start writes a header line into its log)."""
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.startswith(ATTEMPT_MARK))
    except OSError:
        return 0


def run_summary(run_dir: Path) -> dict:
    """What the table needs from a trial's metrics: baseline, final, zero-shot ppl and wall time per stage."""
    events = read_json_lines(Path(run_dir) / METRICS_FILE)
    return {"baseline": next((e for e in events if e.get("event") == "baseline"), None),
            "final": next((e for e in events if e.get("event") == "final"), None),
            "zero_shot": [e.get("zero_shot_val_ppl") for e in events if e.get("event") == "stage_start"],
            "stage_val_ppl": [e.get("best_val_ppl") for e in events if e.get("event") == "stage_end"],
            "train_wall_s": sum(float(e.get("wall_s", 0.0)) for e in events if e.get("event") == "stage_end")}


def _wait_for_previous_writer(out: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while time.monotonic() < deadline:
        holder = _read_holder(out / LOCK_FILE)
        if holder is None or (holder and not _holder_alive(holder)):
            return
        time.sleep(POLL_S)


def execute_trial(task: dict, should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the trial's prune command to its end (or until `should_stop()` or the early-stopping rule
    stops it) and return its record: status, exit code, times, node, log tail on failure, summary."""
    out, log = Path(task["out"]), Path(task["log"])
    out.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    rule = task.get("early_stop") or {}
    _wait_for_previous_writer(out)
    started = time.time()
    package_root = str(Path(analysis.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.pop("DYNAPRUNE_JOB_ID", None)  # the trial is not the background job the sweep may be
    command = [sys.executable, "-m", "analysis.cli", *task["argv"]]
    status, judged, reason = None, set(), None
    with open(log, "ab") as handle:
        handle.write(b"\n" + ATTEMPT_MARK + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()}: "
                     f"dynaprune {' '.join(task['argv'])}\n".encode())
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            while process.poll() is None:
                time.sleep(POLL_S)
                if should_stop is not None and should_stop():
                    status = CANCELLED
                elif rule.get("enabled"):
                    for stage, value in sorted(stage_values(out).items()):
                        if stage in judged:
                            continue
                        judged.add(stage)
                        if hopeless(task["name"], stage, value, Path(task["peers_dir"]), float(rule["margin"]),
                                    int(rule["min_trials"])):
                            status, reason = STOPPED, f"stage {stage} validation ppl {value:.2f} above the median"
                            break
                if status is not None:
                    _stop(process)
                    break
        except BaseException:  # KeyboardInterrupt (ray.cancel), SystemExit: leave the trial resumable
            _stop(process)
            raise
    code = process.wait()
    if status is None:
        status = SUCCEEDED if code == 0 else CANCELLED if code in (143, -signal.SIGTERM) else FAILED
    record = {"name": task["name"], "status": status, "exit_code": code, "started_at": started,
              "ended_at": time.time(), "wall_s": time.time() - started, "prune_pid": process.pid, **_node(),
              "attempts": log_attempts(log), "argv": task["argv"], "summary": run_summary(out)}
    if reason:
        record["message"] = reason
    if status == FAILED:
        record["log_tail"] = log_tail(log)
    return record


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the prune command saves a resumable checkpoint and exits), SIGKILL after STOP_GRACE_S."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
