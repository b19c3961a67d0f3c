"""Reading checkpoint files safely: PyTorch state dicts (weights only, never arbitrary pickles) and
safetensors files (whole or header only). Finding the recurrent layers in what they hold is
analysis.trajectories.layers; unpacking uploaded zips of them, analysis.trajectories.archives.

Nothing here executes code from a file: `.pt`/`.pth` go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _load_safetensors_file

from analysis.errors import CheckpointError, UnsafeCheckpointError

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
        state = _unwrap_state_dict(read_torch_file(p, mmap=mmap), p)
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


def read_torch_file(path: str | os.PathLike, *, mmap: bool = False) -> object:
    """What a torch.save file holds, read with `torch.load(weights_only=True)` on the CPU: tensors
    and plain containers only, so nothing in the file is ever run.

    Raises CheckpointError for a missing, truncated or corrupt file (or one that is no torch.save
    output at all) and UnsafeCheckpointError for a pickle that would need to build other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
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
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        # The restricted unpickler stopped before executing anything it does not allow.
        raise UnsafeCheckpointError(
            f"{path}: refused. Loading it would require running code or building objects other "
            f"than tensors (or it is corrupt); nothing in it was run. {_SAVE_ADVICE} "
            f"Detail: {_first_line_mentioning(str(error), 'Unsupported') or error.__class__.__name__}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})."
        ) from error


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
