"""Trajectories: the recurrent layers' parameters at a series of training steps (METHOD.md 1-2).

`load_trajectory(path)` reads either a directory written by `TrajectoryRecorder` (manifest.json
+ snapshots/) or a directory of ordinary checkpoints ordered by the step number in their file
names. `Trajectory.unit_vectors` returns each hidden unit's weight vector
    w_k(t) = concat_g [W_ih[g*H+k, :], W_hh[g*H+k, :]]
for every snapshot, reading only the rows it needs from safetensors files (analysis.trajectories.snapshot_rows)
so that a large trajectory can be processed a block of units at a time.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis.errors import CheckpointError, InvalidInputError
from analysis.runs import MANIFEST_FILE, TRAJECTORY_DIR
from analysis.trajectories.checkpoints import (
    SAFETENSORS_SUFFIX,
    is_checkpoint_file,
    load_state_dict,
    read_safetensors_shapes,
)
from analysis.trajectories.layers import RecurrentLayerInfo, find_recurrent_layers
from analysis.trajectories.snapshot_rows import Snapshot, SnapshotReader, all_finite, plan_row_reads

__all__ = [
    "Trajectory",
    "load_trajectory",
    "MANIFEST_NAME",
    "SNAPSHOT_DIR",
    "FORMAT_VERSION",
    "MIN_SNAPSHOTS",
]

MANIFEST_NAME = MANIFEST_FILE  # named in analysis.runs, which the dashboard and run readers share
SNAPSHOT_DIR = "snapshots"
FORMAT_VERSION = 1
MIN_SNAPSHOTS = 3
MAX_STEP = 2**63 - 1  # steps are kept as int64


class Trajectory:
    """An ordered series of snapshots of a model's recurrent layers, with their metadata."""

    def __init__(self, path: Path, snapshots: Sequence[Snapshot], layers: Sequence[RecurrentLayerInfo]):
        self.path = Path(path)
        self._snapshots = list(snapshots)
        self._layers = {info.name: info for info in layers}

    def __len__(self) -> int:
        return len(self._snapshots)

    def __repr__(self) -> str:
        return f"Trajectory({str(self.path)!r}, snapshots={len(self)}, layers={self.layers})"

    @property
    def steps(self) -> np.ndarray:
        return np.array([s.step for s in self._snapshots], dtype=np.int64)

    @property
    def epochs(self) -> list[int | None]:
        return [s.epoch for s in self._snapshots]

    @property
    def metrics(self) -> list[dict]:
        return [dict(s.metrics) for s in self._snapshots]

    @property
    def files(self) -> list[Path]:
        return [s.file for s in self._snapshots]

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    def layer_info(self, layer: str) -> RecurrentLayerInfo:
        try:
            return self._layers[layer]
        except KeyError:
            raise InvalidInputError(
                f"{self.path}: no recurrent layer {layer!r}; layers are {self.layers}."
            ) from None

    def unit_vectors(self, layer: str, units=None, dtype=np.float32) -> np.ndarray:
        """Unit weight vectors over time, shape (T, n_units, d) with d = G*(D+H).

        `units`: None for all H units, a slice, or a sequence of unit indices (any order,
        repeats allowed). Safetensors snapshots are read a row block at a time, so memory
        stays proportional to the units asked for.
        """
        return self._read_unit_vectors(self.layer_info(layer), range(len(self)), units, dtype)

    def read_unit_vectors_into(self, layer: str, out: np.ndarray, units=None, check_finite: bool = True) -> np.ndarray:
        """unit_vectors(layer, units) written into a caller's array `out` of shape (T, n_units, d)
        (any float dtype), so that a loop over unit blocks can reuse one buffer. check_finite=False
        skips the NaN/Inf test, for callers that catch bad values later themselves."""
        return self._read_unit_vectors(self.layer_info(layer), range(len(self)), units, out.dtype, out=out,
                                       check_finite=check_finite)

    def final_unit_vectors(self, layer: str, dtype=np.float32) -> np.ndarray:
        """Every unit's weight vector at the last snapshot, shape (H, d)."""
        return self._read_unit_vectors(self.layer_info(layer), [len(self) - 1], None, dtype)[0]

    def weight_matrix(self, layer: str, snapshot_index: int, which: str = "weight_hh") -> np.ndarray:
        """One full parameter matrix ("weight_hh" or "weight_ih") of one snapshot, as float32."""
        info = self.layer_info(layer)
        if which not in ("weight_hh", "weight_ih"):
            raise InvalidInputError(f"which must be 'weight_hh' or 'weight_ih', got {which!r}.")
        if not -len(self) <= snapshot_index < len(self):
            raise InvalidInputError(
                f"snapshot_index {snapshot_index} is out of range for {len(self)} snapshots."
            )
        snapshot = self._snapshots[snapshot_index]
        key = info.weight_ih_key if which == "weight_ih" else info.weight_hh_key
        matrix = np.empty((info.gates * info.hidden_size,
                           info.hidden_size if which == "weight_hh" else info.input_size),
                          dtype=np.float32)  # a copy: in-memory snapshots must not be mutated
        with SnapshotReader(snapshot) as reader:
            reader.copy_rows(key, 0, matrix.shape[0], matrix)
        self._check_finite(matrix, snapshot, info)
        return matrix

    # ----------------------------------------------------------------- reading unit rows

    def _read_unit_vectors(self, info: RecurrentLayerInfo, snapshot_indices, units, dtype, *,
                           out: np.ndarray | None = None, check_finite: bool = True) -> np.ndarray:
        """Read unit rows of the given snapshots into `out` (T, n_units, d), allocated if None.

        Each row is copied once, straight from the mapped file into its place in `out`.
        check_finite=False skips the NaN/Inf test, for callers that detect bad values later (and
        read again with the test to name the file)."""
        runs, order, n_units = plan_row_reads(units, info.hidden_size, info.name)
        D, H, G = info.input_size, info.hidden_size, info.gates
        indices = list(snapshot_indices)
        shape = (len(indices), n_units, info.unit_dim)
        if out is None:
            out = np.empty(shape, dtype=dtype)
        elif out.shape != shape:
            raise InvalidInputError(f"out has shape {out.shape}; reading needs {shape}")
        if n_units == 0:
            return out
        n_read = sum(stop - start for start, stop in runs)
        scratch = None if order is None else np.empty((n_read, info.unit_dim), dtype=out.dtype)
        for t, snapshot_index in enumerate(indices):
            snapshot = self._snapshots[snapshot_index]
            rows_out = out[t] if scratch is None else scratch
            offset = 0
            with SnapshotReader(snapshot) as reader:
                for start, stop in runs:
                    block = slice(offset, offset + stop - start)
                    for g in range(G):
                        column = g * (D + H)
                        reader.copy_rows(info.weight_ih_key, g * H + start, g * H + stop,
                                         rows_out[block, column:column + D])
                        reader.copy_rows(info.weight_hh_key, g * H + start, g * H + stop,
                                         rows_out[block, column + D:column + D + H])
                    offset += stop - start
            if check_finite:
                self._check_finite(rows_out, snapshot, info)
            if scratch is not None:
                np.take(scratch, order, axis=0, out=out[t])
        return out

    @staticmethod
    def _check_finite(values: np.ndarray, snapshot: Snapshot, info: RecurrentLayerInfo) -> None:
        if not all_finite(values):
            raise CheckpointError(
                f"{snapshot.file}: layer {info.name!r} holds NaN or Inf weights at step "
                f"{snapshot.step}; the training run diverged there. Drop that snapshot (and later "
                "ones) or use a trajectory from a stable run."
            )


