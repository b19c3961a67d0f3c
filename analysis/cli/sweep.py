"""`dynaprune sweep`: many prune runs from one TOML spec (docs/scaling.md), each an ordinary
resumable prune run in its own folder, gathered into one table (results.csv, results.md).

    dynaprune sweep benchmarks/sweeps/sample.toml --out runs/sweep-sample
    dynaprune sweep my-sweep.toml --out runs/sweep-a --backend local          # no Ray: $DYNAPRUNE_MAX_JOBS at a time
    dynaprune sweep my-sweep.toml --out runs/sweep-a --address 10.0.0.1:6379  # join a cluster (`ray start --head`)

Running the same command again runs only what is not done; SIGTERM or Ctrl-C stops the running
trials with resumable checkpoints (exit status 143). Exit status 1 when some trial failed.
"""
from __future__ import annotations

import argparse
import dataclasses

HELP = "Run a grid or random search of prune runs from a TOML spec, locally or on Ray (resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the sweep spec (TOML; format in docs/scaling.md)")
    parser.add_argument("--out", required=True, help="the sweep folder (created; a sweep there is continued)")
    parser.add_argument("--backend", choices=["local", "ray"],
                        help="ray: a Ray task per trial (a local Ray instance unless --address); local: trials as "
                             "processes on this machine (default: ray when Ray is installed, else local)")
    parser.add_argument("--address", help="join this Ray cluster (host:port of `ray start --head`; implies ray)")
    parser.add_argument("--max-parallel", type=int,
                        help="trials at once (local default: $DYNAPRUNE_MAX_JOBS or 1; ray: as resources allow)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--device", help="the prune command's --device for every trial (default: the spec's)")
    parser.add_argument("--early-stop", action="store_true", help="stop hopeless trials after each stage, as "
                                                                 "[early_stop] in the spec (margin 0.1 unless set)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed trials again (default: keep them)")


def run(args: argparse.Namespace) -> int:
    from analysis.errors import InvalidInputError
    from analysis.sweeps import load_spec, run_sweep

    spec = load_spec(args.spec)
    if args.early_stop:
        spec.early_stop = dataclasses.replace(spec.early_stop, enabled=True)
    if args.max_parallel is not None and args.max_parallel < 1:
        raise InvalidInputError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    backend = args.backend or ("ray" if args.address else None)
    result = run_sweep(spec, args.out, backend=backend, address=args.address, max_parallel=args.max_parallel,
                       device=args.device, retry_failed=args.retry_failed, num_cpus=args.num_cpus,
                       log=lambda line: print(line, flush=True))
    return result.exit_code
