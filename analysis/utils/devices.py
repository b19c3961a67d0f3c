"""Checking a --device choice before any work starts: a name torch knows, on a build and machine
that has it.

    device = checked_device("cuda:0")      # InvalidInputError with the reason on a CPU-only build
"""
from __future__ import annotations

import torch

from analysis.errors import InvalidInputError

# Device kinds a model here can train on; the others (meta, xla, ...) hold no real numbers or are untested.
_SUPPORTED = ("cpu", "cuda", "mps")


def checked_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, refused with one clear line when it is unknown or not available."""
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError, TypeError):
        raise InvalidInputError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if parsed.type not in _SUPPORTED:
        raise InvalidInputError(f"--device {device!r}: {parsed.type} devices are not supported; use cpu, cuda or mps")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InvalidInputError(f"--device {device!r}: {build}; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InvalidInputError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidInputError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    return parsed
