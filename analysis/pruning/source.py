"""What a pruning pipeline starts from: a training run or sample directory, a finished pipeline's
output, or a bare model file, resolved to the model, the trajectory its weights followed, its
corpus and the settings it was trained with.

    source = resolve_source("sample_checkpoints/synthetic")
    source.model, source.trajectory_dir, source.data_source
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import InvalidInputError
from analysis.lm.model import RNNLanguageModel, load_model
from analysis.runs import FINAL_MODEL_FILE, PIPELINE_FILE, RUN_FILE, TRAJECTORY_DIR, list_stages
from analysis.utils.fileio import read_json_object

READ_REMEDY = "use another output directory or --overwrite"  # for a JSON file of a run that cannot be read


@dataclass
class PipelineSource:
    """What the pipeline starts from: the model, its trajectory, its corpus and training settings."""
    path: Path
    model: RNNLanguageModel
    model_path: Path
    trajectory_dir: Path | None
    data_source: str | None
    train_config: dict
    vocab: Any


def resolve_source(path: str | Path) -> PipelineSource:
    """A training run directory, a sample directory (same layout), a pipeline output (its final
    model and last stage's trajectory) or a model file (the trajectory of its directory, if any)."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such run directory or checkpoint")
    root = path if path.is_dir() else path.parent
    trajectory_dir = root if (root / TRAJECTORY_DIR).is_dir() else None
    if path.is_dir() and (path / PIPELINE_FILE).is_file():  # its last stage trained the final model
        stages = list_stages(path)
        if not (path / FINAL_MODEL_FILE).is_file() or not stages:
            raise InvalidInputError(
                f"{path}: this pruning run has not finished; finish it before pruning its result further")
        root = trajectory_dir = stages[-1]
    model, info = load_model(path)
    run_info = (read_json_object(root / RUN_FILE, "the run description", READ_REMEDY) if (root / RUN_FILE).is_file()
                else {})
    train_config = run_info.get("train_config") or info.get("train_config") or {}
    return PipelineSource(path=path, model=model.train(), model_path=Path(info["path"]), trajectory_dir=trajectory_dir,
                          data_source=info.get("data_source") or run_info.get("data_source"),
                          train_config=dict(train_config), vocab=info.get("vocab"))
