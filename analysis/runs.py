"""The run-directory contract: the name of every file and folder a training run, a pruning pipeline
or a sample directory holds, and the functions that find and read them. Every other module asks
here instead of spelling a name, so the layout is stated once.

    training run   run.json, vocab.json, metrics.jsonl, checkpoint_last.pt, best.pt, trajectory/
    sample         run.json, metrics.jsonl, best.pt, trajectory/ (a finished run, shareable files only)
    pipeline       pipeline.json, metrics.jsonl, final.pt,
                   stage_<s>/ (a training run, plus plan.json and importances.json)

    for run in find_runs("runs"):
        print(run, run_kind(run), len(read_run_metrics(run)))
    stages = list_stages("runs/prune-a")          # stage_1, stage_2, ..., stage_10 (numeric order)
    model_file = resolve_model_path("runs/prune-a")  # runs/prune-a/final.pt

Imports nothing beyond analysis.errors and analysis.utils, so any module (and the dashboard) can use it.
"""
from __future__ import annotations

from pathlib import Path

from analysis.errors import CheckpointError
from analysis.utils.fileio import read_json_lines

# A training run (analysis.lm.training); a sample directory is a finished one without the first two.
RUN_FILE = "run.json"
VOCAB_FILE = "vocab.json"
LAST_CHECKPOINT_FILE = "checkpoint_last.pt"
METRICS_FILE = "metrics.jsonl"
BEST_MODEL_FILE = "best.pt"
TRAJECTORY_DIR = "trajectory"
# Inside a trajectory folder (analysis.trajectories.recorder).
MANIFEST_FILE = "manifest.json"
# A pruning pipeline (analysis.pruning.pipeline); it writes its own METRICS_FILE as well.
PIPELINE_FILE = "pipeline.json"
FINAL_MODEL_FILE = "final.pt"
STAGE_PREFIX = "stage_"
# Inside a stage folder, next to the stage's training run.
PLAN_FILE = "plan.json"
IMPORTANCE_FILE = "importances.json"

# What training writes into a run directory; starting a run again clears only these.
TRAINING_RUN_FILES = (RUN_FILE, VOCAB_FILE, METRICS_FILE, LAST_CHECKPOINT_FILE, BEST_MODEL_FILE)
RUN_KINDS = ("pipeline", "training", "sample")


def stage_path(pipeline_dir: str | Path, stage: int) -> Path:
    """The folder of stage `stage` (1-based) of a pipeline."""
    return Path(pipeline_dir) / f"{STAGE_PREFIX}{int(stage)}"


def stage_number(path: str | Path) -> int | None:
    """The stage a folder named stage_<s> stands for, or None for any other name."""
    name = Path(path).name
    digits = name[len(STAGE_PREFIX):]
    return int(digits) if name.startswith(STAGE_PREFIX) and digits.isdigit() else None


def list_stages(pipeline_dir: str | Path) -> list[Path]:
    """The stage folders of a pipeline in stage order (stage_10 after stage_2); [] if none."""
    root = Path(pipeline_dir)
    if not root.is_dir():
        return []
    stages = [p for p in root.iterdir() if p.is_dir() and stage_number(p) is not None]
    return sorted(stages, key=stage_number)


def has_trajectory(path: str | Path) -> bool:
    """Whether `path` is a recorded trajectory folder or a run directory holding one."""
    path = Path(path)
    return (path / MANIFEST_FILE).is_file() or (path / TRAJECTORY_DIR / MANIFEST_FILE).is_file()


def run_kind(run_dir: str | Path) -> str | None:
    """"pipeline" (has pipeline.json), "training" (has run.json), "sample" (has run.json and a
    model, but neither the vocabulary file nor the resumable checkpoint training always leaves) or None."""
    path = Path(run_dir)
    if (path / PIPELINE_FILE).is_file():
        return "pipeline"
    if not (path / RUN_FILE).is_file():
        return None
    if (path / BEST_MODEL_FILE).is_file() and not any((path / name).exists()
                                                      for name in (VOCAB_FILE, LAST_CHECKPOINT_FILE)):
        return "sample"
    return "training"


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Training runs, samples and pipeline outputs directly under runs_dir, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and run_kind(p)]
    return sorted(found, key=lambda p: (-_mtime(p), p.name))


def read_run_metrics(run_dir: str | Path) -> list[dict]:
    """The events of a training run's or pruning pipeline's metrics file (empty if none yet)."""
    return read_json_lines(Path(run_dir) / METRICS_FILE)


def resolve_model_path(path: str | Path) -> Path:
    """The model file `path` stands for: a file is itself; a training run or sample its best model
    (before its first epoch ends, its last checkpoint); a pipeline its final model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file or run directory")
    if not path.is_file():
        for name in (BEST_MODEL_FILE, FINAL_MODEL_FILE, LAST_CHECKPOINT_FILE):
            if (path / name).is_file():
                return path / name
        if run_kind(path) == "pipeline":
            raise CheckpointError(f"{path}: this pruning run has not finished; its model is written to "
                                  f"{FINAL_MODEL_FILE} after the last stage. Run the same command again to finish it")
        raise CheckpointError(f"{path}: run directory holds neither {BEST_MODEL_FILE} nor {LAST_CHECKPOINT_FILE} (nor "
                              f"{FINAL_MODEL_FILE}, a finished pruning run's model); "
                              f"has training finished its first epoch?")
    return path


def _mtime(path: Path) -> float:
    try:
        return max((path / name).stat().st_mtime for name in (METRICS_FILE, PIPELINE_FILE, RUN_FILE)
                   if (path / name).exists())
    except (OSError, ValueError):
        return 0.0
