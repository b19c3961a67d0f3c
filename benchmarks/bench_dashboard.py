"""Benchmark: how quickly the Prune page answers.

1. A slider move: the work the page redoes when the ratio changes, with distances, tree order and
   embedding already cached: select_units for every layer, regrouping the heatmap order by the new
   clusters, the heatmap view with pruned units marked, and the size table. Target: <= 200 ms for
   two layers of H = 1500 units.
2. Zero-shot perplexity of each embedded sample (sample_checkpoints/, or $DYNAPRUNE_SAMPLES_DIR)
   pruned at ratio 0.5 by the dynamics criterion, validation tokens already loaded as the page
   caches them. Target: <= 2 s.
3. A measured cut of each embedded sample at ratio 0.5 by each criterion that measures Taylor
   importances on training batches (the page computes it when asked, not on a slider move): the
   seconds it takes, once, with no target (--skip-measured leaves it out).

Each line prints the median time and its ratio to the target (<= 1 meets it). Threads are capped
as the dashboard caps them ($DYNAPRUNE_DASHBOARD_THREADS, default half the cores, at most 4).

    python benchmarks/bench_dashboard.py
    python benchmarks/bench_dashboard.py --quick      # H = 500, fewer repeats
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np

from analysis.dynamics.criteria import CRITERIA, TAYLOR, TRAJECTORY_CRITERIA
from analysis.dynamics.distances import dynamics_distances
from analysis.dynamics.lds import fit_layer
from analysis.dynamics.selection import final_norm_importance, select_units
from analysis.errors import DynapruneError
from analysis.exploration import group_by_labels, heatmap_order, heatmap_view, unit_status
from analysis.lm.model import ModelConfig, load_model
from analysis.pruning.preview import (
    limit_threads,
    load_validation_tokens,
    measured_cut,
    model_corpus,
    plan_footprint,
    zero_shot_perplexity,
)
from analysis.runs import BEST_MODEL_FILE
from analysis.trajectories.trajectory import load_trajectory

SELECTION_TARGET_S = 0.2
PERPLEXITY_TARGET_S = 2.0
SAMPLES = Path(os.environ.get("DYNAPRUNE_SAMPLES_DIR") or Path(__file__).resolve().parents[1] / "sample_checkpoints")


def clustered_distances(H: int, seed: int) -> np.ndarray:
    """Euclidean distances between points drawn around H/4 centres: a metric with cluster structure
    like the dynamics distances of a trained layer, without the minutes of fitting 1500 units."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, H // 4), 8)) * 3.0
    points = centres[rng.integers(0, len(centres), size=H)] + rng.normal(size=(H, 8))
    squared = (points ** 2).sum(axis=1)
    D = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0.0))
    np.fill_diagonal(D, 0.0)
    return (D + D.T) / 2


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_selection(H: int, repeats: int) -> None:
    layers = ["rnns.0.l0", "rnns.1.l0"]
    distances = {layer: clustered_distances(H, seed) for seed, layer in enumerate(layers)}
    importance = {layer: np.random.default_rng(9).uniform(size=H) for layer in layers}
    tree = heatmap_order(distances[layers[0]])  # cached by the page
    config = ModelConfig(vocab_size=10_000, embedding_size=H, hidden_sizes=[H, H])
    ratios = itertools.cycle([0.3, 0.5, 0.7])

    def slider_move(criterion: str) -> None:
        ratio = float(next(ratios))
        plan = select_units(distances, ratio=ratio, criterion=criterion, importance=importance)
        layer_plan = plan.layers[layers[0]]
        order = tree if layer_plan.clusters is None else group_by_labels(tree, layer_plan.clusters)
        heatmap_view(distances[layers[0]], order, marked=layer_plan.pruned)
        unit_status(H, layer_plan.pruned)
        plan_footprint(config, plan)

    for criterion in TRAJECTORY_CRITERIA:
        slider_move(criterion)  # warm-up
        seconds = median_seconds(functools.partial(slider_move, criterion), repeats)
        print(f"selection after a slider move, 2 layers x H={H}, {criterion:15s}: {seconds * 1e3:7.1f} ms "
              f"(ratio to the {SELECTION_TARGET_S * 1e3:.0f} ms target: {seconds / SELECTION_TARGET_S:.2f})")


def bench_zero_shot(repeats: int) -> None:
    samples = sorted(p for p in SAMPLES.iterdir() if (p / BEST_MODEL_FILE).is_file()) if SAMPLES.is_dir() else []
    if not samples:
        print(f"zero-shot perplexity: no embedded samples in {SAMPLES}; skipped")
    for sample in samples:
        model, info = load_model(sample)
        try:
            data = load_validation_tokens(info.get("data_source"), info.get("vocab"))
        except DynapruneError as error:
            print(f"zero-shot perplexity, {sample.name}: skipped ({error})")
            continue
        trajectory = load_trajectory(sample)
        importance = final_norm_importance(trajectory)
        distances = {layer: dynamics_distances(fit_layer(trajectory, layer)) for layer in trajectory.layers}
        plan = select_units(distances, ratio=0.5, criterion="dynamics", importance=importance)
        zero_shot_perplexity(model, plan, data.tokens)  # warm-up
        seconds = median_seconds(functools.partial(zero_shot_perplexity, model, plan, data.tokens), repeats)
        print(f"zero-shot perplexity, {sample.name} (hidden {model.config.hidden_sizes}, {data.tokens.numel():,} "
              f"tokens): {seconds:.2f} s (ratio to the {PERPLEXITY_TARGET_S:.0f} s target: "
              f"{seconds / PERPLEXITY_TARGET_S:.2f})")


def bench_measured_cut() -> None:
    samples = sorted(p for p in SAMPLES.iterdir() if (p / BEST_MODEL_FILE).is_file()) if SAMPLES.is_dir() else []
    for sample in samples:
        model, info = load_model(sample)
        try:
            tokens = model_corpus(info.get("data_source"), info.get("vocab"), "training").train
        except DynapruneError as error:
            print(f"measured cut, {sample.name}: skipped ({error})")
            continue
        for criterion, spec in CRITERIA.items():
            if spec.importance_source != TAYLOR:
                continue
            start = time.perf_counter()
            measured_cut(model, {layer: 0.5 for layer in model.layer_names}, criterion, tokens, trajectory_dir=sample)
            print(f"measured cut at 0.5, {sample.name} (hidden {model.config.hidden_sizes}), {criterion:26s}: "
                  f"{time.perf_counter() - start:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-measured", action="store_true", help="leave out the measured cuts (minutes)")
    args = parser.parse_args()
    if args.quick:
        args.units, args.repeats = 500, 3
    raw = os.environ.get("DYNAPRUNE_DASHBOARD_THREADS", "")
    threads = int(raw) if raw.isdigit() and int(raw) > 0 else max(1, min(4, (os.cpu_count() or 2) // 2))
    limit_threads(threads)
    print(f"threads: {threads}")
    bench_selection(args.units, args.repeats)
    bench_zero_shot(args.repeats)
    if not args.skip_measured:
        bench_measured_cut()


if __name__ == "__main__":
    main()
