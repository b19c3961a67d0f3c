"""The `dynaprune` command line. Each subcommand lives in analysis/cli/<name>.py and exposes
HELP, add_arguments(parser) and run(args) -> int exit code.

    dynaprune --help
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from analysis.errors import DynapruneError

# name -> module; the module is imported only when its subcommand is chosen or help is built.
COMMANDS: dict[str, str] = {
    "jobs": "analysis.cli.jobs",
    "train": "analysis.cli.train",
    "eval": "analysis.cli.eval",
    "prune": "analysis.cli.prune",
    "import": "analysis.cli.import_lm",
    "download-ptb": "analysis.cli.download_ptb",
    "sweep": "analysis.cli.sweep",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (with `only`) one whose sole subcommand is `only`, so running a
    command imports just its own module."""
    parser = argparse.ArgumentParser(
        prog="dynaprune", description="Prune recurrent networks by the dynamics of their weights.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only=chosen).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except DynapruneError as error:
        return _error(args.command, error)
    except BrokenPipeError:
        # the reader went away (`dynaprune jobs list | head -1`): stop quietly, as other tools do
        _silence_stdout()
        return 0
    except OSError as error:
        # a file or folder the command writes or reads is unusable (read-only, full, missing...)
        where = f"{error.filename}: " if error.filename else ""
        return _error(args.command, f"{where}{error.strerror or error.__class__.__name__}")
    except KeyboardInterrupt:
        print(f"dynaprune {args.command}: interrupted", file=sys.stderr)
        return 130


def run_main() -> int:
    """main() as a process runs it (`dynaprune`, `python -m analysis.cli`): the exit code, also for
    argparse's refusals; a background job's command also leaves its exit record in the job's folder."""
    try:
        code = main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    _record_job_exit(code)
    return code


def _record_job_exit(code: int) -> None:
    from analysis.jobs.reporting import JOB_ATTEMPT_ENV_VAR, JOB_ID_ENV_VAR

    job_id, attempt = os.environ.get(JOB_ID_ENV_VAR), os.environ.get(JOB_ATTEMPT_ENV_VAR, "")
    if not job_id or not attempt.isdigit():
        return
    try:
        from analysis.jobs import store

        store.write_exit_record(store.job_path(job_id), int(attempt), code)
    except (DynapruneError, OSError):
        pass  # no record: the job then counts as lost, as before


def _error(command: str, error: object) -> int:
    """Say what went wrong in one line (no terminal escapes); exit status 2: bad input or setting."""
    from analysis.utils.limits import one_line

    try:
        print(f"dynaprune {command}: error: {one_line(error, 2000)}", file=sys.stderr)
    except OSError:
        pass
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's flush at exit does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
