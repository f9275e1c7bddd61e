"""Keep glibc from returning freed memory to the OS after every training step.

Each jitted CPU step takes a scratch buffer of tens of MB. glibc serves such sizes with
mmap and unmaps them on free, so every step pays thousands of page faults; measured on the
2-core development machine, that was about 2/3 of a batch-64 step. Raising the mmap and trim
thresholds keeps the memory in the heap for reuse. Process-wide, so only entry points call it
(the CNN command line and the report), and only on Linux with glibc; elsewhere it does nothing.
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
