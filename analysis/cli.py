"""The `dynaprune` command line. Each subcommand lives in analysis/commands/<name>.py and exposes
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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynaprune", description="Prune recurrent networks by the dynamics of their weights.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except DynapruneError as error:
        print(f"dynaprune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dynaprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
