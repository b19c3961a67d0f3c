"""Background jobs: dynaprune commands that run in detached processes and outlive whoever started them.

    from analysis import jobs
    job = jobs.submit(["train", "--preset", "synthetic-tiny", "--data", "synthetic:0", "--out", "runs/a"])
    jobs.get_job(job.id).state          # queued | running | succeeded | failed | cancelled | lost
    jobs.read_metrics(job.id)           # records of the output run's metrics file so far
    jobs.cancel(job.id); jobs.resume(job.id)
    jobs.submit([...], owner="Ada")     # whose job it is: job.owner; jobs.validate_owner checks a name
    jobs.get_job(job.id).progress       # what the running command last reported (fraction, time left)

A job lives in <DYNAPRUNE_HOME>/jobs/<id>/ (spec.json, status.json, log.txt). At most max_jobs
(argument, else $DYNAPRUNE_MAX_JOBS, else 1; fixed per job when it is queued) run at once; the
rest wait in submission order, also while no dashboard is open. A job's state is checked against
its processes (pid plus process start time and boot id, so a reused pid does not count) whenever
it is read, so a kill -9, a crash or a reboot shows up as "lost" without any daemon. A command
killed by SIGKILL from outside is reported lost too: like a crash, it left no final word, and its
last checkpoint is what resume continues from.

Resume keeps the job id: the same arguments run again as attempt N+1, log.txt is appended to, and
each earlier attempt (state, times, exit code, message) is kept in the job's `history`.
Exit codes follow the shell: a command ended by signal S reports 128+S (SIGTERM: 143).
"""
from analysis.jobs.control import (
    cancel,
    get_job,
    list_jobs,
    out_dir_of,
    read_log,
    read_metrics,
    resolve_max_jobs,
    resume,
    submit,
    validate_args,
    wait,
)
from analysis.jobs.owners import MAX_OWNER_CHARS, validate_owner
from analysis.jobs.records import (
    ACTIVE_STATES,
    CANCELLED,
    CORRUPT,
    FAILED,
    LOST,
    QUEUED,
    RESUMABLE_STATES,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    JobProgress,
)
from analysis.jobs.store import (
    JOB_ID_PATTERN,
    CorruptJobError,
    JobStateError,
    UnknownJobError,
    jobs_dir,
    resolve_home,
    validate_job_id,
)

__all__ = [
    "submit", "get_job", "list_jobs", "cancel", "resume", "wait", "read_log", "read_metrics",
    "resolve_max_jobs", "validate_args", "out_dir_of", "resolve_home", "jobs_dir", "validate_job_id",
    "validate_owner", "MAX_OWNER_CHARS", "Job", "JobProgress", "UnknownJobError", "JobStateError", "CorruptJobError",
    "JOB_ID_PATTERN", "STATES", "ACTIVE_STATES", "RESUMABLE_STATES", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED",
    "CANCELLED", "LOST", "CORRUPT",
]
