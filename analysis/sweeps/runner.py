"""Run a sweep: every trial of a spec, on this machine (backend "local": worker threads, each
watching one `dynaprune prune` process) or on a Ray cluster (backend "ray": one Ray task per trial,
with the CPUs and GPUs the spec asks for; a local Ray instance unless `address` names a cluster).

    result = run_sweep(load_spec("benchmarks/sweeps/sample.toml"), "runs/sweep-sample", backend="local")
    result.exit_code, result.records

The sweep folder:

    sweep.json            the spec as run, the backend, the working directory
    trials/<name>/        each trial's prune run (an ordinary resumable pipeline folder)
    records/<name>.json   each ended trial: status, exit code, times, node, log tail, results summary
    logs/<name>.txt       each trial's output, appended on every attempt
    results.csv, results.md   the table (analysis.sweeps.table)

Running the same sweep again skips trials that succeeded or were stopped early, continues those that
were interrupted (cancelled, or their process or node died), and retries failed ones only with
`retry_failed`. SIGTERM or Ctrl-C stops every running trial with a resumable checkpoint. On a
cluster the sweep folder and the sources must be on a filesystem every node sees at the same path.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.errors import InvalidInputError
from analysis.sweeps.spec import Resources, SweepSpec, Trial
from analysis.sweeps.trial import (
    CANCELLED,
    DONE_STATES,
    FAILED,
    LOST,
    SUCCEEDED,
    execute_trial,
    run_summary,
    trial_task,
)
from analysis.utils.fileio import atomic_write_json, read_json_object

BACKENDS = ("local", "ray")
SWEEP_FILE, TRIALS_DIR, RECORDS_DIR, LOGS_DIR = "sweep.json", "trials", "records", "logs"
LOOPBACK = "127.0.0.1"
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # trials pass only small records through Ray
RAY_MAX_RETRIES = 3  # a trial whose worker or node dies runs again (and resumes) up to this often


class SweepInterrupted(Exception):
    pass


@dataclass
class SweepResult:
    out_dir: Path
    records: list[dict]
    skipped: list[str]
    interrupted: bool = False

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] == FAILED]

    @property
    def exit_code(self) -> int:
        return 143 if self.interrupted else 1 if self.failed else 0


def default_backend() -> str:
    """"ray" when Ray is installed, else "local"."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "local"
    return "ray"


def shown_command(argv: list[str]) -> str:
    return "dynaprune " + " ".join(shlex.quote(part) for part in argv)


def trial_argv(trial: Trial, out: Path, spec: SweepSpec, device: str | None) -> list[str]:
    return [*trial.argv(out, source=str(Path(trial.source).absolute())), "--threads",
            str(spec.resources.torch_threads), "--device", device or spec.resources.torch_device]


