"""Reading checkpoint files safely: PyTorch state dicts (weights only, never arbitrary pickles),
safetensors files (whole or header only), zip archives of checkpoints uploaded by a user, and
finding the nn.LSTM / nn.GRU / nn.RNN layers in a state dict from its parameter names and shapes.

Nothing here executes code from a file: `.pt`/`.pth` go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _load_safetensors_file

from analysis.errors import CheckpointError, InvalidInputError, NoRecurrentLayerError, UnsafeCheckpointError

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)

# Keys under which training scripts commonly nest the model's state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")
_ZIP_MAGIC = b"PK\x03\x04"
_SAVE_ADVICE = (
    "Save a plain state dict instead (torch.save(model.state_dict(), path)) "
    "or a safetensors file (safetensors.torch.save_file(model.state_dict(), path))."
)


def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose suffix is one this module reads (.pt, .pth, .safetensors)."""
    p = Path(path)
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CHECKPOINT_SUFFIXES


def load_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint file as a flat {parameter name: tensor} dict on the CPU.

    `.pt`/`.pth`: `torch.load(weights_only=True)`; a dict nested under "state_dict", "model",
    "model_state" or "model_state_dict" is unwrapped and non-tensor values are dropped.
    `.safetensors`: read with safetensors. With `mmap=True`, zip-format PyTorch files are mapped
    rather than read, so only the tensors a caller touches are paged in.

    Raises UnsafeCheckpointError for a pickle that would need to run code, CheckpointError for
    a missing, truncated or unknown file or one without tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file.")
    suffix = p.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        state = _load_torch_file(p, mmap=mmap)
    elif suffix == SAFETENSORS_SUFFIX:
        state = _load_safetensors(p)
    else:
        raise CheckpointError(
            f"{p}: not a checkpoint file (expected {', '.join(CHECKPOINT_SUFFIXES)})."
        )
    if not state:
        raise CheckpointError(f"{p}: holds no tensors; expected a model state dict.")
    return state


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header without loading data.

    A truncated or corrupt file raises CheckpointError naming it (safetensors checks that the
    header's byte ranges cover the file exactly).
    """
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{p}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(_load_safetensors_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def _load_torch_file(path: Path, *, mmap: bool) -> dict[str, torch.Tensor]:
    with open(path, "rb") as handle:
        head = handle.read(4)
    is_zip = head == _ZIP_MAGIC
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not (is_zip or is_pickle):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a torch.save zip file nor a pickle). "
            "Check that the file is a saved state dict and was copied completely."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        # The restricted unpickler stopped before executing anything it does not allow.
        raise UnsafeCheckpointError(
            f"{path}: refused. Loading it would require running code or building objects other "
            f"than tensors (or it is corrupt); nothing in it was run. {_SAVE_ADVICE} "
            f"Detail: {_first_line_mentioning(str(error), 'Unsupported') or error.__class__.__name__}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})."
        ) from error
    return _unwrap_state_dict(loaded, path)


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, torch.Tensor) or not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict. {_SAVE_ADVICE}"
        )
    state: Mapping = loaded
    # Descend through wrappers like {"model": {"state_dict": {...}}, "epoch": 3}.
    for _ in range(4):
        nested = next(
            (state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None
        )
        if nested is None:
            break
        state = nested
    return {
        str(key): value.detach()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }


def _first_line_mentioning(text: str, word: str) -> str:
    return next((line.strip() for line in text.splitlines() if word in line), "")


# --------------------------------------------------------------------------- recurrent layers

_GATES_TO_KIND = {4: "LSTM", 3: "GRU", 1: "RNN"}
_WEIGHT_HH = re.compile(r"^(?:(?P<prefix>.*)\.)?weight_hh_l(?P<index>\d+)(?P<reverse>_reverse)?$")


@dataclass(frozen=True)
class RecurrentLayerInfo:
    """One direction of one layer of an nn.LSTM / nn.GRU / nn.RNN, located in a state dict.

    `name` is the module prefix + ".l{index}" (+ "_reverse"), e.g. "rnn.l0", "rnns.1.l0_reverse";
    just "l0" for a bare module's state dict. Hidden unit k owns rows {g*H + k : g < gates}.
    """

    name: str
    prefix: str
    index: int
    reverse: bool
    kind: str
    gates: int
    input_size: int
    hidden_size: int
    weight_ih_key: str
    weight_hh_key: str
    bias_ih_key: str | None
    bias_hh_key: str | None

    @property
    def unit_dim(self) -> int:
        """Length d = G*(D+H) of a unit's weight vector (METHOD.md section 2)."""
        return self.gates * (self.input_size + self.hidden_size)

    @property
    def weight_ih_shape(self) -> tuple[int, int]:
        return (self.gates * self.hidden_size, self.input_size)

    @property
    def weight_hh_shape(self) -> tuple[int, int]:
        return (self.gates * self.hidden_size, self.hidden_size)

    @property
    def has_bias(self) -> bool:
        return self.bias_ih_key is not None

    @property
    def parameter_keys(self) -> list[str]:
        keys = [self.weight_ih_key, self.weight_hh_key, self.bias_ih_key, self.bias_hh_key]
        return [key for key in keys if key is not None]


def find_recurrent_layers(
    shapes: Mapping[str, tuple | torch.Size], source: str | None = None
) -> list[RecurrentLayerInfo]:
    """Recurrent layers in a {parameter name: shape} mapping, ordered by module prefix (numbers
    compared as numbers), then layer index, forward before reverse.

    Raises CheckpointError for layouts this project does not handle (LSTM proj_size, missing or
    misshapen partner tensors) and NoRecurrentLayerError when there is no recurrent layer;
    `source` (a file name) is put in front of the messages.
    """
    where = f"{source}: " if source else ""
    layers = []
    for key, shape in shapes.items():
        match = _WEIGHT_HH.match(key)
        if match is None:
            continue
        prefix, index, reverse = match["prefix"] or "", int(match["index"]), bool(match["reverse"])
        dot = f"{prefix}." if prefix else ""
        suffix = f"_l{index}{'_reverse' if reverse else ''}"
        name = f"{dot}l{index}{'_reverse' if reverse else ''}"
        if f"{dot}weight_hr{suffix}" in shapes:
            raise CheckpointError(
                f"{where}layer {name!r} is an LSTM with proj_size (has weight_hr{suffix}); "
                "projected LSTMs are not supported."
            )
        hh = tuple(shape)
        if len(hh) != 2 or hh[1] == 0 or hh[0] % hh[1] or hh[0] // hh[1] not in _GATES_TO_KIND:
            raise CheckpointError(
                f"{where}layer {name!r}: weight_hh shape {hh} is not (G*H, H) with G = 4 (LSTM), "
                "3 (GRU) or 1 (RNN); this layout (e.g. LSTM proj_size) is not supported."
            )
        hidden, gates = hh[1], hh[0] // hh[1]
        ih_key = f"{dot}weight_ih{suffix}"
        if ih_key not in shapes:
            raise CheckpointError(f"{where}layer {name!r} has {key} but no {ih_key}.")
        ih = tuple(shapes[ih_key])
        if len(ih) != 2 or ih[0] != hh[0]:
            raise CheckpointError(f"{where}layer {name!r}: {ih_key} has shape {ih}, expected ({hh[0]}, D).")
        bias_keys = [f"{dot}bias_ih{suffix}", f"{dot}bias_hh{suffix}"]
        present = [k in shapes for k in bias_keys]
        if any(present) and not all(present):
            raise CheckpointError(f"{where}layer {name!r} has only one of {bias_keys}.")
        for bias_key in bias_keys if all(present) else []:
            if tuple(shapes[bias_key]) != (hh[0],):
                raise CheckpointError(
                    f"{where}layer {name!r}: {bias_key} has shape {tuple(shapes[bias_key])}, expected ({hh[0]},)."
                )
        layers.append(RecurrentLayerInfo(
            name=name, prefix=prefix, index=index, reverse=reverse,
            kind=_GATES_TO_KIND[gates], gates=gates, input_size=ih[1], hidden_size=hidden,
            weight_ih_key=ih_key, weight_hh_key=key,
            bias_ih_key=bias_keys[0] if all(present) else None,
            bias_hh_key=bias_keys[1] if all(present) else None,
        ))
    if not layers:
        seen = ", ".join(list(shapes)[:6]) or "no tensors"
        raise NoRecurrentLayerError(
            f"{where}no nn.LSTM, nn.GRU or nn.RNN parameters (weight_hh_l<k>) found; saw {seen}"
            f"{', ...' if len(shapes) > 6 else ''}."
        )
    return sorted(layers, key=lambda info: (_natural_key(info.prefix), info.index, info.reverse))


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


# --------------------------------------------------------------------------- zip archives

DEFAULT_MAX_ARCHIVE_BYTES = 8 * 1024**3
DEFAULT_MAX_ARCHIVE_FILES = 2000
_ARCHIVE_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".json")
# Bookkeeping that archivers add on their own; skipped rather than refused.
_ARCHIVE_NOISE = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")
_COPY_CHUNK = 1024 * 1024


