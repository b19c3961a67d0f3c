"""Benchmark: all-pairs dynamics distances against a straightforward per-pair reference.

The reference builds each unit's observability matrix once, then loops over pairs calling
scipy.linalg.subspace_angles. It is timed on a random sample of pairs and extrapolated to all
H(H-1)/2 pairs (running every pair would take minutes); both methods' values are compared on that
sample.

    python benchmarks/bench_distances.py            # H=400 (the target: >= 300x, 1e-6 relative)
    python benchmarks/bench_distances.py --quick    # H=100, seconds
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.linalg import subspace_angles
from threadpoolctl import threadpool_limits

from analysis.dynamics.distances import COS2_FLOOR, dynamics_distances, observability_matrix
from analysis.dynamics.lds import fit_lds


def synthetic_unit_vectors(T: int, H: int, d: int, seed: int) -> np.ndarray:
    """Random-walk-plus-drift trajectories: what units look like under SGD, cheaply."""
    rng = np.random.default_rng(seed)
    drift = rng.normal(size=(1, H, d)) * 0.05
    steps = rng.normal(size=(T, H, d)).astype(np.float64) * 0.02 + drift
    return np.cumsum(steps, axis=0) + rng.normal(size=(1, H, d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--input-size", type=int, default=400, help="D; d = 4 * (D + H) as for an LSTM layer")
    parser.add_argument("--snapshots", type=int, default=40)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--sample-pairs", type=int, default=1500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.units, args.input_size, args.sample_pairs = 100, 100, 300

    H, T = args.units, args.snapshots
    d = 4 * (args.input_size + H)
    fit = fit_lds(synthetic_unit_vectors(T, H, d, seed=0), order=args.order)

    dynamics_distances(fit)  # warm-up
    start = time.perf_counter()
    D = dynamics_distances(fit)
    fast_s = time.perf_counter() - start

    rng = np.random.default_rng(1)
    pairs = rng.choice(H * H, size=args.sample_pairs, replace=False)
    pairs = [(p // H, p % H) for p in pairs if p // H != p % H]
    # The reference runs single-threaded: on 2 cores that is its fastest setting (threaded BLAS on
    # these thin matrices only adds overhead), so the speedup is not inflated.
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        observability = [observability_matrix(fit.A[k], fit.C[k], T) for k in range(H)]
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        reference = []
        for i, j in pairs:
            cosines = np.cos(subspace_angles(observability[i], observability[j]))
            reference.append(np.sqrt(max(0.0, -np.sum(np.log(np.maximum(cosines**2, COS2_FLOOR))))))
        per_pair_s = (time.perf_counter() - start) / len(pairs)
    all_pairs = H * (H - 1) // 2
    reference_s = build_s + per_pair_s * all_pairs

    ours = np.array([D[i, j] for i, j in pairs])
    reference = np.array(reference)
    relative = np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-12)
    result = {
        "H": H, "d": d, "T": T, "order": args.order, "pairs": all_pairs, "sampled_pairs": len(pairs),
        "dynamics_distances_s": round(fast_s, 4), "reference_per_pair_ms": round(per_pair_s * 1e3, 4),
        "reference_all_pairs_s_extrapolated": round(reference_s, 2), "speedup": round(reference_s / fast_s, 1),
        "max_relative_difference": float(relative.max()), "target_speedup": 300, "target_relative": 1e-6,
    }
    print(f"H={H} d={d} T={T} n={args.order}: dynamics_distances {fast_s:.3f} s for {all_pairs} pairs")
    print(f"per-pair subspace_angles reference: {per_pair_s * 1e3:.3f} ms/pair (+{build_s:.2f} s building O) "
          f"-> {reference_s:.1f} s for all pairs (extrapolated from {len(pairs)})")
    print(f"speedup {result['speedup']}x (target >= 300x); "
          f"max relative difference {relative.max():.2e} (target <= 1e-6)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
