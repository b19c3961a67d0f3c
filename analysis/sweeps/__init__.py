"""Sweeps: many prune runs from one spec, on this machine or on a Ray cluster (docs/scaling.md).

    dynaprune sweep benchmarks/sweeps/sample.toml --out runs/sweep-sample

    from analysis.sweeps import load_spec, run_sweep, read_sweep_table
    result = run_sweep(load_spec("benchmarks/sweeps/sample.toml"), "runs/sweep-sample", backend="local")
    frame = read_sweep_table("runs/sweep-sample")

spec.py reads the spec and expands its trials, trial.py runs one trial, runner.py the backends,
table.py the results table.
"""
from analysis.sweeps.runner import BACKENDS, SweepResult, default_backend, run_sweep
from analysis.sweeps.spec import SweepSpec, Trial, load_spec, parse_spec
from analysis.sweeps.table import read_sweep_table, sweep_table, write_table

__all__ = ["BACKENDS", "SweepResult", "SweepSpec", "Trial", "default_backend", "load_spec", "parse_spec",
           "read_sweep_table", "run_sweep", "sweep_table", "write_table"]