# ------------------------------------------------------------------------- loading


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """Load a trajectory from a TrajectoryRecorder directory, a run directory holding one in
    `trajectory/`, or a directory of checkpoints (*.pt, *.pth, *.safetensors) ordered by the
    last integer in each file name. Never runs code from a file.

    Raises CheckpointError (naming the file or layer) for a missing or empty directory, fewer
    than 3 snapshots, files that are not checkpoints or are truncated, duplicate steps,
    snapshots whose recurrent layers disagree, and NoRecurrentLayerError without recurrent layers.
    """
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: no such directory.")
    if root.is_file():
        if root.name != MANIFEST_NAME:
            raise CheckpointError(
                f"{root} is a file; give the directory that holds the checkpoints or the trajectory "
                f"({MANIFEST_NAME} + {SNAPSHOT_DIR}/)."
            )
        root = root.parent
    if (root / MANIFEST_NAME).is_file():
        return _load_recorded(root)
    if (root / TRAJECTORY_DIR / MANIFEST_NAME).is_file():
        return _load_recorded(root / TRAJECTORY_DIR)
    return _load_checkpoint_directory(root)


def _load_recorded(root: Path) -> Trajectory:
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable trajectory manifest ({error}).") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        raise CheckpointError(f"{manifest_path}: not a trajectory manifest (no 'entries' list).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: format version {version!r} is not one this version reads "
            f"(<= {FORMAT_VERSION}); update dynaprune."
        )
    resolved_root = root.resolve()
    snapshots = []
    for number, entry in enumerate(manifest["entries"]):
        if not isinstance(entry, dict) or not _is_step(entry.get("step")) or not isinstance(entry.get("file"), str):
            raise CheckpointError(f"{manifest_path}: entry {number} lacks an integer 'step' (0 to 2^63 - 1) "
                                  f"or a 'file'.")
        file = root / entry["file"]
        # A manifest may come from an uploaded archive: it must not point outside its directory.
        if Path(entry["file"]).is_absolute() or not file.resolve().is_relative_to(resolved_root):
            raise CheckpointError(f"{manifest_path}: entry {number} points outside {root}: {entry['file']!r}.")
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {manifest_path} but missing.")
        epoch = entry.get("epoch")
        metrics = entry.get("metrics") or {}
        snapshots.append(Snapshot(
            step=int(entry["step"]),
            epoch=epoch if _is_step(epoch) else None,
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            file=file,
        ))
    _check_steps_increase(snapshots, manifest_path)
    return _validated_trajectory(root, snapshots)


