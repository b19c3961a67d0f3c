"""Reading checkpoint files safely: PyTorch state dicts (weights only, never arbitrary pickles) and
safetensors files (whole or header only). Finding the recurrent layers in what they hold is
analysis.trajectories.layers; unpacking uploaded zips of them, analysis.trajectories.archives.

Nothing here executes code from a file: `.pt`/`.pth` go through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as _load_safetensors_file

from analysis.errors import CheckpointError, UnsafeCheckpointError
from analysis.utils.limits import check_load_budget, human_bytes, one_line

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)

# Keys under which training scripts commonly nest the model's state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")
_ZIP_MAGIC = b"PK\x03\x04"
# How deep read_torch_file looks into nested containers for tensors to check.
_MAX_NESTING = 32
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
            shapes, dtypes = {}, {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                shapes[key], dtypes[key] = tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype())
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as error:
        raise CheckpointError(
            f"{p}: not a readable safetensors file (truncated or corrupt?): {one_line(error, 200)}"
        ) from None
    for key, dtype in dtypes.items():
        if dtype.upper().startswith("C"):
            raise CheckpointError(f"{p}: tensor {key!r} is complex-valued ({dtype}); dynaprune reads "
                                  "real-valued weights only. Save the real weights instead.")
    return shapes


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    read_safetensors_shapes(path)  # the header's byte ranges checked against the file, complex refused
    check_load_budget(path, path.stat().st_size, "the file")
    try:
        return dict(_load_safetensors_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {one_line(error, 200)}"
        ) from None


def read_torch_file(path: str | os.PathLike, *, mmap: bool = False) -> object:
    """What a torch.save file holds, read with `torch.load(weights_only=True)` on the CPU: tensors
    and plain containers only, so nothing in the file is ever run.

    Raises CheckpointError for a missing, truncated or corrupt file (or one that is no torch.save
    output at all) and UnsafeCheckpointError for a pickle that would need to build other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file." if not path.is_dir() else
                              f"{path} is a directory, not a checkpoint file.")
    with open(path, "rb") as handle:
        head = handle.read(4)
    is_zip = head == _ZIP_MAGIC
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not (is_zip or is_pickle):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({describe_file(path)}, neither a torch.save zip file nor a "
            "pickle). Check that the file is a saved state dict and was copied completely."
        )
    if is_zip:
        _check_zip_records(path, mapped=mmap)
    else:  # the whole file is read
        check_load_budget(path, path.stat().st_size, "the file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        # The restricted unpickler stopped before executing anything it does not allow.
        refused = _refused_global(str(error))
        if refused.startswith("torch.nn.modules."):
            raise UnsafeCheckpointError(
                f"{path}: refused: it holds a whole pickled model ({refused}), which only unpickling code "
                "could rebuild; nothing in it was run. Save `model.state_dict()` instead "
                "(torch.save(model.state_dict(), path)) or a safetensors file."
            ) from None
        raise UnsafeCheckpointError(
            f"{path}: refused. Loading it would require running code or building objects other "
            f"than tensors (or it is corrupt); nothing in it was run. {_SAVE_ADVICE}"
            + (f" It refers to {refused}." if refused else "")
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile, MemoryError, OverflowError) as error:
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch checkpoint ({error.__class__.__name__}: "
            f"{one_line(str(error).splitlines()[0] if str(error).strip() else 'no detail', 200)})."
        ) from None
    check_tensors(loaded, path)
    return loaded


def describe_file(path: Path) -> str:
    """What a file that is not a checkpoint looks like, for a message: empty, text, or binary."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if size == 0:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = one_line(text.splitlines()[0] if text.strip() else "", 40)
        return f"a text file of {human_bytes(size)} starting {first!r}"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return f"a {human_bytes(size)} file that looks like safetensors (name it *.safetensors)"
    return f"a binary file of {human_bytes(size)}"


def check_tensors(loaded: object, path: Path) -> None:
    """Refuse, before anything is copied, tensors that could not be weights or that declare more
    memory than their bytes: complex, non-strided (sparse, quantised) or on another device,
    views with a zero stride (expanded), views whose elements exceed their storage (overlapping),
    and a total beyond the load budget (analysis.utils.limits)."""
    total = 0
    for name, tensor in _tensors(loaded, "", 0, path):
        where = f"{path}: tensor {name or '(top level)'!r}"
        if tensor.is_complex():
            raise CheckpointError(f"{where} is complex-valued ({str(tensor.dtype).removeprefix('torch.')}); "
                                  "dynaprune reads real-valued weights only. Save the real weights instead.")
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise CheckpointError(f"{where} is not a plain dense tensor ({tensor.layout}); save dense weights.")
        if tensor.numel() == 0:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride())):
            raise CheckpointError(f"{where} of shape {tuple(tensor.shape)} is an expanded view (a zero stride) "
                                  f"declaring {human_bytes(nbytes)}; refused. Save contiguous tensors "
                                  "(tensor.contiguous()).")
        storage_bytes = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
        if nbytes > storage_bytes:
            raise CheckpointError(f"{where} of shape {tuple(tensor.shape)} declares {human_bytes(nbytes)} but its "
                                  f"storage holds {human_bytes(max(storage_bytes, 0))} (overlapping view); refused.")
        total += nbytes
    check_load_budget(path, total, "its tensors")


def _tensors(value: object, name: str, depth: int, path: Path):
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping) or isinstance(value, (list, tuple)):
        if depth >= _MAX_NESTING:
            raise CheckpointError(f"{path}: containers nested more than {_MAX_NESTING} deep; not a checkpoint.")
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            yield from _tensors(item, f"{name}.{key}" if name else str(key), depth + 1, path)


def _check_zip_records(path: Path, *, mapped: bool) -> None:
    """A torch.save zip stores its records uncompressed; declared sizes are what loading allocates."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint (not a readable zip: "
                              f"{one_line(error, 200)}).") from None
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
        raise CheckpointError(f"{path}: a zip with compressed members, not a torch.save checkpoint "
                              "(torch.save never compresses); refused.")
    if not mapped:
        check_load_budget(path, sum(info.file_size for info in infos), "its records")


def _refused_global(message: str) -> str:
    """The global torch's restricted unpickler refused (e.g. "torch.nn.modules.rnn.LSTM"), or ""."""
    match = re.search(r"GLOBAL\s+([\w.]+)", one_line(message, 100_000))
    return match.group(1) if match else ""


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
