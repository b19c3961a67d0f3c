"""Zero-shot validation perplexity of one cut, by criterion and by the dynamics criterion's settings.

    python benchmarks/zero_shot_sweep.py --ratio 0.5                       # ptb-small (DYNAPRUNE_PTB_DIR)
    python benchmarks/zero_shot_sweep.py --source sample_checkpoints/synthetic --orders 1 2 4 --horizons 0 3

Each line cuts the source model once to --ratio with the units the criterion chooses (the first
stage of a one-shot `dynaprune prune`) and scores the cut model on the whole validation split
without any fine-tuning: a cheap look at how well a criterion and its LDS order and distance
horizon choose, before fine-tuning evens things out. Horizon 0 stands for the default (the number
of snapshots).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.lm.corpora import load_corpus  # noqa: E402
from analysis.lm.evaluation import evaluate  # noqa: E402
from analysis.pruning.config import PipelineConfig  # noqa: E402
from analysis.pruning.source import resolve_source  # noqa: E402
from analysis.pruning.stages import choose_units  # noqa: E402
from analysis.pruning.surgery import prune_units  # noqa: E402


def zero_shot_ppl(source, corpus, config: PipelineConfig) -> float:
    model = source.model
    kept = {name: config.kept_units(rnn.hidden_size)[0] for name, rnn in zip(model.layer_names, model.rnns)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # unstable LDS fits are stabilised, and say so
        plan = choose_units(model, source.trajectory_dir, kept, config, stage=1)
    student = prune_units(model, plan.kept)
    loss, _ = evaluate(student, corpus.valid, 10, 35)
    return math.exp(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "sample_checkpoints" / "ptb-small")
    parser.add_argument("--data", help="corpus spec if the source's own is not found (e.g. ptb:<dir>)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4, 8], help="LDS orders to try")
    parser.add_argument("--horizons", type=int, nargs="+", default=[0, 3], help="distance horizons (0: default)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = resolve_source(args.source)
    corpus = load_corpus(args.data or source.data_source)
    print(f"{args.source}: one cut to {args.ratio:g} of each layer's units, zero-shot validation perplexity")
    trials = [("magnitude", 4, 0), ("random", 4, 0)] + [("dynamics", order, horizon)
                                                          for horizon in args.horizons for order in args.orders]
    for criterion, order, horizon in trials:
        config = PipelineConfig(ratio=args.ratio, stages=1, criterion=criterion, lds_order=order,
                                horizon=horizon or None).validate()
        started = time.perf_counter()
        ppl = zero_shot_ppl(source, corpus, config)
        settings = (f"LDS order {order}, horizon {horizon or 'default'}" if criterion == "dynamics" else "")
        print(f"  {criterion:9s} {settings:32s} {ppl:9.2f}   ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
