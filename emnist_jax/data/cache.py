"""On-disk cache of converted arrays, so a second ``load`` of the same file is fast.

Entries live in ``$EMNIST_JAX_CACHE`` (default ``~/.cache/emnist_jax``) as uncompressed ``.npz``
files keyed by the source files' path, size and modification time: editing or replacing a
source file changes the key. An entry that cannot be read back whole (zip CRCs are checked on
read) is deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

#: Bump when the stored arrays' meaning changes.
CACHE_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "file_labels", "synthetic")


def cache_dir() -> Path:
    """The cache folder: ``$EMNIST_JAX_CACHE`` or ``~/.cache/emnist_jax``."""
    return Path(os.environ.get("EMNIST_JAX_CACHE") or Path.home() / ".cache" / "emnist_jax")


def fingerprint(paths: list[str], split: str) -> str:
    """A key that changes whenever any of ``paths`` is replaced or modified."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{split}".encode())
    for path in sorted(paths):
        stat = os.stat(path)
        digest.update(f"|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _entry(key: str) -> Path:
    return cache_dir() / f"arrays-{key}.npz"


def read(key: str) -> dict[str, np.ndarray] | None:
    """The cached arrays for ``key``, or None (also after deleting an unreadable entry)."""
    path = _entry(key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            arrays = {name: entry[name] for name in ARRAYS}
        if len(arrays["train_images"]) != len(arrays["train_labels"]) or \
                len(arrays["test_images"]) != len(arrays["test_labels"]):
            raise ValueError("inconsistent lengths")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)
        return None


def write(key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``key`` atomically; a cache that cannot be written is skipped."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **{name: arrays[name] for name in ARRAYS})
        os.replace(tmp, _entry(key))
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
