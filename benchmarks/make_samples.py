"""Build sample_checkpoints/: small trained models with their recorded trajectories.

    python benchmarks/make_samples.py [--only synthetic|ptb-small] [--work-dir runs/samples]

Trains (resumably: run it again after an interruption) the synthetic-tiny model on "synthetic:0"
and the ptb-small model on Penn Treebank (the directory in DYNAPRUNE_PTB_DIR) inside the work
directory, then copies into sample_checkpoints/<name>/ the run's shareable files (analysis.runs: the
best model with its vocabulary, no corpus text; the trajectory, float16 snapshots; the metrics and
the run's description), and rewrites
sample_checkpoints/README.md. Each sample is assembled in a temporary directory and renamed into
place, so a sample directory is always complete. `--dry-run` exercises all of it in seconds,
writing into <work-dir>/sample_checkpoints_dry instead.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.lm.corpora import load_corpus  # noqa: E402
from analysis.lm.model import PRESETS, ModelConfig  # noqa: E402
from analysis.lm.training import TrainConfig, steps_per_epoch, train_language_model  # noqa: E402
from analysis.runs import BEST_MODEL_FILE, MANIFEST_FILE, METRICS_FILE, RUN_FILE, TRAJECTORY_DIR, read_run_metrics  # noqa: E402
from analysis.trajectories.trajectory import load_trajectory  # noqa: E402
from analysis.utils.fileio import atomic_write_text  # noqa: E402
from analysis.utils.progress import TerminalProgress  # noqa: E402

# Snapshot counts keep both samples together under SIZE_BUDGET_MB: ptb-small's best model is about
# 18.6 MB and each float16 snapshot of its recurrent weights about 1.3 MB.
SAMPLES = {
    "synthetic": {"preset": "synthetic-tiny", "data": "synthetic:0", "snapshots": 25},
    # one snapshot per epoch, plus step 0, recorded; the 13 epoch ends are kept (see install_sample)
    "ptb-small": {"preset": "ptb-small", "data": "ptb", "snapshots": 14, "keep_last": 13},
}
COPIED = (BEST_MODEL_FILE, METRICS_FILE, RUN_FILE)
SIZE_BUDGET_MB = 40.0
DRY_RUN_SETTINGS = {"epochs": 2, "max_batches_per_epoch": 6, "max_eval_batches": 2, "log_interval": 2}


def record_interval(total_steps: int, snapshots: int) -> int:
    """Steps between snapshots so that step 0, the periodic ones and the final one number at most `snapshots`."""
    return max(1, math.ceil(total_steps / max(1, snapshots - 1)))


def train_sample(name: str, work_dir: Path, dry_run: bool, threads: int | None) -> Path:
    spec = SAMPLES[name]
    chosen = PRESETS[spec["preset"]]
    corpus = load_corpus(spec["data"])
    settings = dict(DRY_RUN_SETTINGS) if dry_run else {}
    config = TrainConfig.from_preset(spec["preset"], record_dtype="float16", **settings)
    total = config.epochs * steps_per_epoch(corpus.train.numel(), config)
    config.record_every = record_interval(total, spec["snapshots"])
    model_config = ModelConfig(vocab_size=len(corpus.vocab), **chosen["model"])
    run_dir = work_dir / (name + ("-dry" if dry_run else ""))
    print(f"[{name}] training {spec['preset']} on {corpus.source} in {run_dir} "
          f"({total} steps, a snapshot every {config.record_every})", flush=True)
    if threads:
        torch.set_num_threads(threads)
    train_language_model(run_dir, corpus=corpus, model_config=model_config, train_config=config,
                         progress=TerminalProgress(unit="batch"))
    return run_dir


def keep_last_snapshots(trajectory_dir: Path, count: int) -> None:
    """Drop all but the last `count` snapshots of a recorded trajectory (manifest and files).

    Dropping from the start keeps the snapshots evenly spaced in training steps, which the LDS fit
    assumes; for ptb-small it drops the random initialisation and keeps the size budget.
    """
    manifest_path = trajectory_dir / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    dropped, manifest["entries"] = manifest["entries"][:-count], manifest["entries"][-count:]
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for entry in dropped:
        (trajectory_dir / entry["file"]).unlink()


def install_sample(run_dir: Path, destination: Path, keep_last: int | None = None) -> None:
    """Copy a run's shareable files into `destination`, replacing it in one rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{destination.name}-", dir=destination.parent))
    try:
        for name in COPIED:
            shutil.copy2(run_dir / name, staging / name)
        shutil.copytree(run_dir / TRAJECTORY_DIR, staging / TRAJECTORY_DIR,
                        ignore=shutil.ignore_patterns(".tmp-*"))
        if keep_last is not None:
            keep_last_snapshots(staging / TRAJECTORY_DIR, keep_last)
        load_trajectory(staging)  # refuse to install a trajectory that does not load
        staging.chmod(0o755)  # mkdtemp makes it private
        retired = destination.with_name(f".old-{destination.name}")
        shutil.rmtree(retired, ignore_errors=True)
        if destination.exists():
            destination.rename(retired)
        staging.rename(destination)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def describe(name: str, sample_dir: Path) -> str:
    run = json.loads((sample_dir / RUN_FILE).read_text(encoding="utf-8"))
    events = read_run_metrics(sample_dir)
    epochs = [e for e in events if e.get("event") == "epoch"]
    final = next((e for e in reversed(events) if e.get("event") == "final"), {})
    trajectory = load_trajectory(sample_dir)
    model, train = run["model_config"], run["train_config"]
    lines = [f"## {name}/", "",
             f"- preset `{SAMPLES[name]['preset']}` trained on `{run['data_source']}` "
             f"(vocabulary {run['vocab_size']} words): {model['rnn_type']}, embedding {model['embedding_size']}, "
             f"hidden sizes {model['hidden_sizes']}, dropout {model['dropout']}",
             f"- {train['epochs']} epochs ({train['optimizer']}, lr {train['lr']:g}, batch {train['batch_size']}, "
             f"bptt {train['bptt']}), seed {train['seed']}",
             f"- best validation perplexity **{final.get('best_val_ppl', float('nan')):.2f}**"
             + (f", test perplexity **{final['test_ppl']:.2f}**" if "test_ppl" in final else "")
             + (f" (oracle: validation {epochs[-1]['oracle_ppl']:.2f}"
                f", test {final['test_oracle_ppl']:.2f})" if epochs and "oracle_ppl" in epochs[-1]
                and "test_oracle_ppl" in final else ""),
             f"- trajectory: {len(trajectory)} snapshots of the recurrent layers "
             f"{', '.join(f'`{layer}`' for layer in trajectory.layers)} in "
             f"{train['record_dtype']}, steps {int(trajectory.steps[0])} to {int(trajectory.steps[-1])} "
             f"(one every {train['record_every']} training steps"
             + (", the first dropped" if SAMPLES[name].get("keep_last") else ", and the last step") + ")",
             f"- size {size_mb(sample_dir):.1f} MB", ""]
    if train.get("max_batches_per_epoch"):
        lines.insert(2, "- **dry run**: a few batches per epoch only; not a trained model")
    return "\n".join(lines)


