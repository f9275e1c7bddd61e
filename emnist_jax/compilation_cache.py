"""JAX's persistent compilation cache, kept in the package's private cache folder: a second process
with the same configuration loads its compiled programs instead of compiling them again.

``$EMNIST_JAX_COMPILATION_CACHE`` moves the folder (default ``~/.cache/emnist_jax/jax``); ``0``
or ``off`` turns the cache off, as the command lines' ``--no-compilation-cache`` does. A cached
program is machine code that the process runs, so the folder gets the rules of every folder the
program makes for itself (:mod:`emnist_jax.private`): created 0700, and never used when another
user owns it or others may write it (one warning line, then the run compiles without a cache).
Every program is cached, however quick its compilation: the CPU's programs compile in well under
JAX's default threshold of one second, and a run has dozens of them.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter

from emnist_jax.private import UntrustedPath, private_folder

VARIABLE = "EMNIST_JAX_COMPILATION_CACHE"
_OFF = ("0", "off")
#: Counts of JAX's compilation-cache events in this process ("cache_hits", "cache_misses").
EVENTS: Counter = Counter()
_listening = False


class CompilationCacheWarning(UserWarning):
    """The compilation cache cannot be used; the run compiles without it. One line."""


def default_folder() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "emnist_jax", "jax")


def folder() -> str | None:
    """The cache folder this process should use, or None where the cache is turned off."""
    value = os.environ.get(VARIABLE, "")
    if value.strip().lower() in _OFF:
        return None
    return value or default_folder()


def _count(name: str, **_) -> None:
    prefix = "/jax/compilation_cache/"
    if name.startswith(prefix):
        EVENTS[name[len(prefix):]] += 1


def enable(path: str | None = None) -> str | None:
    """Turn the persistent cache on in ``path`` (default :func:`folder`); returns the folder used,
    or None where it is off or cannot be trusted (then with a one-line warning). Call before the
    first compilation."""
    global _listening
    path = path or folder()
    if path is None:
        return None
    try:
        path = str(private_folder(path))
    except (UntrustedPath, OSError) as error:
        reason = str(error) if isinstance(error, UntrustedPath) else f"{path}: {error.strerror or error}"
        warnings.warn(f"the compilation cache {reason}; compiling without it ({VARIABLE}=0 turns it off)",
                      CompilationCacheWarning, stacklevel=2)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _listening:
        jax.monitoring.register_event_listener(_count)
        _listening = True
    return path


def disable() -> None:
    """Compile without the persistent cache in this process (``--no-compilation-cache``)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", None)
