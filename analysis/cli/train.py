"""`dynaprune train`: train a preset language model, recording its recurrent weights' trajectory.

    dynaprune train --preset ptb-small --data ptb:/path/to/ptb --out runs/ptb-small
    dynaprune train --preset synthetic-tiny --out runs/tiny --dry-run

Running the same command again with the same --out resumes an interrupted run; SIGTERM stops it
after the current batch with a resumable checkpoint (exit status 143).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from analysis.errors import InvalidInputError
from analysis.lm.model import PRESETS, ModelConfig, preset
from analysis.lm.training_config import TrainConfig
from analysis.utils.options import add_config_arguments
from analysis.utils.options import config_from_args as options_config

HELP = "Train a preset RNN language model and record its weight trajectory (resumable)."
SIGTERM_EXIT_STATUS = 143
# Only a pruning stage trains with a teacher, so these would do nothing here.
TEACHER_SETTINGS = ("distill_alpha", "distill_temperature", "teacher_precision")
# A dry run touches every stage (training, recording, evaluation, checkpoints) in seconds.
DRY_RUN_SETTINGS = {"epochs": 2, "max_batches_per_epoch": 4, "max_eval_batches": 2, "log_interval": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model and training settings")
    parser.add_argument("--data", help="corpus spec: ptb:<dir>, ptb (uses $DYNAPRUNE_PTB_DIR), text:<dir> or "
                                       "synthetic[:seed]; default: the preset's corpus")
    parser.add_argument("--out", required=True, help="run directory (created; an existing run there is resumed)")
    add_config_arguments(parser, TrainConfig, skip=TEACHER_SETTINGS, default_note="default: the preset's")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often "
                                                    "fastest for small models on a busy machine)")
    parser.add_argument("--dry-run", action="store_true", help="a few batches of 2 epochs, to check the setup")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's training settings with the options given (validated); --dry-run caps them."""
    config = options_config(args, TrainConfig, base=TrainConfig.from_preset(args.preset))
    if args.dry_run:
        epochs = min(args.epochs, 2) if hasattr(args, "epochs") else 2
        config = replace(config, **{**DRY_RUN_SETTINGS, "epochs": epochs})
    return config.validate()


def run(args: argparse.Namespace) -> int:
    from analysis.jobs.reporting import job_progress_reporter
    from analysis.lm.corpora import load_corpus
    from analysis.lm.training import TrainingInterrupted, train_language_model
    from analysis.utils.devices import checked_device
    from analysis.utils.progress import TerminalProgress

    chosen = preset(args.preset)
    device = checked_device(args.device)  # before any work: a wrong device should not cost a corpus load
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    train_config = config_from_args(args)
    corpus = load_corpus(args.data or chosen["data"])
    model_config = ModelConfig(vocab_size=len(corpus.vocab), **chosen["model"])
    print(f"training {args.preset} on {corpus.source} ({corpus.train.numel()} training tokens, "
          f"{len(corpus.vocab)} words) into {args.out}", flush=True)
    # a background job reports its progress to its status (the dashboard's bar); a terminal gets a bar
    progress = job_progress_reporter() or (None if args.no_progress else TerminalProgress(unit="batch"))
    try:
        result = train_language_model(args.out, corpus=corpus, model_config=model_config, train_config=train_config,
                                      overwrite=args.overwrite, progress=progress, device=device)
    except TrainingInterrupted as stopped:
        print(f"stopped: {stopped}", flush=True)
        return SIGTERM_EXIT_STATUS
    summary = f"best valid perplexity {result.best_val_ppl:.2f}"
    if result.test_ppl is not None:
        summary += f", test perplexity {result.test_ppl:.2f}"
    print(f"{summary}; run saved in {result.run_dir}", flush=True)
    return 0