def read_records(out_dir: str | Path) -> dict[str, dict]:
    records = {}
    folder = Path(out_dir) / RECORDS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = read_json_object(path, "a sweep trial record", "run the sweep again to rewrite it")
        except Exception:  # noqa: BLE001 - an unreadable record only means the trial runs (resumes) again
            continue
        records[record.get("name", path.stem)] = record
    return records


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, backend: str | None = None, address: str | None = None,
              max_parallel: int | None = None, device: str | None = None, retry_failed: bool = False,
              num_cpus: int | None = None, log: Callable[[str], None] = print, skip: Collection[str] = (),
              on_trial_end: Callable[[dict], None] | None = None) -> SweepResult:
    """Run every unfinished trial of `spec` into `out_dir` and write the results table. Trials named in
    `skip` are left out (their results are kept elsewhere); `on_trial_end(record)` is called as each
    trial that ran ends, and for each one found already finished."""
    from analysis.sweeps.table import write_table

    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if address and backend != "ray":
        raise InvalidInputError("--address joins a Ray cluster; it needs --backend ray")
    out = Path(out_dir).absolute()
    for name in (TRIALS_DIR, RECORDS_DIR, LOGS_DIR):
        (out / name).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_FILE, {"spec": spec.path and str(spec.path), "cwd": os.getcwd(),
                                         "backend": backend, "address": address, "started_at": time.time(),
                                         "sources": spec.sources, "seeds": spec.seeds, "search": spec.search,
                                         "fixed": spec.fixed, "space": spec.space,
                                         "resources": asdict(spec.resources), "early_stop": asdict(spec.early_stop)})
    records = read_records(out)
    trials = spec.trials()
    tasks, info, skipped = [], {}, []
    for trial in trials:
        trial_dir = out / TRIALS_DIR / trial.name
        shown = {"name": trial.name, "source": trial.source, "options": trial.options, "varied": trial.varied}
        if trial.config is not None:
            shown["command"] = shown_command(trial.argv(_relative(trial_dir)))
        info[trial.name] = shown
        previous = records.get(trial.name)
        if trial.name in skip:
            skipped.append(trial.name)
            continue
        if previous is not None and (previous.get("status") in DONE_STATES
                                     or (previous.get("status") == FAILED and not retry_failed)):
            skipped.append(trial.name)
            continue
        if trial.config is None:
            _save(out, {**shown, "status": FAILED, "exit_code": None, "message": f"invalid options: {trial.error}",
                        "log_tail": trial.error})
            log(f"[sweep] {trial.name}: failed: invalid options: {trial.error}")
            continue
        if previous is None and run_summary(trial_dir)["final"] is not None:
            record = {**shown, "status": SUCCEEDED, "exit_code": 0, "summary": run_summary(trial_dir)}
            _save(out, record)
            skipped.append(trial.name)
            if on_trial_end is not None:
                on_trial_end(record)
            continue
        tasks.append(trial_task(trial.name, trial_argv(trial, trial_dir, spec, device), trial_dir,
                                out / LOGS_DIR / f"{trial.name}.txt", asdict(spec.early_stop), out / TRIALS_DIR))
    if skipped:
        log(f"[sweep] {len(skipped)} trial(s) already done: not run again")
    log(f"[sweep] {len(tasks)} trial(s) to run with the {backend} backend into {out}")

    def finish(record: dict) -> None:
        record = {**info[record["name"]], **record}
        _save(out, record)
        where = record.get("host", "?") + (f" node {record['node_id'][:8]}" if record.get("node_id") else "")
        message = f": {record['message']}" if record.get("message") else ""
        log(f"[sweep] {record['name']}: {record['status']} (exit {record.get('exit_code')}, "
            f"{record.get('wall_s', 0):.1f} s on {where}){message}")
        if record["status"] == FAILED and record.get("log_tail"):
            log("    " + record["log_tail"].replace("\n", "\n    "))
        if on_trial_end is not None:
            on_trial_end(record)

    interrupted = run_trials(tasks, finish, backend=backend, address=address, max_parallel=max_parallel,
                             num_cpus=num_cpus, resources=spec.resources)
    write_table(out)
    ended = read_records(out)
    result = SweepResult(out, [ended[t.name] for t in trials if t.name in ended], skipped, interrupted)
    counts = {}
    for record in result.records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    log(f"[sweep] {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; table in {out / 'results.md'}"
        + ("; stopped: run the same command again to continue" if interrupted else ""))
    return result


def _relative(path: Path) -> Path:
    """`path` relative to the current directory when it is below it (as a reader would type it)."""
    cwd = Path.cwd()
    return path.relative_to(cwd) if path.is_relative_to(cwd) else path