def extract_checkpoint_archive(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_files: int = DEFAULT_MAX_ARCHIVE_FILES,
) -> Path:
    """Safely unpack a zip of checkpoints into a new folder inside `dest_dir`; return that folder.

    The archive's layout is kept, except that one top-level folder enclosing every member is
    stripped, so both a zipped folder of checkpoints and a zipped TrajectoryRecorder directory
    (manifest.json + snapshots/) come out ready for `load_trajectory`. The folder is named
    after the archive (with -2, -3, ... when taken).

    Refused with InvalidInputError, before anything is written: absolute paths, `..`
    components, symlinks, members other than .pt/.pth/.safetensors/.json, more than
    `max_files` members or more than `max_total_bytes` uncompressed. Extraction goes to a
    hidden temporary folder that is renamed into place only when complete; on any failure it
    is removed, so nothing half-written is left behind.
    """
    archive_path = Path(zip_path)
    destination = Path(dest_dir)
    if not archive_path.is_file():
        raise InvalidInputError(f"{archive_path}: no such archive.")
    destination.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InvalidInputError(f"{archive_path}: not a readable zip archive ({error}).") from error
    with archive:
        members = _checked_members(archive, archive_path, max_total_bytes, max_files)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-extract-", dir=destination))
        try:
            written = 0
            for info, relative in members:
                target = staging.joinpath(*relative.parts)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    sink = open(target, "xb")
                except OSError as error:
                    raise InvalidInputError(
                        f"{archive_path}: cannot unpack member {info.filename!r} ({error})."
                    ) from error
                with archive.open(info) as source, sink:
                    while chunk := source.read(_COPY_CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:  # declared sizes can lie
                            raise InvalidInputError(
                                f"{archive_path}: unpacks to more than {max_total_bytes} bytes; refused."
                            )
                        sink.write(chunk)
            return _rename_into_place(staging, destination, archive_path.stem)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as error:
            # RuntimeError: encrypted member; NotImplementedError: unsupported compression.
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidInputError(
                f"{archive_path}: cannot unpack (corrupt, encrypted or unsupported compression: {error})."
            ) from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _checked_members(
    archive: zipfile.ZipFile, archive_path: Path, max_total_bytes: int, max_files: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    total = 0
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or _ARCHIVE_NOISE.search(name):
            continue
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise InvalidInputError(f"{archive_path}: member {name!r} has an absolute path; refused.")
        relative = PurePosixPath(name.replace("\\", "/"))
        if any(part == ".." for part in relative.parts):
            raise InvalidInputError(f"{archive_path}: member {name!r} points outside the archive (..); refused.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInputError(f"{archive_path}: member {name!r} is a symbolic link; refused.")
        if relative.suffix.lower() not in _ARCHIVE_SUFFIXES:
            raise InvalidInputError(
                f"{archive_path}: member {name!r} is not a checkpoint; the archive may hold only "
                f"{', '.join(_ARCHIVE_SUFFIXES)} files."
            )
        total += info.file_size
        members.append((info, relative))
        if len(members) > max_files:
            raise InvalidInputError(f"{archive_path}: holds more than {max_files} files; refused.")
        if total > max_total_bytes:
            raise InvalidInputError(
                f"{archive_path}: unpacks to more than {max_total_bytes} bytes; refused. "
                "Upload fewer or smaller checkpoints."
            )
    if not any(relative.suffix.lower() in CHECKPOINT_SUFFIXES for _, relative in members):
        raise InvalidInputError(f"{archive_path}: holds no .pt, .pth or .safetensors files.")
    tops = {relative.parts[0] for _, relative in members}
    if len(tops) == 1 and all(len(relative.parts) > 1 for _, relative in members):
        members = [(info, PurePosixPath(*relative.parts[1:])) for info, relative in members]
    seen: set[str] = set()
    for _, relative in members:
        if str(relative) in seen:
            raise InvalidInputError(f"{archive_path}: member {str(relative)!r} appears twice; refused.")
        seen.add(str(relative))
    return members


def _rename_into_place(staging: Path, destination: Path, stem: str) -> Path:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "checkpoints"
    for attempt in range(1, 1000):
        target = destination / (base if attempt == 1 else f"{base}-{attempt}")
        if target.exists():
            continue
        try:
            os.rename(staging, target)
        except OSError:
            continue  # created meanwhile by someone else
        return target
    raise InvalidInputError(f"{destination}: too many folders named {base}-N; clean it up first.")
