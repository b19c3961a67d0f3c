"""`dynaprune prune`: prune a trained language model in stages, fine-tuning each smaller model with
distillation from the previous one and discrimination-aware L2 (METHOD sections 5-8).

    dynaprune prune --from sample_checkpoints/synthetic --ratio 0.5 --out runs/prune-a
    dynaprune prune --from runs/ptb-small --ratio 0.5 --criterion magnitude --one-shot --out runs/prune-b
    dynaprune prune --from runs/ptb-small --ratio rnns.0.l0=0.3,rnns.1.l0=0.6 --lds-order 6 --out runs/prune-c
    dynaprune prune --from sample_checkpoints/synthetic --out runs/try --dry-run

--from is a training run directory, a sample directory (same layout) or a model file; the corpus
the model was trained on is remembered there (--data only when it moved). Running the same command
again continues an interrupted run; SIGTERM stops it at the next safe point, resumable (exit status
143). With --json the last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json

from analysis.errors import InvalidInputError

HELP = "Prune a trained model in stages with distillation and discrimination-aware L2 fine-tuning (resumable)."
SIGTERM_EXIT_STATUS = 143


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from analysis.pruning.config import PipelineConfig
    from analysis.utils.options import add_config_arguments

    parser.add_argument("--from", dest="source", required=True,
                        help="the model to prune: a run or sample directory (with its trajectory/) or a model file")
    parser.add_argument("--out", required=True, help="output directory (created; an unfinished run there is continued)")
    add_config_arguments(parser, PipelineConfig)
    # shortcuts kept for commands (and stored background jobs) written before --regularization existed
    parser.add_argument("--one-shot", action="store_true", help="a single cut to the target ratio (--stages 1)")
    parser.add_argument("--plain-l2", action="store_true", help="the same as --regularization l2")
    parser.add_argument("--no-regularization", action="store_true", help="the same as --regularization none")
    parser.add_argument("--data", help="corpus spec when the source's one moved: ptb:<dir>, ptb, text:<dir>, "
                                       "synthetic:<seed>")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line (the final result)")


def config_from_args(args: argparse.Namespace):
    """The PipelineConfig the options describe (validated)."""
    from analysis.pruning.config import PipelineConfig
    from analysis.utils.options import config_from_args as options_config

    config = options_config(args, PipelineConfig)
    shortcuts = [name for name, given in (("l2", args.plain_l2), ("none", args.no_regularization)) if given]
    if len(shortcuts) > 1 or (shortcuts and hasattr(args, "regularization") and args.regularization != shortcuts[0]):
        raise InvalidInputError("--plain-l2, --no-regularization and --regularization contradict each other; "
                                "choose one")
    if shortcuts:
        config.regularization = shortcuts[0]
    if args.one_shot:
        config.stages = 1
    return config.validate()


def job_args(source, out, config) -> list[str]:
    """The arguments of a background job (`dynaprune jobs submit -- prune ...`) that runs `config`:
    every option spelled out, so the job resumes with the same settings even if a default changes."""
    from analysis.utils.options import config_argv

    return ["prune", "--from", str(source), "--out", str(out), *config_argv(config.validate()), "--no-progress"]


def config_of_job(args: list[str]):
    """The PipelineConfig a prune job's arguments (as stored with the job) run."""
    from analysis.cli import build_parser

    if not args or args[0] != "prune":
        raise InvalidInputError(f"not a prune command: {args[:1]}")
    try:
        return config_from_args(build_parser(only="prune").parse_args(list(args)))
    except SystemExit:  # argparse's way of refusing; it has said why on stderr
        raise InvalidInputError(f"the arguments do not parse as a prune command: {args}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from analysis.jobs.reporting import job_progress_reporter
    from analysis.pruning.pipeline import PipelineInterrupted, run_pruning_pipeline
    from analysis.utils.devices import checked_device
    from analysis.utils.progress import TerminalProgress

    device = checked_device(args.device)  # before any work
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    print(f"pruning {args.source} to ratio {config.ratio_text()} in {config.stages} stage(s) by {config.criterion} "
          f"into {args.out}", flush=True)
    # a background job reports its progress to its status (the dashboard's bar); a terminal gets a bar
    progress = job_progress_reporter() or (None if args.no_progress else TerminalProgress(unit="batch"))
    try:
        result = run_pruning_pipeline(args.out, source=args.source, config=config, data=args.data,
                                      overwrite=args.overwrite, progress=progress, device=device)
    except PipelineInterrupted as stopped:
        print(f"stopped: {stopped}", flush=True)
        return SIGTERM_EXIT_STATUS
    if args.json:
        final = next(e for e in result.events if e.get("event") == "final")
        summary = {"out": str(result.out_dir), "val_ppl": result.val_ppl, "test_ppl": result.test_ppl,
                   "baseline_val_ppl": result.baseline["val_ppl"], "baseline_test_ppl": result.baseline.get("test_ppl"),
                   "hidden_sizes": result.model.config.hidden_sizes, "params_recurrent": final["params_recurrent"],
                   "params_total": final["params_total"], "oracle_ppl": final.get("oracle_ppl")}
        print(json.dumps(summary, sort_keys=True))
    return 0
