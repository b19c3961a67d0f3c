"""Row-level reading of trajectory snapshots: zero-copy row access to safetensors snapshot files
(memory-mapped, each row copied once straight into the caller's array) and to snapshots held in
memory, and the planning that turns a selection of units into a few contiguous row runs to read.
`analysis.trajectories.trajectory` builds unit weight vectors out of these rows.
"""
from __future__ import annotations

import json
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.errors import CheckpointError, InvalidInputError

# Index lists split into more contiguous runs than this are read as one span and then picked.
_MAX_ROW_RUNS = 16


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a trajectory: its training step, epoch, metrics and file."""
    step: int
    epoch: int | None
    metrics: dict
    file: Path
    # Recurrent tensors held in memory (PyTorch checkpoints); None: read lazily from safetensors.
    tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)


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
            except (ValueError, RecursionError) as error:
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


class SnapshotReader:
    """Row-range copies out of one snapshot: memory-mapped for safetensors files, from memory otherwise."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot
        self._mapped: _MappedSafetensors | None = None

    def __enter__(self) -> SnapshotReader:
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


def plan_row_reads(units, hidden_size: int, layer: str):
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
