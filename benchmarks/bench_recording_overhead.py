"""Cost of recording the trajectory: training time with and without TrajectoryRecorder.

    python benchmarks/bench_recording_overhead.py [--quick] [--threads 1]

Trains the ptb-small model for a fixed number of batches on Penn Treebank (when DYNAPRUNE_PTB_DIR
is set) or on the synthetic corpus, once with recording off and once at the default interval
of a full ptb-small run on that corpus (about 40 snapshots per run), alternating the two and
keeping each one's fastest time. The measured runs cover at least one interval, so each holds
its first, one periodic and its final snapshot: more snapshots per batch than a full run, which
makes the measured ratio an upper bound. Target: overhead <= 5%.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from analysis.lm.corpora import load_corpus
from analysis.lm.model import PRESETS, ModelConfig
from analysis.lm.training import TrainConfig, resolve_record_every, train_language_model
from analysis.trajectories.trajectory import load_trajectory


def timed_run(run_dir: Path, corpus, model_config: ModelConfig, config: TrainConfig) -> float:
    started = time.perf_counter()
    train_language_model(run_dir, corpus=corpus, model_config=model_config, train_config=config, overwrite=True,
                         progress=False, evaluate_test=False, log=None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("ptb" if os.environ.get("DYNAPRUNE_PTB_DIR") else "synthetic:0")
    model_config = ModelConfig(vocab_size=len(corpus.vocab), **PRESETS["ptb-small"]["model"])
    full_run = TrainConfig.from_preset("ptb-small")
    interval = resolve_record_every(full_run, corpus.train.numel())
    batches = interval + (interval // 4 if args.quick else interval)
    repeats = 2 if args.quick else 3
    common = dict(epochs=1, max_batches_per_epoch=batches, max_eval_batches=1)
    without = TrainConfig.from_preset("ptb-small", record_every=0, **common)
    with_recording = TrainConfig.from_preset("ptb-small", record_every=interval, **common)

    corpus.oracle_perplexity("valid")  # computed once and cached; keep it out of the first timing
    times = {"without": float("inf"), "with": float("inf")}
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as work:
        for _ in range(repeats):
            times["without"] = min(times["without"], timed_run(Path(work) / "plain", corpus, model_config, without))
            times["with"] = min(times["with"], timed_run(Path(work) / "recorded", corpus, model_config, with_recording))
        snapshots = len(load_trajectory(Path(work) / "recorded"))
    overhead = times["with"] / times["without"] - 1.0
    print(f"ptb-small model on {corpus.source}: {batches} batches, {torch.get_num_threads()} thread(s), "
          f"default interval {interval} steps -> {snapshots} snapshots in the recorded run, best of {repeats}")
    print(f"  without recording {times['without']:8.2f} s")
    print(f"  with recording    {times['with']:8.2f} s")
    print(f"recording overhead ratio: {times['with'] / times['without']:.3f} ({overhead:+.1%}; target <= +5%) "
          f"{'OK' if overhead <= 0.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