def write_readme(out_dir: Path) -> None:
    present = [name for name in SAMPLES if (out_dir / name / RUN_FILE).is_file()]
    total = sum(size_mb(out_dir / name) for name in present)
    text = "\n".join([
        "# Sample checkpoints", "",
        "Small trained language models with the trajectories of their recurrent weights, so the dashboard",
        "and the pruning pipeline can be tried without training first. Built by", "",
        "    python benchmarks/make_samples.py            # DYNAPRUNE_PTB_DIR must point at Penn Treebank", "",
        "which trains each model (resumably, in runs/samples/) and copies in its files. Every directory holds",
        f"`{BEST_MODEL_FILE}` (the best model by validation loss with its vocabulary; loads with",
        f"`torch.load(path, weights_only=True)` or `analysis.lm.model.load_model`), `{TRAJECTORY_DIR}/` (snapshots",
        f"recorded while training; `analysis.trajectories.trajectory.load_trajectory`), `{METRICS_FILE}` (per-epoch",
        f"perplexities) and `{RUN_FILE}` (the settings). No corpus text is included: the synthetic corpus is",
        "regenerated from its seed, and Penn Treebank comes from DYNAPRUNE_PTB_DIR.", "",
        "    dynaprune eval sample_checkpoints/synthetic --split test", "",
        *[describe(name, out_dir / name) for name in present],
        f"Total size: {total:.1f} MB.", ""])
    atomic_write_text(out_dir / "README.md", text)
    if total > SIZE_BUDGET_MB:
        print(f"warning: samples take {total:.1f} MB, over the {SIZE_BUDGET_MB:.0f} MB budget; lower the snapshot "
              f"counts in SAMPLES", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SAMPLES), help="build just this sample")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "samples", help="where the runs train")
    parser.add_argument("--out", type=Path,
                        help="default: sample_checkpoints/ (dry run: <work-dir>/sample_checkpoints_dry)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true", help="a few batches only, to check the whole pipeline")
    args = parser.parse_args()
    out_dir = args.out or (args.work_dir / "sample_checkpoints_dry" if args.dry_run else REPO / "sample_checkpoints")
    for name in [args.only] if args.only else list(SAMPLES):
        run_dir = train_sample(name, args.work_dir, args.dry_run, args.threads)
        install_sample(run_dir, out_dir / name, SAMPLES[name].get("keep_last"))
        print(f"[{name}] installed in {out_dir / name} ({size_mb(out_dir / name):.1f} MB)", flush=True)
    write_readme(out_dir)
    print(f"wrote {out_dir / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
