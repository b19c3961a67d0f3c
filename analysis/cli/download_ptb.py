"""`dynaprune download-ptb`: fetch Penn Treebank into a cache directory, verified by SHA-256.

    dynaprune download-ptb                 # into the per-user cache; `--data ptb` then finds it
    dynaprune download-ptb --to data/ptb   # somewhere else; then use --data ptb:data/ptb

Each file is streamed to a temporary file and renamed into place only if its checksum matches,
so an interrupted or corrupted download leaves nothing behind. Files already present and
verified are not fetched again. --mirror, else $DYNAPRUNE_PTB_URL, replaces the default mirror.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Download Penn Treebank (Mikolov's word-level files), verified by SHA-256."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", type=Path, help="target directory (default: the per-user cache)")
    parser.add_argument("--mirror", metavar="URL", help="base URL of another copy holding the three files "
                                                        "(default: $DYNAPRUNE_PTB_URL, else the usual mirror)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")


def run(args: argparse.Namespace) -> int:
    from analysis.lm.download import default_ptb_cache_dir, download_ptb
    from analysis.utils.progress import TerminalProgress

    directory = download_ptb(args.to, base_url=args.mirror, timeout=args.timeout,
                             progress=TerminalProgress(unit="B"))
    hint = "--data ptb" if args.to is None or Path(args.to).resolve() == default_ptb_cache_dir().resolve() \
        else f"--data ptb:{directory}"
    print(f"Penn Treebank verified in {directory}; use it with {hint}")
    return 0
