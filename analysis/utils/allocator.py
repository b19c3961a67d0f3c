"""Keep freed memory in the process for reuse, so that training steps stop paying page faults.

A training step allocates and frees several (tokens x vocabulary) float32 buffers, 16 MB each for
ptb-small's batches of 400 tokens: logits, the teacher's logits, gradients. With its default
settings glibc's malloc gives such memory back to the kernel as soon as more than 32 MB lies free
at the top of the heap, and the next step asks for it again; the kernel zero-fills every page on
first touch, which costs a distillation step thousands of page faults (docs/benchmarks.md,
"Fine-tuning step cost", has the measurement).

`reuse_freed_memory()` raises malloc's mmap threshold to its maximum (32 MB: blocks up to that size
come from the heap) and its trim threshold to 1 GiB (free memory at the top of the heap is kept up to
that much). The process then holds on to its peak memory, which a training run reaches within its
first steps anyway. The call changes the whole process and lasts until it ends; it does nothing
where malloc is not glibc's (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper limit for it on 64-bit systems
TRIM_THRESHOLD_BYTES = 1 << 30

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says (once per process); True if it is in effect."""
    global _applied
    if _applied is None:
        _applied = _tune_glibc_malloc()
    return _applied


def _tune_glibc_malloc() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting the thresholds by hand also stops glibc adjusting them
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                    TRIM_THRESHOLD_BYTES))
