"""Keep glibc from returning freed memory to the OS after every training step.

Each jitted CPU step takes a scratch buffer of tens of MB. glibc serves such sizes with mmap and
unmaps them on free, so every step pays thousands of page faults. Raising the mmap and trim
thresholds keeps the memory in the heap for reuse. Process-wide, so only entry points call it:
``python -m emnist_jax.cnn`` at start, and ``benchmarks/side_by_side_cnn.py`` in its "tuned" half;
on Linux with glibc only, elsewhere it does nothing.

What it buys JAX is small and not settled (2-core development machine, all with
``benchmarks/side_by_side_cnn.py`` or the same loop): one run gave the CPU default (slices, K=4,
batch 64) 1,975 images/s with it against 1,609 without (docs/performance.md, 'CNN throughput on a CPU'); an earlier run
763 with against 800 without; an alternating probe beside other jobs (load ~4) 1,377 and 587 with,
840 and 714 without, which is noise. PyTorch gains clearly in every run (1,929 -> 2,418).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_malloc(trim_threshold: int = 1 << 30) -> bool:
    """Stop mmap-per-allocation and heap trimming; True where glibc accepted both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False
