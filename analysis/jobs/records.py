"""A background job as its readers see it (Job, JobProgress, the states), built from the contents of
its spec.json and status.json (job_from_files), which are read as untrusted: a field of the wrong type,
an implausible time, an owner that is no valid name or a progress that makes no sense is read as unknown,
never as an error. store.py keeps the files; this module says what they mean.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from analysis.errors import InvalidInputError
from analysis.jobs.owners import validate_owner

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST = "queued", "running", "succeeded", "failed", "cancelled", "lost"
CORRUPT = "corrupt"  # never written; reported when spec.json or status.json cannot be read
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, LOST)
ACTIVE_STATES = frozenset({QUEUED, RUNNING})
RESUMABLE_STATES = frozenset({FAILED, CANCELLED, LOST})


@dataclass(frozen=True)
class JobProgress:
    """What a running job's command last said about its progress: `fraction` of the whole command
    done (0..1), the `task` in hand (e.g. "stage 2/3, epoch 1/2") with `done` of its `total` steps,
    a short `detail`, and `remaining_s`, the estimated seconds left when it was `updated_at`
    (None until there is a rate to estimate from)."""

    fraction: float
    task: str = ""
    done: int = 0
    total: int = 0
    detail: str = ""
    remaining_s: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True)
class Job:
    """A job as the dashboard and the CLI see it. `state` is one of STATES or CORRUPT."""

    id: str
    state: str
    args: list[str] = field(default_factory=list)
    label: str | None = None
    owner: str | None = None
    out_dir: str | None = None
    cwd: str | None = None
    max_jobs: int | None = None
    created_at: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = None
    pid: int | None = None
    supervisor_pid: int | None = None
    exit_code: int | None = None
    message: str = ""
    attempt: int = 1
    cancel_requested: bool = False
    history: list[dict] = field(default_factory=list)
    progress: JobProgress | None = None

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE_STATES

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES

    def to_dict(self) -> dict:
        record = asdict(self)
        record["status"] = self.state  # the word the CLI documents
        return record


def token_pid(token: Any) -> int | None:
    return token.get("pid") if isinstance(token, dict) and isinstance(token.get("pid"), int) else None


# Timestamps outside this range (NaN, Infinity, centuries away) are read as unknown.
_TIMESTAMP_RANGE = (0.0, 1e11)


def plausible_time(value: Any) -> float | None:
    """A timestamp from status.json, or None where it is missing or not a plausible time."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and _TIMESTAMP_RANGE[0] <= value <= _TIMESTAMP_RANGE[1] else None


def _owner(value: Any) -> str | None:
    """The owner recorded in spec.json, or None where there is none or it is not a valid name."""
    try:
        return None if value is None else validate_owner(value)
    except InvalidInputError:
        return None


def _short_text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) and value.isprintable() else ""


def _progress(value: Any) -> JobProgress | None:
    """The progress recorded in status.json, or None where there is none or it does not make sense."""
    if not isinstance(value, dict):
        return None
    fraction = value.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        return None
    done, total, remaining = value.get("done"), value.get("total"), value.get("remaining_s")
    counts_ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (done, total))
    remaining_ok = (isinstance(remaining, (int, float)) and not isinstance(remaining, bool) and math.isfinite(remaining)
                    and remaining >= 0)
    return JobProgress(fraction=float(fraction), task=_short_text(value.get("task")),
                       done=done if counts_ok else 0, total=total if counts_ok else 0,
                       detail=_short_text(value.get("detail")), remaining_s=float(remaining) if remaining_ok else None,
                       updated_at=plausible_time(value.get("updated_at")))


def job_from_files(spec: dict, status: dict, job_id: str) -> Job:
    label, out_dir, cwd = spec.get("label"), spec.get("out_dir"), spec.get("cwd")
    exit_code, attempt, max_jobs = status.get("exit_code"), status.get("attempt"), status.get("max_jobs")
    history = status.get("history")
    return Job(
        id=job_id,
        state=status["state"],
        args=list(spec["args"]),
        label=label if isinstance(label, str) else None,
        owner=_owner(spec.get("owner")),
        out_dir=out_dir if isinstance(out_dir, str) else None,
        cwd=cwd if isinstance(cwd, str) else None,
        max_jobs=max_jobs if isinstance(max_jobs, int) else None,
        created_at=plausible_time(spec.get("created_at")),
        queued_at=plausible_time(status.get("queued_at")),
        started_at=plausible_time(status.get("started_at")),
        ended_at=plausible_time(status.get("ended_at")),
        heartbeat_at=plausible_time(status.get("heartbeat_at")),
        pid=token_pid(status.get("command")),
        supervisor_pid=token_pid(status.get("supervisor")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        message=str(status.get("message") or ""),
        attempt=attempt if isinstance(attempt, int) else 1,
        cancel_requested=bool(status.get("cancel_requested")),
        history=[h for h in history if isinstance(h, dict)] if isinstance(history, list) else [],
        progress=_progress(status.get("progress")),
    )
