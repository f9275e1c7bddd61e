"""Process-wide settings, in one place: what every command line applies first, and how a run is stopped.

- The allocator (glibc's ``mallopt``; on Linux with glibc only, elsewhere nothing is changed).
  :func:`setup` stops mmap-per-allocation and heap trimming: each jitted CPU training step takes a
  scratch buffer of tens of MB, which glibc would otherwise map and unmap on every step, paying
  thousands of page faults. ``python -m emnist_jax.report`` and ``python -m emnist_jax.cnn`` both
  apply it (:func:`emnist_jax.devices.setup` calls :func:`setup`), so the CNN trains under the same
  settings in either. What it buys JAX is small and not settled; PyTorch gains clearly
  (docs/performance.md, 'CNN throughput on a CPU'). While forests grow, :func:`large_blocks_from_mmap`
  serves large blocks with mmap instead, so that a dropped tree's memory goes back.
- Stop signals: SIGTERM (``kill``, a scheduler) and SIGHUP (a closed terminal or ssh session) end a
  run like Ctrl-C (:func:`stop_signals_as_interrupt`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import signal
import sys
import threading
from collections.abc import Iterator

#: signals that stop a run like Ctrl-C: SIGTERM (kill, a scheduler) and SIGHUP (a closed terminal or ssh session)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
#: every signal that stops a run
SIGNALS = (signal.SIGINT, *STOP_SIGNALS)

#: glibc's mallopt parameters, by name
MALLOPT = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3, "M_MMAP_MAX": -4}
#: the settings :func:`setup` applies: no block from mmap, no trimming below 1 GiB of free heap
TUNED = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30}
#: glibc's own defaults, which forests need back while they grow (mmap on, trimming at 128 KiB)
GLIBC_DEFAULTS = {"M_MMAP_MAX": 65536, "M_TRIM_THRESHOLD": 128 << 10}
LARGE_BLOCK = 1 << 20                # blocks from mmap while forests grow
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # where glibc's own dynamic threshold ends up on 64-bit

_applied: dict[str, int] = {}        # what this module has set, as glibc has it now
_lock = threading.Lock()             # forests on several threads share the one process-wide setting
_large_block_users = 0
_lifted: dict[str, int] = {}         # the settings of :func:`setup` that forests have turned off for the while


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library where it is glibc (it has ``mallopt`` and ``malloc_trim``), else None. Looked up
    once: ``find_library`` runs ``ldconfig``, and forests set the allocator at every chunk of trees."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if libc.mallopt and libc.malloc_trim else None
    except (OSError, AttributeError):
        return None


def _set(settings: dict[str, int]) -> bool:
    """Apply ``settings`` (name -> value); True where glibc accepted every one."""
    libc = _glibc()
    if libc is None:
        return False
    accepted = True
    for name, value in settings.items():
        if libc.mallopt(MALLOPT[name], value):
            _applied[name] = value
        else:
            accepted = False
    return accepted


def applied() -> dict[str, int]:
    """The allocator settings this process runs with, as set here (name -> value; empty: glibc's defaults)."""
    return dict(_applied)


def tune_malloc(trim_threshold: int = TUNED["M_TRIM_THRESHOLD"]) -> bool:
    """Stop mmap-per-allocation and heap trimming; True where glibc accepted both settings."""
    return _set({"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": trim_threshold})


def setup() -> dict[str, int]:
    """The process settings every command line applies before its work; returns :func:`applied`."""
    tune_malloc()
    return applied()


@contextlib.contextmanager
def large_blocks_from_mmap() -> Iterator[None]:
    """While forests grow, serve blocks of 1 MiB and more with mmap, so that a dropped tree's memory goes back.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which
    a tree's node arrays (~2-19 MB each) and its class probabilities (7 MB) come from per-thread
    heaps that fragment: a forest grown 10 trees at a time on 35,000 x 8 pixels still held 910 MB
    resident after it was freed, the resident size growing ~50 MB per chunk. A fixed 1 MiB
    threshold keeps it at what is live. Under :func:`setup`'s settings mmap and trimming are turned
    back on for the while (and the free heap they kept is handed back first, which large blocks
    would otherwise reuse), and off again after. On exit the threshold is set to 32 MiB, the ceiling
    of glibc's own adjustment; setting it turns that adjustment off for the rest of the process, so
    later work sees a fixed 32 MiB threshold rather than glibc's moving one. Reference-counted:
    forests on several threads share it.
    """
    global _large_block_users
    with _lock:
        _large_block_users += 1
        if _large_block_users == 1:
            _lifted.update({name: _applied[name] for name in TUNED if name in _applied})
            _set({**{name: GLIBC_DEFAULTS[name] for name in _lifted}, "M_MMAP_THRESHOLD": LARGE_BLOCK})
            if _lifted:  # hand back the free heap those settings kept: large blocks come from mmap, not from it
                _glibc().malloc_trim(0)
    try:
        yield
    finally:
        with _lock:
            _large_block_users -= 1
            if _large_block_users == 0:
                _set({"M_MMAP_THRESHOLD": GLIBC_MMAP_THRESHOLD_MAX, **_lifted})
                _lifted.clear()


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt``, like Ctrl-C, inside the block.

    Off the main thread Python cannot install handlers: there signals are left alone.
    """
    def stop(signum, frame) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python, which cannot be restored
                signal.signal(signum, handler)
