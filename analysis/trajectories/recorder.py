"""Logging a model's recurrent parameters during training, as a trajectory `load_trajectory` reads.

    recorder = TrajectoryRecorder(model, "runs/small/trajectory", every=100)
    for step, batch in enumerate(batches):
        ...
        recorder.maybe_record(step, epoch=epoch, metrics={"loss": loss.item()})

Layout: snapshots/step_{step:09d}.safetensors holds only the recurrent tensors (their state-dict
names); manifest.json lists the snapshots that count. Each snapshot is written atomically before
the manifest that mentions it, so a crash at any point leaves a valid trajectory of what the
manifest lists. Re-opening a directory continues its trajectory; recording a step at or before
the last recorded one (a resumed run) drops the entries from that step on.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from analysis.errors import CheckpointError, InvalidInputError
from analysis.trajectories.layers import RecurrentLayerInfo, find_recurrent_layers
from analysis.trajectories.trajectory import FORMAT_VERSION, MANIFEST_NAME, SNAPSHOT_DIR
from analysis.utils.fileio import atomic_path, atomic_write_json

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class TrajectoryRecorder:
    """Writes snapshots of `model`'s nn.LSTM / nn.GRU / nn.RNN parameters into `out_dir`."""

    def __init__(self, model: torch.nn.Module, out_dir: str | os.PathLike, every: int = 1, dtype: str = "float32"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidInputError(f"every must be a positive integer, got {every!r}.")
        if dtype not in _DTYPES:
            raise InvalidInputError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        self.model = model
        self.out_dir = Path(out_dir)
        self.every = every
        self.dtype = dtype
        parameters = dict(model.named_parameters())
        self.layers: list[RecurrentLayerInfo] = find_recurrent_layers(
            {name: tuple(p.shape) for name, p in parameters.items()}, source=type(model).__name__
        )
        self._parameters = {
            key: parameters[key] for info in self.layers for key in info.parameter_keys
        }
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidInputError(f"{self.out_dir}: exists and is not a directory.")
        self._entries: list[dict] = self._read_existing_entries()

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def steps(self) -> list[int]:
        """Steps recorded so far (including those from before a re-open)."""
        return [entry["step"] for entry in self._entries]

    def maybe_record(self, step: int, epoch: int | None = None, metrics: Mapping | None = None) -> bool:
        """Record when `step` is a multiple of `every`; return whether a snapshot was written."""
        if step % self.every != 0:
            return False
        self.record(step, epoch=epoch, metrics=metrics)
        return True

    def record(self, step: int, epoch: int | None = None, metrics: Mapping | None = None) -> None:
        """Write a snapshot of the recurrent parameters at `step`, then the updated manifest."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidInputError(f"step must be a non-negative integer, got {step!r}.")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise InvalidInputError(f"epoch must be an integer or None, got {epoch!r}.")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise InvalidInputError(f"metrics must be a mapping, got {type(metrics).__name__}.")
        if self._entries and step <= self._entries[-1]["step"]:
            self._rewind_to(step)
        relative = f"{SNAPSHOT_DIR}/step_{step:09d}.safetensors"
        with atomic_path(self.out_dir / relative) as tmp:
            save_file(self._snapshot_tensors(), str(tmp), metadata={"step": str(step)})
        self._entries.append({"step": step, "epoch": epoch, "metrics": dict(metrics or {}), "file": relative})
        self._write_manifest()

    def _snapshot_tensors(self) -> dict[str, torch.Tensor]:
        target = _DTYPES[self.dtype]
        tensors = {}
        storages = set()
        with torch.no_grad():
            for key, parameter in self._parameters.items():
                tensor = parameter.detach().to(device="cpu", dtype=target).contiguous()
                # cuDNN-flattened weights are views of one buffer, which safetensors refuses to save.
                storage = tensor.untyped_storage().data_ptr()
                if storage in storages:
                    tensor = tensor.clone()
                storages.add(storage)
                tensors[key] = tensor
        return tensors

    def _rewind_to(self, step: int) -> None:
        """Drop entries at or after `step`: manifest first, then their files (crash-safe order)."""
        dropped = [entry for entry in self._entries if entry["step"] >= step]
        self._entries = [entry for entry in self._entries if entry["step"] < step]
        self._write_manifest()
        for entry in dropped:
            (self.out_dir / entry["file"]).unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        atomic_write_json(self.manifest_path, {
            "format": "dynaprune-trajectory",
            "format_version": FORMAT_VERSION,
            "dtype": self.dtype,
            "every": self.every,
            "layers": [asdict(info) for info in self.layers],
            "entries": self._entries,
        })

    def _read_existing_entries(self) -> list[dict]:
        if not self.manifest_path.is_file():
            return []
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            entries = list(manifest["entries"])
            recorded_layers = manifest["layers"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{self.manifest_path}: cannot continue this trajectory, its manifest is unreadable "
                f"({error}); choose a new directory."
            ) from error
        if recorded_layers != [asdict(info) for info in self.layers]:
            raise CheckpointError(
                f"{self.out_dir}: holds a trajectory of a different model (other recurrent layers); "
                "choose a new directory."
            )
        if manifest.get("dtype") != self.dtype:
            raise CheckpointError(
                f"{self.out_dir}: was recorded in {manifest.get('dtype')}, not {self.dtype}; continue it "
                "with the same dtype or choose a new directory."
            )
        return entries
