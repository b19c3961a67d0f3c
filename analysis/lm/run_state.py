"""A training run directory between sessions: its description, the counters of where training
stands, and the resumable checkpoint (plain tensors and types only); file names in analysis.runs.
`analysis.lm.training` runs the loop; this module decides whether a directory can be resumed and
writes and restores everything an exact resume needs.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from analysis.errors import CheckpointError, InvalidInputError
from analysis.lm.model import check_plain, read_checkpoint
from analysis.lm.training_config import SETTINGS_OF_OLDER_RUNS
from analysis.runs import (
    LAST_CHECKPOINT_FILE,
    METRICS_FILE,
    RUN_FILE,
    TRAINING_RUN_FILES,
    TRAJECTORY_DIR,
    VOCAB_FILE,
    check_output_dir,
    clear_run_outputs,
)
from analysis.utils.fileio import atomic_path, atomic_write_json, atomic_write_text, read_json_object

CHECKPOINT_FORMAT = "dynaprune-train-checkpoint"
_RESUME_FREE_FIELDS = ("log_interval",)  # may change between a run and its resumption


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a run resumes exactly."""
    epoch: int = 1          # the epoch in progress (1-based)
    batch: int = 0          # the next batch of that epoch
    step: int = 0           # optimiser steps taken
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_batches: int = 0
    interval_loss_sum: float = 0.0
    interval_batches: int = 0
    test_loss: float | None = None
    finished: bool = False


@dataclass
class TrainingState:
    """What the loop carries from one batch to the next, beyond the model and optimiser."""
    progress: Progress
    hidden: object = None
    teacher_hidden: object = None
    metrics: list | None = None


def fingerprint(tensors) -> str:
    """16 hex digits of the SHA-256 of the tensors' bytes, in order; of a mapping (a state dict),
    of its names and tensors in name order, so a renamed parameter changes it too."""
    digest = hashlib.sha256()
    named = sorted(tensors.items()) if isinstance(tensors, Mapping) else ((None, tensor) for tensor in tensors)
    for name, tensor in named:
        if name is not None:
            digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def hidden_to(hidden, device):
    """The recurrent state (a tensor, or nested tuples and lists of them; None stays None) on `device`."""
    if hidden is None:
        return None
    if isinstance(hidden, torch.Tensor):
        return hidden.to(device)
    return type(hidden)(hidden_to(h, device) for h in hidden)


def describe_run(corpus, model_config, train_config: dict, initial_model, teacher) -> dict:
    """The run's description: what must match for a directory to be resumed with these arguments."""
    vocab_bytes = torch.frombuffer(bytearray("\n".join(corpus.vocab.itos).encode("utf-8")), dtype=torch.uint8)
    return {
        "format": "dynaprune-run", "format_version": 1, "model_config": model_config.to_dict(),
        "train_config": train_config, "data_source": corpus.source, "vocab_size": len(corpus.vocab),
        "data_fingerprint": fingerprint([vocab_bytes, corpus.train, corpus.valid]),
        "initial_model_sha256": None if initial_model is None else fingerprint(initial_model.state_dict().values()),
        "teacher_sha256": None if teacher is None else fingerprint(teacher.state_dict().values())}


def open_run_dir(run_dir: Path, run_info: dict, vocab_json, overwrite: bool) -> dict | None:
    """The checkpoint to resume from, if any; otherwise a cleared run directory. Either way the
    directory then holds this run's description and vocabulary."""
    checkpoint_path = run_dir / LAST_CHECKPOINT_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise InvalidInputError(f"{run_dir} is a file; choose a directory for the run")
    check_output_dir(run_dir, "training", overwrite)
    if not overwrite and (run_dir / RUN_FILE).is_file() and checkpoint_path.is_file():
        _check_resumable(run_dir, read_json_object(run_dir / RUN_FILE, "the run description",
                                                   "use another output directory or --overwrite"), run_info)
        state = read_checkpoint(checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{checkpoint_path} is not a training checkpoint; use another output directory")
    else:
        state = None
        if overwrite:  # whatever run was there (of any kind); the user's own files stay
            clear_run_outputs(run_dir)
        # only training's own files: the directory may hold other things of the user's
        for name in TRAINING_RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TRAJECTORY_DIR, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / METRICS_FILE, "")
    atomic_write_json(run_dir / RUN_FILE, run_info)
    atomic_write_json(run_dir / VOCAB_FILE, vocab_json)
    return state


def _check_resumable(run_dir: Path, stored: dict, run_info: dict) -> None:
    differences = [key for key in ("model_config", "data_fingerprint", "vocab_size", "initial_model_sha256",
                                   "teacher_sha256") if stored.get(key) != run_info[key]]
    old, new = {**SETTINGS_OF_OLDER_RUNS, **stored.get("train_config", {})}, run_info["train_config"]
    differences += [f"train_config.{key}" for key in sorted(set(old) | set(new))
                    if key not in _RESUME_FREE_FIELDS and old.get(key) != new.get(key)]
    if differences:
        raise CheckpointError(
            f"{run_dir} holds a run with different settings ({', '.join(differences)}), which cannot be "
            f"resumed with these. Choose another output directory, or pass --overwrite to start it again")


def write_checkpoint(path: Path, model, optimizer, corpus, run_info: dict, device: torch.device,
                     state: TrainingState) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "format_version": 1, "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict(), "vocab": corpus.vocab.to_json(),
        "data_source": corpus.source, "train_config": run_info["train_config"],
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "hidden": hidden_to(state.hidden, "cpu"), "teacher_hidden": hidden_to(state.teacher_hidden, "cpu"),
        "progress": asdict(state.progress), "metrics": state.metrics}
    check_plain(checkpoint, str(path))
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def restore(checkpoint: dict, run_dir: Path, model, optimizer, device: torch.device) -> TrainingState:
    """Put the model, optimiser and random generators back as they were; rewrite the metrics file
    to the checkpoint's events, since events logged after it (before a crash) will be logged again."""
    model.load_state_dict(checkpoint["model_state"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    torch.set_rng_state(checkpoint["rng_state"])
    if device.type == "cuda" and checkpoint.get("cuda_rng_state") is not None:
        torch.cuda.set_rng_state(checkpoint["cuda_rng_state"], device)
    metrics = list(checkpoint["metrics"])
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))
    return TrainingState(Progress(**checkpoint["progress"]), hidden_to(checkpoint["hidden"], device),
                         hidden_to(checkpoint["teacher_hidden"], device), metrics)
