"""`dynaprune prune`: prune a trained language model in stages, fine-tuning each smaller model with
distillation from the previous one and discrimination-aware L2 (METHOD sections 5-8).

    dynaprune prune --from sample_checkpoints/synthetic --ratio 0.5 --out runs/prune-a
    dynaprune prune --from runs/ptb-small --ratio 0.5 --criterion magnitude --one-shot --out runs/prune-b
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
    from analysis.dynamics.selection import CRITERIA
    from analysis.lm.training_config import LR_SCHEDULES, TEACHER_PRECISIONS

    defaults = PipelineConfig()
    parser.add_argument("--from", dest="source", required=True,
                        help="the model to prune: a run or sample directory (with its trajectory/) or a model file")
    parser.add_argument("--out", required=True, help="output directory (created; an unfinished run there is continued)")
    parser.add_argument("--ratio", type=float, default=defaults.ratio,
                        help=f"fraction of each layer's units to remove in the end (default {defaults.ratio}; 0 fine-tunes "
                             f"the unpruned model the same way, as a control)")
    parser.add_argument("--stages", type=int, default=defaults.stages,
                        help=f"number of prune-and-fine-tune stages (default {defaults.stages})")
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default=defaults.criterion,
                        help=f"how units are chosen (default {defaults.criterion})")
    parser.add_argument("--epochs-per-stage", type=int, default=defaults.epochs_per_stage,
                        help=f"fine-tuning epochs after each cut (default {defaults.epochs_per_stage})")
    parser.add_argument("--da-l2", type=float, default=defaults.da_l2,
                        help=f"strength lambda of the discrimination-aware L2 penalty (default {defaults.da_l2:g})")
    parser.add_argument("--kd-alpha", type=float, default=defaults.kd_alpha,
                        help=f"weight of the distillation term (default {defaults.kd_alpha})")
    parser.add_argument("--kd-tau", type=float, default=defaults.kd_tau,
                        help=f"distillation temperature (default {defaults.kd_tau})")
    parser.add_argument("--lr", type=float, help="fine-tuning learning rate (default: half the source run's initial rate)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule,
                        help="cosine: each stage anneals the rate to 0 over its steps; step: the rate is multiplied "
                             f"by the source run's decay after each epoch (default {defaults.lr_schedule})")
    parser.add_argument("--teacher-precision", choices=sorted(TEACHER_PRECISIONS), default=defaults.teacher_precision,
                        help="precision of the teacher's output layer: bfloat16 is about 3x faster on CPUs with "
                             f"bfloat16 units and changes the targets very little (default {defaults.teacher_precision})")
    parser.add_argument("--one-shot", action="store_true", help="a single cut to the target ratio (--stages 1)")
    parser.add_argument("--no-distillation", action="store_true", help="fine-tune on cross-entropy alone (no teacher)")
    parser.add_argument("--plain-l2", action="store_true", help="the same L2 strength for every unit (all s_k = 0)")
    parser.add_argument("--no-regularization", action="store_true", help="no L2 penalty at all")
    parser.add_argument("--data", help="corpus spec when the source's one moved: ptb:<dir>, ptb, text:<dir>, synthetic:<seed>")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--dry-run", action="store_true", help="a few batches per stage, to check the setup in seconds")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="end the output with one JSON line (the final result)")


def config_from_args(args: argparse.Namespace):
    """The PipelineConfig the options describe (validated)."""
    from analysis.pruning.config import PipelineConfig

    if args.plain_l2 and args.no_regularization:
        raise InvalidInputError("--plain-l2 and --no-regularization contradict each other; choose one")
    regularization = "none" if args.no_regularization else "l2" if args.plain_l2 else "da-l2"
    return PipelineConfig(ratio=args.ratio, stages=1 if args.one_shot else args.stages, criterion=args.criterion,
                          epochs_per_stage=args.epochs_per_stage, regularization=regularization, da_l2=args.da_l2,
                          distillation=not args.no_distillation, kd_alpha=args.kd_alpha, kd_tau=args.kd_tau,
                          lr=args.lr, lr_schedule=args.lr_schedule,
                          teacher_precision=args.teacher_precision, seed=args.seed, dry_run=args.dry_run).validate()


def run(args: argparse.Namespace) -> int:
    import torch

    from analysis.pruning.pipeline import PipelineInterrupted, run_pruning_pipeline

    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    print(f"pruning {args.source} to ratio {config.ratio:g} in {config.stages} stage(s) by {config.criterion} into "
          f"{args.out}", flush=True)
    try:
        result = run_pruning_pipeline(args.source, args.out, config, data=args.data, overwrite=args.overwrite,
                                      progress=not args.no_progress, device=args.device)
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
