"""Which unit-selection criterion cuts a trained language model best? A resumable study.

    DYNAPRUNE_PTB_DIR=/path/to/ptb python benchmarks/criteria_study.py --train --full-method   # everything
    python benchmarks/criteria_study.py --sources ptb-small --variants magnitude dynamics-clusters
    python benchmarks/criteria_study.py --report tables.md       # the tables (Markdown) of what was measured

Two rounds so far (docs/criteria.md): the first chose dynamics-greedy's settings on the ptb-small sample;
the second chose taylor-iterative's on it, then confirmed on lstm-seed2 and on two sources trained after
the choice (lstm-seed4, gru-seed2).

Each row cuts a source model once to a ratio (30%, 50%, 70% of each layer's units) with the units a
criterion variant chooses and scores the cut model on the whole validation split, with no
fine-tuning (zero-shot perplexity, METHOD section 9 settings). Settings are chosen on the tuning
source (the embedded ptb-small sample) only; the other sources are held out: LSTM models of the
same preset trained from other seeds with a snapshot every 150 steps, and a GRU model. `--train`
trains missing sources (resumably, with `dynaprune train`) into --work-dir/sources.

Every result is appended to --work-dir/zero_shot.jsonl as soon as it is measured; rows already
there are not measured again, so an interrupted study continues where it stopped. `--full-method`
then runs the whole method (`dynaprune prune` at 50%, 3 stages of 1 epoch) from each source with
each named criterion into --work-dir/full/, resuming unfinished runs, and exports each finished run
from a held-out source to docs/reference-runs/ptb-sources/ (benchmarks/results.py reports them as the
seed repeats of the PTB table's 50% rows).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from criteria_variants import VARIANTS, SourceUnits, choose_kept_units  # noqa: E402

from analysis.lm.corpora import load_corpus  # noqa: E402
from analysis.lm.evaluation import evaluate, perplexity  # noqa: E402
from analysis.lm.model import load_model  # noqa: E402
from analysis.pruning.surgery import prune_units  # noqa: E402
from analysis.reference_runs import (  # noqa: E402
    DEFAULT_REFERENCE_ROOT,
    SOURCE_REPEAT_JOIN,
    SOURCE_REPEATS,
    export_reference_run,
)
from analysis.runs import read_run_metrics  # noqa: E402
from analysis.trajectories.trajectory import load_trajectory  # noqa: E402

TUNING_SOURCE = "ptb-small"


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    train_args: tuple[str, ...] = ()   # how `dynaprune train` makes it; empty: shipped with the project
    role: str = "held-out"


def sources(work_dir: Path) -> dict[str, Source]:
    dense = ("--record-every", "150", "--record-dtype", "float16")
    made = work_dir / "sources"
    listed = [
        Source(TUNING_SOURCE, REPO / "sample_checkpoints" / "ptb-small", role="tuning"),
        Source("lstm-seed2", made / "lstm-seed2", ("--preset", "ptb-small", "--seed", "2", *dense)),
        Source("lstm-seed3", made / "lstm-seed3", ("--preset", "ptb-small", "--seed", "3", *dense)),
        Source("gru-seed1", made / "gru-seed1", ("--preset", "ptb-small-gru", "--seed", "1", *dense)),
        # the second round's fresh sources: no setting of any round was chosen while they existed
        Source("lstm-seed4", made / "lstm-seed4", ("--preset", "ptb-small", "--seed", "4", *dense)),
        Source("gru-seed2", made / "gru-seed2", ("--preset", "ptb-small-gru", "--seed", "2", *dense)),
    ]
    return {source.name: source for source in listed}


def is_trained(source: Source) -> bool:
    return any(event.get("event") == "final" for event in read_run_metrics(source.path))


def train(source: Source, threads: int) -> None:
    command = [sys.executable, "-m", "analysis.cli", "train", *source.train_args, "--data", "ptb",
               "--out", str(source.path), "--threads", str(threads), "--no-progress"]
    print("training:", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def read_results(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["source"], row["variant"], row["ratio"]): row for row in rows}


def measure(source: Source, variant_names: list[str], ratios: list[float], results_path: Path) -> None:
    done = read_results(results_path)
    todo = [(v, r) for v in variant_names for r in ratios if (source.name, v, r) not in done]
    if not todo:
        return
    model, info = load_model(source.path)
    model.eval()
    corpus = load_corpus("ptb")
    trajectory = load_trajectory(source.path)
    units = SourceUnits(model=model, trajectory=trajectory, calibration_tokens=corpus.train)
    for variant_name, ratio in todo:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # unstable LDS fits are stabilised, and say so
            kept = choose_kept_units(units, VARIANTS[variant_name], ratio)
        student = prune_units(model, kept)
        with torch.inference_mode():
            mean_nll, n_tokens = evaluate(student, corpus.valid, 10, 35)
        row = {"source": source.name, "variant": variant_name, "ratio": ratio,
               "valid_ppl": perplexity(mean_nll), "tokens": n_tokens, "snapshots": len(trajectory),
               "rnn_type": model.config.rnn_type, "seconds": round(time.perf_counter() - started, 1)}
        with results_path.open("a") as stream:
            stream.write(json.dumps(row) + "\n")
        print(f"  {source.name:11s} {variant_name:28s} {ratio:.1f} {row['valid_ppl']:9.2f}  ({row['seconds']} s)",
              flush=True)


def full_method_dir(work_dir: Path, source: Source, criterion: str, ratio: float) -> Path:
    return work_dir / "full" / source.name / f"{criterion}-{round(ratio * 100)}-seed0"


def run_full_method(work_dir: Path, source: Source, criterion: str, ratio: float, threads: int,
                    reference_dir: Path | None) -> dict | None:
    """The full method (3 stages, 1 epoch each, distillation and DA-L2: `dynaprune prune`'s defaults)
    from one source; resumable, so a run cut short continues where it stopped. A finished run of a
    held-out source is exported (description and metrics, no weights) to
    <reference_dir>/SOURCE_REPEATS/, where benchmarks/results.py and the Compare page read it."""
    out = full_method_dir(work_dir, source, criterion, ratio)
    arguments = ["prune", "--from", _shown(source.path), "--out", _shown(out), "--ratio", str(ratio),
                 "--criterion", criterion, "--epochs-per-stage", "1", "--seed", "0"]
    if not _final_event(out):
        command = [sys.executable, "-m", "analysis.cli", *arguments, "--threads", str(threads), "--no-progress"]
        print("pruning: dynaprune", " ".join(command[3:]), flush=True)
        subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "DYNAPRUNE_PTB_DIR": _ptb_dir()})
    final = _final_event(out)
    if final and reference_dir is not None and source.role == "held-out":
        row = f"{criterion}-{round(ratio * 100)}{SOURCE_REPEAT_JOIN}{source.name}"
        dest = export_reference_run(out, reference_dir / SOURCE_REPEATS, row=row, seed=0,
                                    command="dynaprune " + " ".join(arguments),
                                    name=f"{source.name}_{criterion}-{round(ratio * 100)}_seed-0")
        print(f"exported to {_shown(dest)}", flush=True)
    return final


def _shown(path: Path) -> str:
    """A path as the project names it, where it lies inside the project."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _final_event(run_dir: Path) -> dict | None:
    events = read_run_metrics(run_dir) if run_dir.is_dir() else []
    final = [e for e in events if e.get("event") == "final"]
    baseline = [e for e in events if e.get("event") == "baseline"]
    return {**final[-1], "baseline_test_ppl": baseline[-1].get("test_ppl") if baseline else None} if final else None


def _ptb_dir() -> str:
    return os.environ.get("DYNAPRUNE_PTB_DIR", "")


def full_method_report(work_dir: Path, criteria: list[str], ratio: float) -> str:
    lines = [f"### Full method at {ratio:.0%}: test perplexity (change against the unpruned source)", "",
             "| source | unpruned | " + " | ".join(criteria) + " |", "| --- | --- |" + " --- |" * len(criteria)]
    for source in sources(work_dir).values():
        finals = {c: _final_event(full_method_dir(work_dir, source, c, ratio)) for c in criteria}
        if not any(finals.values()):
            continue
        base = next((f["baseline_test_ppl"] for f in finals.values() if f), None)
        cells = [f"{f['test_ppl']:.2f} ({(f['test_ppl'] / base - 1) * 100:+.2f}%)" if f and base else
                 (f"{f['test_ppl']:.2f}" if f else "") for f in finals.values()]
        lines.append(f"| {source.name} | {base:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(results_path: Path, variant_names: list[str], ratios: list[float]) -> str:
    """One table per ratio: each variant's zero-shot perplexity per source, then its change against
    magnitude on the same source, averaged over the held-out sources and over all of them (a blank
    where a source lacks the row)."""
    results = read_results(results_path)
    names = [n for n in sources(Path(".")) if any(key[0] == n for key in results)]
    held_out = [n for n in names if n != TUNING_SOURCE]
    lines = []
    for ratio in ratios:
        lines += [f"### Zero-shot validation perplexity, one cut to {ratio:.0%}", "",
                  "| variant | " + " | ".join(names) + " | mean change vs magnitude, held-out | same, all sources |",
                  "| --- |" + " --- |" * (len(names) + 2)]
        for variant in variant_names:
            values = {n: results.get((n, variant, ratio), {}).get("valid_ppl") for n in names}
            base = {n: results.get((n, "magnitude", ratio), {}).get("valid_ppl") for n in names}
            change = {n: values[n] / base[n] - 1 for n in names if values[n] is not None and base[n]}
            cells = ["" if values[n] is None else f"{values[n]:.2f}" for n in names]
            means = [f"{np.mean([change[n] for n in group]) * 100:+.1f}%"
                     if group and all(n in change for n in group) else "" for group in (held_out, names)]
            lines.append(f"| {variant} | " + " | ".join(cells) + " | " + " | ".join(means) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / "out" / "criteria")
    parser.add_argument("--sources", nargs="+", help="source names (default: all that are trained)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--train", action="store_true", help="train missing held-out sources first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_ROOT,
                        help=f"where finished full-method runs are exported (into {SOURCE_REPEATS}/)")
    parser.add_argument("--report", type=Path, help="write the tables (Markdown) here")
    parser.add_argument("--full-method", nargs="*", metavar="CRITERION",
                        help="also run the full method at 50%% from each chosen source with these criteria "
                             "(default: taylor-iterative dynamics-greedy magnitude)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.work_dir / "zero_shot.jsonl"
    known = sources(args.work_dir)
    chosen = [known[name] for name in (args.sources or known)]
    for source in chosen:
        if not is_trained(source):
            if not (args.train and source.train_args):
                print(f"{source.name}: not trained yet ({source.path}); --train makes it", flush=True)
                continue
            train(source, args.threads)
        measure(source, args.variants, args.ratios, results_path)
    full_criteria = (None if args.full_method is None
                     else args.full_method or ["taylor-iterative", "dynamics-greedy", "magnitude"])
    if full_criteria:
        for source in chosen:
            if is_trained(source):
                for criterion in full_criteria:
                    run_full_method(args.work_dir, source, criterion, 0.5, args.threads, args.reference_dir)
    text = report(results_path, args.variants, args.ratios)
    if full_criteria:
        text += "\n" + full_method_report(args.work_dir, full_criteria, 0.5)
    if args.report is not None:
        args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
