"""Trajectories: the recurrent layers' parameters at a series of training steps (METHOD.md 1-2).

`load_trajectory(path)` reads either a directory written by `TrajectoryRecorder` (manifest.json
+ snapshots/) or a directory of ordinary checkpoints ordered by the step number in their file
names. `Trajectory.unit_vectors` returns each hidden unit's weight vector
    w_k(t) = concat_g [W_ih[g*H+k, :], W_hh[g*H+k, :]]
for every snapshot, reading only the rows it needs from safetensors files so that a large
trajectory can be processed a block of units at a time.
"""
from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# Layer discovery and archive extraction live with the file readers; they are part of this
# module's public interface too.
from analysis.checkpoints import (
    SAFETENSORS_SUFFIX,
    RecurrentLayerInfo,
    extract_checkpoint_archive,
    find_recurrent_layers,
    is_checkpoint_file,
    load_state_dict,
    read_safetensors_shapes,
)
from analysis.errors import CheckpointError, InvalidInputError

__all__ = [
    "RecurrentLayerInfo",
    "Trajectory",
    "extract_checkpoint_archive",
    "find_recurrent_layers",
    "load_trajectory",
    "MANIFEST_NAME",
    "SNAPSHOT_DIR",
    "FORMAT_VERSION",
    "MIN_SNAPSHOTS",
]

MANIFEST_NAME = "manifest.json"
SNAPSHOT_DIR = "snapshots"
FORMAT_VERSION = 1
MIN_SNAPSHOTS = 3
# Index lists split into more contiguous runs than this are read as one span and then picked.
_MAX_ROW_RUNS = 16


@dataclass(frozen=True)
class _Snapshot:
    step: int
    epoch: int | None
    metrics: dict
    file: Path
    # Recurrent tensors held in memory (PyTorch checkpoints); None: read lazily from safetensors.
    tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)


class Trajectory:
    """An ordered series of snapshots of a model's recurrent layers, with their metadata."""

    def __init__(self, path: Path, snapshots: Sequence[_Snapshot], layers: Sequence[RecurrentLayerInfo]):
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
        matrix = np.empty((info.gates * info.hidden_size, info.hidden_size if which == "weight_hh" else info.input_size),
                          dtype=np.float32)  # a copy: in-memory snapshots must not be mutated
        with _SnapshotReader(snapshot) as reader:
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
        runs, order, n_units = _plan_row_reads(units, info.hidden_size, info.name)
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
            with _SnapshotReader(snapshot) as reader:
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
    def _check_finite(values: np.ndarray, snapshot: _Snapshot, info: RecurrentLayerInfo) -> None:
        if not all_finite(values):
            raise CheckpointError(
                f"{snapshot.file}: layer {info.name!r} holds NaN or Inf weights at step "
                f"{snapshot.step}; the training run diverged there. Drop that snapshot (and later "
                "ones) or use a trajectory from a stable run."
            )


def all_finite(values: np.ndarray) -> bool:
    """Whether an array holds no NaN or Inf, in one read-only pass in the common case: the sum of
    finite values is finite unless it overflows, and only then is every element tested."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(values)) or np.isfinite(values).all())


# safetensors dtype names -> little-endian numpy dtypes of the float types weights come in.
_SAFETENSORS_FLOAT_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
                             "BF16": np.dtype("<u2")}  # bfloat16: its bits, widened to float32 on copy
_MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit


class _MappedSafetensors:
    """Zero-copy row access to a safetensors file: its header parsed, its data memory-mapped.

    The safetensors library copies every slice into a new tensor; reading a large trajectory a
    block of units at a time needs each row copied once, from the page cache straight into the
    caller's array. The file was validated by the safetensors library when the trajectory was
    loaded; every byte range used here is checked again against the file as it is now."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            header_bytes = int.from_bytes(head, "little")
            if header_bytes > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: corrupt safetensors header (length {header_bytes} for a "
                                      f"{size}-byte file)")
            try:
                header = json.loads(handle.read(header_bytes))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{path}: corrupt safetensors header ({error})") from error
            if not isinstance(header, dict):
                raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
            self._header, self._data_start = header, 8 + header_bytes
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._data_bytes = size - self._data_start

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere; the map closes when it goes
                pass
            self._map = None

    def rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of a 2-D tensor as a read-only view into the mapped file."""
        entry = self._header.get(key)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{self.path}: no tensor {key!r} (the file changed since loading?)")
        dtype = _SAFETENSORS_FLOAT_DTYPES.get(entry.get("dtype"))
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has dtype {entry.get('dtype')!r}; recurrent weights "
                                  f"must be F64, F32, F16 or BF16")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v >= 0 for v in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(v, int) for v in offsets)
                and 0 <= offsets[0] <= offsets[1] <= self._data_bytes
                and offsets[1] - offsets[0] == shape[0] * shape[1] * dtype.itemsize
                and 0 <= start <= stop <= shape[0]):
            raise CheckpointError(f"{self.path}: tensor {key!r} does not fit the file (truncated or changed since "
                                  f"loading?)")
        row_bytes = shape[1] * dtype.itemsize
        return np.frombuffer(self._map, dtype=dtype, count=(stop - start) * shape[1],
                             offset=self._data_start + offsets[0] + start * row_bytes).reshape(stop - start, shape[1])

    def is_bfloat16(self, key: str) -> bool:
        return self._header[key]["dtype"] == "BF16"


class _SnapshotReader:
    """Row-range copies out of one snapshot: memory-mapped for safetensors files, from memory otherwise."""

    def __init__(self, snapshot: _Snapshot):
        self._snapshot = snapshot
        self._mapped: _MappedSafetensors | None = None

    def __enter__(self) -> "_SnapshotReader":
        if self._snapshot.tensors is None:
            try:
                self._mapped = _MappedSafetensors(self._snapshot.file)
            except OSError as error:
                raise CheckpointError(
                    f"{self._snapshot.file}: cannot reopen snapshot (moved or changed since loading?): {error}"
                ) from error
        return self

    def __exit__(self, *exc) -> None:
        if self._mapped is not None:
            self._mapped.close()  # unmaps the file now rather than at collection
            self._mapped = None

    def copy_rows(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy rows start:stop of tensor `key` into `out` (converting to its dtype), in one pass."""
        if self._mapped is None:
            tensor = self._snapshot.tensors[key][start:stop]
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
                tensor = tensor.float()
            out[...] = tensor.detach().numpy()
            return
        source = self._mapped.rows(key, start, stop)
        if self._mapped.is_bfloat16(key):
            source = (source.astype(np.uint32) << 16).view(np.float32)
        out[...] = source
        del source


