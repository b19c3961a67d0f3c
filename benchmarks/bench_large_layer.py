"""Benchmark: LDS fit plus all-pair distances for one Zaremba-large-sized LSTM layer.

H = 1500 units, input size D = 1500 (d = 4 * (D + H) = 12000), T = 55 snapshots, order 4. The
benchmark writes a synthetic trajectory to disk (about 4 GB of safetensors snapshots, reused on
later runs), then measures in a fresh child process, so its peak memory is the analysis alone:
    - load_trajectory + fit_layer (unit vectors read in blocks of rows from the memory-mapped safetensors files)
    - dynamics_distances over all 1500 x 1500 pairs
    - the one big matrix product the computation needs, (N*n x d)(d x N*n), as the baseline
Targets: fit + distances <= 180 s, peak memory <= 4 GB, total within 2x of the big product.

    python benchmarks/bench_large_layer.py --work-dir /tmp/dynaprune-large   # full size
    python benchmarks/bench_large_layer.py --quick                           # H=300, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

GATES = 4


def write_synthetic_trajectory(directory: Path, H: int, D: int, T: int, seed: int = 0) -> None:
    """Snapshots of an nn.LSTM-shaped layer whose units follow random order-4 LDSs plus noise."""
    done_marker = directory / "complete.json"
    spec = {"H": H, "D": D, "T": T, "seed": seed}
    if done_marker.exists() and json.loads(done_marker.read_text()) == spec:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    generator = torch.Generator().manual_seed(seed)
    d = GATES * (D + H)
    n_families = 50  # units of a family share dynamics, so the clustering has something to find
    family = torch.randint(n_families, (H,), generator=generator)
    angles = torch.rand(n_families, 2, generator=generator) * 0.5 + 0.05
    radii = torch.rand(n_families, 2, generator=generator) * 0.1 + 0.9
    transitions = torch.zeros(n_families, 4, 4)
    for block in range(2):
        c, s = torch.cos(angles[:, block]) * radii[:, block], torch.sin(angles[:, block]) * radii[:, block]
        transitions[:, 2 * block, 2 * block], transitions[:, 2 * block, 2 * block + 1] = c, -s
        transitions[:, 2 * block + 1, 2 * block], transitions[:, 2 * block + 1, 2 * block + 1] = s, c
    observation = torch.randn(n_families, d, 4, generator=generator) * 0.01
    base = torch.randn(H, d, generator=generator) * 0.05
    state = torch.randn(H, 4, generator=generator)
    for t in range(T):
        units = base + torch.einsum("hdn,hn->hd", observation[family], state)
        units += torch.randn(H, d, generator=generator) * 1e-4
        per_gate = units.reshape(H, GATES, D + H).transpose(0, 1)  # (G, H, D + H)
        tensors = {
            "rnn.weight_ih_l0": per_gate[:, :, :D].reshape(GATES * H, D).contiguous(),
            "rnn.weight_hh_l0": per_gate[:, :, D:].reshape(GATES * H, H).contiguous(),
        }
        save_file(tensors, str(directory / f"step_{(t + 1) * 100}.safetensors"))
        state = torch.einsum("hij,hj->hi", transitions[family], state) + torch.randn(H, 4, generator=generator) * 0.05
    done_marker.write_text(json.dumps(spec))


def measure(directory: Path, order: int) -> dict:
    from analysis.dynamics.distances import dynamics_distances
    from analysis.dynamics.lds import fit_layer
    from analysis.trajectories.trajectory import load_trajectory

    start = time.perf_counter()
    trajectory = load_trajectory(directory)
    layer = trajectory.layers[0]
    fit = fit_layer(trajectory, layer, order=order)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    distances = dynamics_distances(fit)
    distances_s = time.perf_counter() - start
    assert np.isfinite(distances).all()

    N, d, n = fit.C.shape
    stacked = torch.as_tensor(fit.C, dtype=torch.float64).transpose(1, 2).reshape(N * n, d)
    start = time.perf_counter()
    product = stacked @ stacked.T
    product_s = time.perf_counter() - start
    del product
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"H": N, "d": d, "T": len(trajectory), "order": n, "fit_s": round(fit_s, 2),
            "distances_s": round(distances_s, 2), "total_s": round(fit_s + distances_s, 2),
            "big_product_s": round(product_s, 2), "ratio_to_big_product": round((fit_s + distances_s) / product_s, 2),
            "peak_memory_gb": round(peak_bytes / 1e9, 2), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1500)
    parser.add_argument("--input-size", type=int, default=1500)
    parser.add_argument("--snapshots", type=int, default=55)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dynaprune-bench-large")
    parser.add_argument("--quick", action="store_true", help="H = D = 300, T = 20")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.order)))
        return
    if args.quick:
        args.units, args.input_size, args.snapshots = 300, 300, 20
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")

    directory = args.work_dir / f"H{args.units}_D{args.input_size}_T{args.snapshots}"
    start = time.perf_counter()
    write_synthetic_trajectory(directory, args.units, args.input_size, args.snapshots)
    print(f"trajectory ready in {directory} ({time.perf_counter() - start:.1f} s)")
    child = subprocess.run([sys.executable, __file__, "--measure", str(directory), "--order", str(args.order)],
                           capture_output=True, text=True, env=os.environ.copy())
    if child.returncode != 0:
        sys.exit(child.stderr)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"H={result['H']} d={result['d']} T={result['T']} n={result['order']} ({result['threads']} threads)")
    print(f"fit {result['fit_s']} s + distances {result['distances_s']} s = {result['total_s']} s (target <= 180 s)")
    print(f"one big product {result['big_product_s']} s; ratio {result['ratio_to_big_product']} (target <= 2)")
    print(f"peak memory {result['peak_memory_gb']} GB (target <= 4 GB)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