def _load_checkpoint_directory(root: Path) -> Trajectory:
    try:
        entries = sorted(root.iterdir())
    except OSError as error:
        raise CheckpointError(f"{root}: cannot list directory ({error}).") from error
    files = [p for p in entries if is_checkpoint_file(p)]
    if not files:
        seen = ", ".join(p.name for p in entries[:5] if not p.name.startswith("."))
        raise CheckpointError(
            f"{root}: " + (f"no checkpoints (*.pt, *.pth, *.safetensors) or {MANIFEST_NAME}; found {seen}"
                           if seen else "empty directory; expected checkpoints or a recorded trajectory") + "."
        )
    snapshots = []
    for file in files:
        numbers = re.findall(r"\d+", file.stem)
        if not numbers:
            raise CheckpointError(
                f"{file}: file name has no step number; name checkpoints like ckpt_1200.pt so they "
                "can be ordered by training step."
            )
        digits = numbers[-1].lstrip("0") or "0"
        if len(digits) > len(str(MAX_STEP)) or int(digits) > MAX_STEP:
            raise CheckpointError(
                f"{file}: step number {digits[:30]}{'...' if len(digits) > 30 else ''} in the file name is "
                f"larger than 2^63 - 1; rename the file with its real training step."
            )
        snapshots.append(Snapshot(step=int(digits), epoch=None, metrics={}, file=file))
    snapshots.sort(key=lambda s: s.step)
    _check_steps_increase(snapshots, root)
    return _validated_trajectory(root, snapshots)


def _check_steps_increase(snapshots: Sequence[Snapshot], source: Path) -> None:
    for previous, current in zip(snapshots, snapshots[1:]):
        if current.step == previous.step:
            raise CheckpointError(
                f"{source}: {previous.file.name} and {current.file.name} both have step {current.step}; "
                "each snapshot needs its own step."
            )
        if current.step < previous.step:
            raise CheckpointError(f"{source}: steps are not increasing ({previous.step} then {current.step}).")
    if len(snapshots) < MIN_SNAPSHOTS:
        raise CheckpointError(
            f"{source}: need at least {MIN_SNAPSHOTS} snapshots to follow weights over training; "
            f"found {len(snapshots)}."
        )


def _validated_trajectory(root: Path, snapshots: list[Snapshot]) -> Trajectory:
    """Check every snapshot against the first one and keep only recurrent tensors of .pt files."""
    reference: dict[str, RecurrentLayerInfo] | None = None
    reference_file = None
    checked = []
    for snapshot in snapshots:
        if snapshot.file.suffix.lower() == SAFETENSORS_SUFFIX:
            shapes, tensors = read_safetensors_shapes(snapshot.file), None
        else:
            state = load_state_dict(snapshot.file, mmap=True)
            shapes, tensors = {key: tuple(value.shape) for key, value in state.items()}, state
        layers = {info.name: info for info in find_recurrent_layers(shapes, source=str(snapshot.file))}
        if reference is None:
            reference, reference_file = layers, snapshot.file
        else:
            _check_same_layers(layers, snapshot.file, reference, reference_file)
        if tensors is not None:
            # Copy out only the recurrent tensors; the rest of the checkpoint is dropped.
            keys = [key for info in layers.values() for key in info.parameter_keys]
            tensors = {key: tensors[key].clone() for key in keys}
            snapshot = Snapshot(snapshot.step, snapshot.epoch, snapshot.metrics, snapshot.file, tensors)
        checked.append(snapshot)
    return Trajectory(root, checked, list(reference.values()))


def _check_same_layers(layers, file, reference, reference_file) -> None:
    for name in reference.keys() - layers.keys():
        raise CheckpointError(
            f"{file}: has no recurrent layer {name!r}, which {reference_file.name} has; all snapshots "
            "must come from the same model."
        )
    for name in layers.keys() - reference.keys():
        raise CheckpointError(
            f"{file}: has recurrent layer {name!r}, which {reference_file.name} lacks; all snapshots "
            "must come from the same model."
        )
    for name, info in layers.items():
        expected = reference[name]
        for part, shape, expected_shape in (
            ("weight_ih", info.weight_ih_shape, expected.weight_ih_shape),
            ("weight_hh", info.weight_hh_shape, expected.weight_hh_shape),
            ("biases", info.has_bias, expected.has_bias),
        ):
            if shape != expected_shape:
                raise CheckpointError(
                    f"{file}: layer {name!r} {part} is {shape}, but in {reference_file.name} it is "
                    f"{expected_shape}; all snapshots must come from the same model."
                )


def _is_step(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STEP