def _plan_row_reads(units, hidden_size: int, layer: str):
    """Turn a unit selection into contiguous row runs to read and, if needed, a reorder index."""
    if units is None:
        return [(0, hidden_size)], None, hidden_size
    if isinstance(units, slice):
        start, stop, step = units.indices(hidden_size)
        if step == 1:
            stop = max(start, stop)
            return [(start, stop)], None, stop - start
        units = range(start, stop, step)
    wanted = np.asarray(list(units) if isinstance(units, range) else units)
    if wanted.ndim != 1 or (wanted.size and wanted.dtype.kind not in "iu"):
        raise InvalidInputError(f"units must be None, a slice or a 1-D sequence of integers; got {units!r}.")
    wanted = wanted.astype(np.int64)
    if wanted.size == 0:
        return [], None, 0
    if wanted.min() < 0 or wanted.max() >= hidden_size:
        raise InvalidInputError(
            f"layer {layer!r} has {hidden_size} units; unit indices must be in [0, {hidden_size}), "
            f"got {wanted.min()}..{wanted.max()}."
        )
    unique = np.unique(wanted)
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    runs = [(int(run[0]), int(run[-1]) + 1) for run in np.split(unique, breaks)]
    if len(runs) > _MAX_ROW_RUNS:
        runs = [(int(unique[0]), int(unique[-1]) + 1)]
    # Position of each unit within the concatenated rows that will be read.
    position = np.full(int(unique[-1]) + 1, -1, dtype=np.int64)
    offset = 0
    for start, stop in runs:
        position[start:stop] = np.arange(offset, offset + stop - start)
        offset += stop - start
    order = position[wanted]
    if np.array_equal(order, np.arange(offset)):
        order = None
    return runs, order, int(wanted.size)


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
    if (root / "trajectory" / MANIFEST_NAME).is_file():
        return _load_recorded(root / "trajectory")
    return _load_checkpoint_directory(root)


def _load_recorded(root: Path) -> Trajectory:
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
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
            raise CheckpointError(f"{manifest_path}: entry {number} lacks an integer 'step' or a 'file'.")
        file = root / entry["file"]
        # A manifest may come from an uploaded archive: it must not point outside its directory.
        if Path(entry["file"]).is_absolute() or not file.resolve().is_relative_to(resolved_root):
            raise CheckpointError(f"{manifest_path}: entry {number} points outside {root}: {entry['file']!r}.")
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {manifest_path} but missing.")
        epoch = entry.get("epoch")
        metrics = entry.get("metrics") or {}
        snapshots.append(_Snapshot(
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
        snapshots.append(_Snapshot(step=int(numbers[-1]), epoch=None, metrics={}, file=file))
    snapshots.sort(key=lambda s: s.step)
    _check_steps_increase(snapshots, root)
    return _validated_trajectory(root, snapshots)


def _check_steps_increase(snapshots: Sequence[_Snapshot], source: Path) -> None:
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


def _validated_trajectory(root: Path, snapshots: list[_Snapshot]) -> Trajectory:
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
            snapshot = _Snapshot(snapshot.step, snapshot.epoch, snapshot.metrics, snapshot.file, tensors)
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
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
