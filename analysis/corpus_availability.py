"""Whether the corpus a model was trained on can be read on this machine, and if not, what to do,
before anything (a zero-shot preview, a fine-tuning job) tries to load it and fails.

    problem = corpus_problem(info["data_source"])   # None when it can be loaded
    if problem:
        print(problem)   # "Penn Treebank is not on this machine: run `dynaprune download-ptb` ..."
    if fetching_ptb_would_help(info["data_source"]):
        download_ptb()   # (analysis.lm.download) into the per-user cache, where it is looked for

Only Penn Treebank can be missing in practice: synthetic corpora are regenerated from their seed,
and a text:<dir> corpus is the user's own folder. It is looked for where analysis.lm.corpora looks:
a recorded "ptb:<dir>" that exists, else $DYNAPRUNE_PTB_DIR, else a verified copy in the per-user cache.
"""
from __future__ import annotations

import os
from pathlib import Path

PTB_FILE_NAMES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
GET_PTB = ("run `dynaprune download-ptb` (a verified copy into the per-user cache, found from then on), or set "
           "DYNAPRUNE_PTB_DIR to a folder holding ptb.train.txt, ptb.valid.txt and ptb.test.txt")


def _holds_ptb(directory: Path) -> bool:
    return all((directory / name).is_file() for name in PTB_FILE_NAMES)


def ptb_directory(recorded: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder Penn Treebank is read from: `recorded` (a "ptb:<dir>" argument) when it holds the
    files, else $DYNAPRUNE_PTB_DIR, else the per-user cache when its copy is verified; None if none."""
    from analysis.lm.corpora import PTB_ENV_VAR
    from analysis.lm.download import default_ptb_cache_dir, ptb_files_verified

    if recorded and _holds_ptb(Path(recorded).expanduser()):
        return Path(recorded).expanduser()
    env_dir = os.environ.get(PTB_ENV_VAR)
    if env_dir:
        return Path(env_dir).expanduser() if _holds_ptb(Path(env_dir).expanduser()) else None
    cached = Path(cache_dir) if cache_dir is not None else default_ptb_cache_dir()
    return cached if ptb_files_verified(cached) else None


def corpus_problem(data_source: str | None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """None when the corpus `data_source` names (as a checkpoint records it) can be read here; else
    one sentence saying what is missing and how to get it. Sources other than PTB are not checked."""
    if not data_source:
        return None
    kind, _, argument = str(data_source).partition(":")
    if kind != "ptb" or ptb_directory(argument or None, cache_dir) is not None:
        return None
    return f"This model was trained on Penn Treebank, which is not on this machine: {GET_PTB}."


def fetching_ptb_would_help(data_source: str | None, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether a verified copy of Penn Treebank in `cache_dir` (default: the per-user cache) would make
    the corpus `data_source` names readable here: it is PTB, cannot be read now, and $DYNAPRUNE_PTB_DIR
    (looked at before the cache) is unset."""
    from analysis.lm.corpora import PTB_ENV_VAR

    kind = str(data_source or "").partition(":")[0]
    return kind == "ptb" and not os.environ.get(PTB_ENV_VAR) and corpus_problem(data_source, cache_dir) is not None