def run_trials(tasks: list[dict], finish: Callable[[dict], None], *, backend: str = "local",
               address: str | None = None, max_parallel: int | None = None, num_cpus: int | None = None,
               resources: Resources | None = None) -> bool:
    """Run trial tasks (analysis.sweeps.trial.trial_task) with `backend`, calling `finish(record)` in
    this thread as each one ends, in any order. Returns True when SIGTERM or Ctrl-C stopped it: the
    running trials were stopped with resumable checkpoints and the rest not started."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    with _stop_requests() as stop:
        try:
            if backend == "local":
                _run_local(tasks, finish, stop, _local_parallel(max_parallel))
            else:
                _run_ray(tasks, finish, stop, resources or Resources(), address, max_parallel, num_cpus)
        except SweepInterrupted:
            return True
    return False


def _save(out: Path, record: dict) -> None:
    atomic_write_json(out / RECORDS_DIR / f"{record['name']}.json", record)


def _local_parallel(max_parallel: int | None) -> int:
    from analysis.jobs import resolve_max_jobs

    return resolve_max_jobs(max_parallel)


class _StopFlag:
    def __init__(self):
        self.event = threading.Event()
        self.signum = None

    def handle_sigterm(self) -> None:
        """(Again) make SIGTERM set the flag: ray.init installs a handler of its own that aborts."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self.signum = signum
        self.event.set()


class _stop_requests:
    """SIGTERM (in the main thread) sets the flag; KeyboardInterrupt is handled where it lands."""

    def __enter__(self) -> _StopFlag:
        self.flag = _StopFlag()
        self.previous = signal.getsignal(signal.SIGTERM)
        self.flag.handle_sigterm()
        return self.flag

    def __exit__(self, *exc) -> None:
        if threading.current_thread() is threading.main_thread() and self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _run_local(tasks: list[dict], finish, stop: _StopFlag, parallel: int) -> None:
    if not tasks:
        return
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trial")
    pending = {pool.submit(execute_trial, task, stop.event.is_set): task for task in tasks}
    try:
        while pending:
            try:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                stop.event.set()
                continue
            for future in done:
                task = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    record = future.result()
                except Exception as error:  # noqa: BLE001 - one trial's trouble must not end the others
                    record = {"name": task["name"], "status": FAILED, "exit_code": None, "message": str(error)}
                finish(record)
            if stop.event.is_set():
                for future in list(pending):
                    if future.cancel():
                        pending.pop(future)
    finally:
        if pending:  # left by an error: the running trials stop (resumable) before the pool closes
            stop.event.set()
        pool.shutdown(wait=True, cancel_futures=True)
    if stop.event.is_set():
        raise SweepInterrupted()


def _run_ray(tasks: list[dict], finish, stop: _StopFlag, resources: Resources, address: str | None,
             max_parallel: int | None, num_cpus: int | None) -> None:
    try:
        import ray
    except ImportError:
        raise InvalidInputError("the ray backend needs Ray: pip install -c constraints.txt ray, "
                                "or choose --backend local") from None
    if not tasks:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # a local instance listens on the loopback address only, never on the machine's network
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
                     _node_ip_address=LOOPBACK)
    stop.handle_sigterm()
    remote = ray.remote(execute_trial).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                               max_retries=RAY_MAX_RETRIES, retry_exceptions=False)
    queue = list(tasks)
    running: dict = {}
    cancelling = False
    limit = max_parallel or len(tasks)
    try:
        while queue or running:
            while queue and len(running) < limit and not stop.event.is_set():
                task = queue.pop(0)
                running[remote.remote(task)] = task
            try:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5) if running else ([], [])
            except KeyboardInterrupt:
                stop.event.set()
                ready = []
            for ref in ready:
                task = running.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as error:
                    if isinstance(error, ray.exceptions.TaskCancelledError) or cancelling:
                        # (a Ctrl-C at the terminal may also reach the local instance's processes)
                        record = {"name": task["name"], "status": CANCELLED, "exit_code": None,
                                  "message": "cancelled with the sweep"}
                        finish(record)
                        continue
                    # its worker or node died more often than Ray retries: the trial runs (resumes) next time
                    record = {"name": task["name"], "status": LOST, "exit_code": None,
                              "message": f"{type(error).__name__}: {str(error)[-2000:]}"}
                finish(record)
            if stop.event.is_set():
                queue.clear()
                for ref in running:
                    ray.cancel(ref)  # KeyboardInterrupt in the task: its prune process saves and exits
                stop.event.clear()
                cancelling = True
        if cancelling:
            raise SweepInterrupted()
    finally:
        if started_here:
            ray.shutdown()
