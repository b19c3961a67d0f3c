"""What a background job's command reports about itself while it runs: its progress, written into
the job's status.json every few seconds (not every batch), with an estimate of the time left.

    progress = job_progress_reporter()      # None unless this process is a job's command
    run_pruning_pipeline(..., progress=progress or TerminalProgress(unit="batch"))

The supervisor starts the command with DYNAPRUNE_JOB_ID and DYNAPRUNE_JOB_ATTEMPT set
(supervisor.py); the progress is stored only while that attempt of the job is running, so a
command outliving its job never overwrites a newer attempt's. Reporting is best effort: a status
file that cannot be written costs one report, never the command.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from analysis.errors import DynapruneError
from analysis.jobs import records, store
from analysis.utils.progress import ProgressUpdate

# The dashboard polls every 2 s; a report every few seconds keeps it moving without making the
# training loop wait on the job's lock after every batch.
REPORT_INTERVAL_S = 3.0
JOB_ID_ENV_VAR, JOB_ATTEMPT_ENV_VAR = "DYNAPRUNE_JOB_ID", "DYNAPRUNE_JOB_ATTEMPT"


def remaining_seconds(start: tuple[float, float], now: tuple[float, float]) -> float | None:
    """Seconds left at the rate seen between two (time, fraction done) points, or None when no
    progress has been made between them."""
    (start_time, start_fraction), (now_time, now_fraction) = start, now
    gained, elapsed = now_fraction - start_fraction, now_time - start_time
    if gained <= 0 or elapsed <= 0:
        return None
    return elapsed / gained * max(0.0, 1.0 - now_fraction)


def fraction_done(update: ProgressUpdate) -> float:
    """The fraction of the whole command an update says is done: its `overall`, else its task's share."""
    if update.overall is not None:
        fraction = update.overall
    else:
        fraction = update.done / update.total if update.total > 0 else 0.0
    return min(1.0, max(0.0, float(fraction)))


class JobProgressReporter:
    """A ProgressCallback that stores the job's progress in its status at most every `interval_s`
    seconds, and at the end of each task. The time left is estimated from the rate since this
    process's first report (a resumed attempt starts its own estimate)."""

    def __init__(self, job_dir: Path, attempt: int, interval_s: float = REPORT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.job_dir, self.attempt, self.interval_s, self.clock = Path(job_dir), attempt, interval_s, clock
        self._first: tuple[float, float] | None = None
        self._last_report: float | None = None

    def __call__(self, update: ProgressUpdate) -> None:
        now, fraction = self.clock(), fraction_done(update)
        if self._first is None:
            self._first = (now, fraction)
        task_done = update.total > 0 and update.done >= update.total
        if self._last_report is not None and now - self._last_report < self.interval_s and not task_done:
            return
        self._last_report = now
        progress = records.JobProgress(fraction=fraction, task=update.task, done=update.done, total=update.total,
                                     detail=update.detail, remaining_s=remaining_seconds(self._first, (now, fraction)),
                                     updated_at=time.time())
        try:
            store.record_progress(self.job_dir, self.attempt, asdict(progress))
        except (DynapruneError, OSError):
            pass  # best effort: the next report tries again


def job_progress_reporter() -> JobProgressReporter | None:
    """The reporter of the job this process runs for (from the variables its supervisor set), or
    None when this process is not a job's command or those variables do not name a job here."""
    job_id, attempt = os.environ.get(JOB_ID_ENV_VAR), os.environ.get(JOB_ATTEMPT_ENV_VAR, "")
    if not job_id or not attempt.isdigit():
        return None
    try:
        return JobProgressReporter(store.job_path(job_id), int(attempt))
    except DynapruneError:
        return None
