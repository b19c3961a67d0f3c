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
    for path, kind in find_trajectories("runs"):    # runs, pipeline stages, recorded trajectories,
        print(path, kind)                           # plain folders of checkpoints

Imports nothing beyond analysis.errors and analysis.utils, so any module (and the dashboard) can use it.
"""
from __future__ import annotations

from pathlib import Path

from analysis.errors import CheckpointError, InvalidInputError
from analysis.utils.fileio import read_json_lines, remove_path

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
# What find_trajectories lists: dynaprune runs and samples, pipeline stages, TrajectoryRecorder
# output without a run (manifest.json + snapshots/, or such a trajectory/ folder) and plain checkpoint folders.
TRAJECTORY_KINDS = ("training", "sample", "stage", "recorded", "checkpoints")
# analysis.trajectories.checkpoints.CHECKPOINT_SUFFIXES and trajectory.MIN_SNAPSHOTS, spelled here so that
# listing folders needs no torch (tests/test_runs.py keeps them equal).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
MIN_CHECKPOINTS = 3
# Why a trajectory without a run cannot be evaluated, pruned or fine-tuned, and what makes it a run.
NO_MODEL_HINT = ("This trajectory has no dynaprune model. For a word language model, "
                 "`dynaprune import <folder> --data <corpus> --out runs/<name>` makes one.")


class NoModelError(CheckpointError):
    """A trajectory (recorded, or a folder of checkpoints) that is not a dynaprune run: it has no model."""
# Everything any run writes at the top of its directory (stage_<s>/ folders too): all that --overwrite removes.
RUN_OUTPUTS = (*TRAINING_RUN_FILES, TRAJECTORY_DIR, PIPELINE_FILE, FINAL_MODEL_FILE, PLAN_FILE, IMPORTANCE_FILE)
# What a directory may hold before its run's description is written (a run stopped that early, or a
# pipeline stage's plan written before the stage trains), and still be taken for a new run of that kind.
_EARLY_OUTPUTS = {"training": {METRICS_FILE, PLAN_FILE, IMPORTANCE_FILE}, "pipeline": {METRICS_FILE}}


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


def check_output_dir(out_dir: str | Path, kind: str, overwrite: bool) -> None:
    """Refuse to write a run of `kind` ("training" or "pipeline") into `out_dir` when it holds
    something else: files of the user's, another kind of run, a trajectory without its run.
    A run of the same kind is fine (it is resumed, or refused later if its settings differ);
    with `overwrite`, what runs write is cleared (clear_run_outputs) and the rest is kept."""
    from analysis.utils.runlock import LOCK_FILE

    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path} is a file; choose a directory for the run")
    if not path.is_dir() or overwrite:
        return
    found = run_kind(path)
    if found == kind:
        return
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
    if found is None and set(entries) <= _EARLY_OUTPUTS[kind]:
        return
    what = (f"a {found} run" if found else
            f"a trajectory ({TRAJECTORY_DIR}/) of another run" if TRAJECTORY_DIR in entries else
            f"other files ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})")
    raise InvalidInputError(
        f"{path} already holds {what}, not a {kind} run; choose another output directory, or pass --overwrite "
        f"to replace what a run writes there ({', '.join(RUN_OUTPUTS[:3])}, ...; other files are kept)")


def clear_run_outputs(out_dir: str | Path) -> None:
    """Remove every file and folder of the run contract (RUN_OUTPUTS, stage_<s>/) from `out_dir`;
    anything else in it is left alone."""
    path = Path(out_dir)
    if not path.is_dir():
        return
    for target in [path / name for name in RUN_OUTPUTS] + list_stages(path):
        remove_path(target)


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Training runs, samples and pipeline outputs directly under runs_dir, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and run_kind(p)]
    return sorted(found, key=lambda p: (-_mtime(p), p.name))


def trajectory_kind(path: str | Path) -> str | None:
    """What kind of trajectory the folder `path` is (TRAJECTORY_KINDS), judged by its file names
    only; None for a pipeline (its stages are the trajectories) or a folder that is no trajectory."""
    path = Path(path)
    kind = run_kind(path)
    if kind == "pipeline":
        return None
    if has_trajectory(path):
        return kind or "recorded"
    return "checkpoints" if kind is None and is_checkpoint_folder(path) else None


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether `path` holds at least MIN_CHECKPOINTS visible checkpoint files (.pt, .pth,
    .safetensors) with a step number in their names: what load_trajectory reads as a trajectory."""
    path = Path(path)
    try:
        files = [p for p in path.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES
                 and not p.name.startswith(".") and any(c.isdigit() for c in p.stem) and p.is_file()]
    except OSError:
        return False
    return len(files) >= MIN_CHECKPOINTS


def find_trajectories(root: str | Path) -> list[tuple[Path, str]]:
    """(folder, kind) of every trajectory directly under `root`, newest first: training runs and
    samples with a trajectory, each stage of a pipeline (in stage order), recorded trajectories
    without a run and plain folders of checkpoints. Only names are read, never a checkpoint."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: (-_listed_mtime(p), p.name)):
        if run_kind(folder) == "pipeline":
            found += [(stage, "stage") for stage in list_stages(folder) if has_trajectory(stage)]
        elif (kind := trajectory_kind(folder)) is not None:
            found.append((folder, kind))
    return found


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
        if run_kind(path) is None and (has_trajectory(path) or is_checkpoint_folder(path)):
            raise NoModelError(NO_MODEL_HINT)
        if run_kind(path) is None:
            raise CheckpointError(f"{path}: neither a model file nor a run directory (it holds no {BEST_MODEL_FILE}, "
                                  f"{FINAL_MODEL_FILE} or {RUN_FILE})")
        raise CheckpointError(f"{path}: run directory holds neither {BEST_MODEL_FILE} nor {LAST_CHECKPOINT_FILE} (nor "
                              f"{FINAL_MODEL_FILE}, a finished pruning run's model); "
                              f"has training finished its first epoch?")
    return path


def _listed_mtime(path: Path) -> float:
    """A run's last write (_mtime), else the folder's own modification time."""
    try:
        return _mtime(path) or path.stat().st_mtime
    except OSError:
        return 0.0


def _mtime(path: Path) -> float:
    try:
        return max((path / name).stat().st_mtime for name in (METRICS_FILE, PIPELINE_FILE, RUN_FILE)
                   if (path / name).exists())
    except (OSError, ValueError):
        return 0.0
