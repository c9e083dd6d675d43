"""glibc malloc settings for CPU training (`train.malloc`).

PyTorch's CPU tensors come from the C library's malloc. glibc serves every
block above its mmap threshold (128 KB, adapting up to 32 MB) with a fresh
`mmap` and hands it back to the kernel on free, so each training step faults
its activations, gradients and logits in again page by page: on the 2-core
recipe the kernel took 10% of the training process's CPU time and 67,000-84,000
minor page faults per update (BENCHMARKS.md "Training speed"). `keep` serves
every block from the heap (no mmap) and stops glibc trimming it, so freed
memory is reused by the next step instead; the process keeps its peak memory
for life. Raising the mmap threshold alone is not enough: it cannot pass
32 MB, and the logits of a 2,000-token batch over a 6,500-piece vocabulary
are 52 MB. A CUDA run allocates through PyTorch's caching allocator, so
`auto` leaves malloc alone there.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from typing import Literal

import torch

from s2s.config import MallocMode

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
KEEP: tuple[tuple[int, int], ...] = (
    (M_MMAP_MAX, 0),  # no block mmapped, however big: all from the heap, reused
    (M_TRIM_THRESHOLD, 2**31 - 1),  # the largest an int holds: in effect, never give the heap's top back
    (M_TOP_PAD, 2**28),  # grow the heap 256 MB at a time rather than one brk per step
)


def resolve(mode: MallocMode, device: torch.device) -> Literal["keep", "system"]:
    """The setting `mode` stands for when training on `device`."""
    if mode == "auto":
        return "keep" if device.type == "cpu" else "system"
    return mode


def configure(mode: MallocMode, device: torch.device) -> bool:
    """Applies `mode` to this process's malloc; True if it changed anything.

    Process-wide and for the process's life (glibc cannot restore its adaptive threshold). `system`, and any C
    library other than glibc, leave malloc as it is.
    """
    if resolve(mode, device) == "system":
        return False
    if platform.libc_ver()[0] != "glibc":
        log.info("train.malloc=%s: not glibc (%s), malloc left as it is", mode, platform.libc_ver()[0] or "unknown")
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    failed = [param for param, value in KEEP if mallopt(param, value) != 1]
    if failed:
        log.warning("train.malloc=%s: glibc refused mallopt parameters %s", mode, failed)
    return len(failed) < len(KEEP)
