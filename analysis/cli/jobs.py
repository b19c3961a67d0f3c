"""`dynaprune jobs`: run dynaprune commands in the background and follow them.

    dynaprune jobs submit [--json] [--label L] [--owner NAME] [--max-jobs N] -- COMMAND ...
    dynaprune jobs submit -- train --preset synthetic-tiny --out runs/a
    dynaprune jobs list [--json]
    dynaprune jobs show ID [--json]
    dynaprune jobs logs ID [--tail N]
    dynaprune jobs cancel ID [--kill-timeout S] [--wait S]
    dynaprune jobs resume ID [--json]
    dynaprune jobs wait ID [--timeout S] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from analysis import jobs
from analysis.errors import InvalidInputError

HELP = "Run dynaprune commands as background jobs: submit, list, show, logs, cancel, resume, wait."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="jobs_action", required=True, metavar="ACTION")

    submit = actions.add_parser("submit", help="queue a dynaprune command; prints the job id")
    submit.add_argument("--json", action="store_true", help="print the job as one JSON line")
    submit.add_argument("--label", help="a name to recognise the job by")
    submit.add_argument("--owner", help="who the job belongs to, e.g. a workshop participant's name")
    submit.add_argument("--max-jobs", type=int, help="jobs allowed to run at once (default $DYNAPRUNE_MAX_JOBS or 1)")
    submit.add_argument("dynaprune_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the dynaprune command to run, after --")

    listing = actions.add_parser("list", help="every job with its state")
    listing.add_argument("--json", action="store_true", help="print a JSON list")

    show = actions.add_parser("show", help="one job's state, pid, times and exit code")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print one JSON object")

    logs = actions.add_parser("logs", help="print a job's output")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")

    cancel = actions.add_parser("cancel", help="stop a running job (SIGTERM, then SIGKILL) or drop a queued one")
    cancel.add_argument("id")
    cancel.add_argument("--kill-timeout", type=float, default=30.0, metavar="S",
                        help="seconds between SIGTERM and SIGKILL (default 30)")
    cancel.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the job to stop")
    cancel.add_argument("--json", action="store_true", help="print the job as one JSON line")

    resume = actions.add_parser("resume", help="run a failed, cancelled or lost job again from its checkpoint")
    resume.add_argument("id")
    resume.add_argument("--max-jobs", type=int, help="jobs allowed to run at once (default $DYNAPRUNE_MAX_JOBS or 1)")
    resume.add_argument("--json", action="store_true", help="print the job as one JSON line")

    wait = actions.add_parser("wait", help="block until a job has ended; exit 0 only if it succeeded")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds (exit 1)")
    wait.add_argument("--json", action="store_true", help="print the job as one JSON line")


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    except (ValueError, OverflowError, OSError):
        return "unknown"


def _print_job(job: jobs.Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.to_dict(), sort_keys=True))
        return
    rows = [
        ("id", job.id), ("status", job.state), ("label", job.label or "-"), ("owner", job.owner or "-"),
        ("command", "dynaprune " + " ".join(job.args) if job.args else "-"), ("out dir", job.out_dir or "-"),
        ("pid", "-" if job.pid is None else job.pid), ("exit code", "-" if job.exit_code is None else job.exit_code),
        ("attempt", job.attempt), ("created", _when(job.created_at)), ("started", _when(job.started_at)),
        ("ended", _when(job.ended_at)), ("heartbeat", _when(job.heartbeat_at)), ("message", job.message or "-"),
    ]
    for name, value in rows:
        print(f"{name:>10}: {value}")


def _list(as_json: bool) -> int:
    found = jobs.list_jobs()
    if as_json:
        print(json.dumps([job.to_dict() for job in found], sort_keys=True))
        return 0
    if not found:
        print(f"no jobs under {jobs.jobs_dir()}")
        return 0
    print(f"{'ID':<31} {'STATUS':<10} {'EXIT':>4}  {'LABEL':<20} COMMAND")
    for job in found:
        exit_code = "-" if job.exit_code is None else str(job.exit_code)
        command = " ".join(job.args) if job.args else job.message
        print(f"{job.id:<31} {job.state:<10} {exit_code:>4}  {(job.label or '-')[:20]:<20} {command}")
    return 0


def _submit_args(raw: list[str]) -> list[str]:
    if raw and raw[0] == "--":
        raw = raw[1:]
    if not raw:
        raise InvalidInputError("nothing to submit: put the dynaprune command after --, "
                                "e.g. `dynaprune jobs submit -- train --preset synthetic-tiny --out runs/a`")
    return raw


def run(args: argparse.Namespace) -> int:
    action = args.jobs_action
    if action == "submit":
        job = jobs.submit(_submit_args(args.dynaprune_args), label=args.label, owner=args.owner,
                          max_jobs=args.max_jobs)
        if args.json:
            _print_job(job, True)
        else:
            print(f"submitted job {job.id} ({job.state}); follow it with `dynaprune jobs show {job.id}`")
            print(job.id)
        return 0
    if action == "list":
        return _list(args.json)
    if action == "show":
        job = jobs.get_job(args.id)
        _print_job(job, args.json)
        return 1 if job.state == jobs.CORRUPT else 0
    if action == "logs":
        sys.stdout.write(jobs.read_log(args.id, tail=args.tail))
        return 0
    if action == "cancel":
        job = jobs.cancel(args.id, kill_timeout_s=args.kill_timeout)
        if args.wait is not None:
            job = _wait_quietly(args.id, args.wait) or job
        if args.json:
            _print_job(job, True)
        else:
            print(f"job {job.id}: {job.state} ({job.message})")
        return 0
    if action == "resume":
        job = jobs.resume(args.id, max_jobs=args.max_jobs)
        if args.json:
            _print_job(job, True)
        else:
            print(f"resumed job {job.id} (attempt {job.attempt}, {job.state})")
        return 0
    if action == "wait":
        job = _wait_quietly(args.id, args.timeout)
        if job is None:
            print(f"job {args.id} has not ended after {args.timeout:g} s", file=sys.stderr)
            return 1
        _print_job(job, args.json)
        return 0 if job.state == jobs.SUCCEEDED else 1
    raise InvalidInputError(f"unknown jobs action {action!r}")


def _wait_quietly(job_id: str, timeout_s: float) -> jobs.Job | None:
    try:
        return jobs.wait(job_id, timeout_s=timeout_s)
    except TimeoutError:
        return None
