"""The `dynaprune` command line. Each subcommand lives in analysis/cli/<name>.py and exposes
HELP, add_arguments(parser) and run(args) -> int exit code.

    dynaprune --help
"""
from __future__ import annotations

import argparse
import importlib
import sys

from analysis.errors import DynapruneError

# name -> module; the module is imported only when its subcommand is chosen or help is built.
COMMANDS: dict[str, str] = {
    "jobs": "analysis.cli.jobs",
    "train": "analysis.cli.train",
    "eval": "analysis.cli.eval",
    "prune": "analysis.cli.prune",
    "download-ptb": "analysis.cli.download_ptb",
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
        print(f"dynaprune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dynaprune {args.command}: interrupted", file=sys.stderr)
        return 130

