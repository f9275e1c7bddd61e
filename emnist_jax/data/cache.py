"""On-disk cache of converted arrays, so a second ``load`` of the same file is fast.

Entries live in ``$EMNIST_JAX_CACHE`` (default ``~/.cache/emnist_jax``; an empty value means the
default) as uncompressed ``.npz`` files keyed by the source files' path, size and modification
time: editing or replacing a source file changes the key. An entry that cannot be read back whole
(zip CRCs are checked on read) or holds arrays of the wrong type is deleted and rebuilt, never used.

The key is computed from what any user can read, so on a shared machine the folder is what keeps
the entries honest: it is created private (0700, :func:`~emnist_jax.private.private_folder`), and
a folder of another user, or one that group or others may write, is not used at all. Entries are
read through :func:`~emnist_jax.private.open_trusted`: an entry of another user, or a link, is
never read (and never deleted).

The cache is an optimisation, never a reason to fail: :func:`read` and :func:`write` raise
:class:`CacheUnusable` (path and reason) when the folder or an entry cannot be used, and the
caller loads from the source and says so once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from emnist_jax.data.formats import aligned_empty, os_reason
from emnist_jax.private import UntrustedPath, check_folder, open_trusted, private_folder

#: Bump when the stored arrays' meaning changes.
CACHE_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "file_labels", "synthetic")
IMAGES = ("train_images", "test_images")   # read into aligned buffers: the CNN trains on them in place
#: Temporary files older than this are leftovers of a killed process (a write takes seconds).
STALE_TEMPORARY_S = 3600


class CacheWarning(UserWarning):
    """The cache could not be used; the data were loaded or generated without it."""


class CacheUnusable(Exception):
    """The cache folder or one of its entries cannot be used: ``path`` and ``reason``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def cache_dir() -> Path:
    """The cache folder: ``$EMNIST_JAX_CACHE`` or ``~/.cache/emnist_jax``."""
    return Path(os.environ.get("EMNIST_JAX_CACHE") or Path.home() / ".cache" / "emnist_jax")


def untrusted(problem: UntrustedPath) -> CacheUnusable:
    """:class:`CacheUnusable` for a refused path, worded as the other cache problems are."""
    reason = problem.reason
    if reason == "is not a folder" and os.path.isfile(problem.path):
        reason = "is a file, not a folder"
    elif "symbolic link" in reason:
        try:
            os.stat(problem.path)
        except OSError as error:  # a loop or a dangling link says more than "a link"
            if error.errno == errno.ELOOP:
                reason = f"{os_reason(error)}; not followed"
    return CacheUnusable(problem.path, reason)


def trusted_folder(create: bool) -> Path | None:
    """The cache folder if it may be used: None when it does not exist (and ``create`` is false);
    created private when ``create`` is true. Raises CacheUnusable (path and reason) when it is
    another user's, writable by group or others, a link, a file, or cannot be made."""
    folder = cache_dir()
    try:
        if create:
            return private_folder(folder)
        check_folder(folder)
        return folder
    except UntrustedPath as problem:
        if not create and problem.reason == "does not exist":
            return None
        raise untrusted(problem) from None
    except OSError as error:  # a part of the path is a file, a loop, unreadable ...
        if os.path.isfile(folder):
            raise CacheUnusable(folder, "is a file, not a folder") from None
        raise CacheUnusable(folder if error.filename is None else error.filename, os_reason(error)) from None


def fingerprint(paths: list[str], split: str) -> str:
    """A key that changes whenever any of ``paths`` is replaced or modified."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{split}".encode())
    for path in sorted(paths):
        info = os.stat(path)
        digest.update(f"|{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _entry(key: str) -> Path:
    return cache_dir() / f"arrays-{key}.npz"


def _check(arrays: dict[str, np.ndarray]) -> None:
    """Arrays as ``load`` stores them, or ValueError: a tampered entry is never used."""
    n_classes = len(arrays["classes"])
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{part} images are {images.dtype} {images.shape}")
        if labels.dtype != np.int32 or labels.shape != (len(images),):
            raise ValueError(f"{part} labels are {labels.dtype} {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{part} labels outside 0..{n_classes - 1}")


def read(key: str) -> dict[str, np.ndarray] | None:
    """The cached arrays for ``key``, or None on a miss (also after deleting a corrupt entry).

    Raises CacheUnusable when the folder cannot be trusted, or the entry exists but cannot be
    trusted or read, or is corrupt and cannot be deleted.
    """
    folder = trusted_folder(create=False)
    if folder is None:
        return None
    path = folder / f"arrays-{key}.npz"
    try:
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            raise CacheUnusable(path, "is a folder, not a cache file")
        fd = open_trusted(path)
    except FileNotFoundError:
        return None
    except UntrustedPath as problem:
        raise untrusted(problem) from None
    except OSError as error:
        raise CacheUnusable(path, os_reason(error)) from None
    try:
        with os.fdopen(fd, "rb") as f, zipfile.ZipFile(f) as archive:
            arrays = {name: _read_small(archive, name) for name in ARRAYS if name not in IMAGES}
            arrays.update({name: _read_aligned(archive, name) for name in IMAGES})
        _check(arrays)
        return arrays
    except OSError as error:
        if error.errno is not None:  # could not read it (permissions, I/O): not known to be corrupt
            raise CacheUnusable(path, os_reason(error)) from None
        problem = str(error) or type(error).__name__
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        problem = str(error) or type(error).__name__
    try:
        path.unlink()  # our own file in our own private folder: open_trusted checked both
    except FileNotFoundError:
        pass
    except OSError as error:
        raise CacheUnusable(path, f"corrupt entry ({problem.splitlines()[0]}) that cannot be deleted: "
                                  f"{os_reason(error)}") from None
    return None


def _read_small(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(f"{name}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_aligned(archive: zipfile.ZipFile, name: str, block: int = 1 << 24) -> np.ndarray:
    """The array ``name`` of an ``np.savez`` archive, read a block at a time into an aligned buffer
    (:func:`~emnist_jax.data.formats.aligned_empty`, which JAX on a CPU uses without a copy;
    ``np.load`` gives 16-byte aligned ones). A malformed member raises ValueError."""
    member = f"{name}.npy"
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"{member}: unknown .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if dtype.hasobject or fortran_order or archive.getinfo(member).file_size != f.tell() + nbytes:
            raise ValueError(f"{member}: not {shape} C-order numbers")  # checked before allocating
        out = aligned_empty(shape, dtype)
        view = out.reshape(-1).view(np.uint8)
        done = 0
        while done < len(view):
            data = f.read(min(block, len(view) - done))
            if not data:
                raise EOFError(f"{member}: truncated")
            view[done:done + len(data)] = np.frombuffer(data, np.uint8)
            done += len(data)
        if f.read(1):  # reading to the end also checks the member's CRC
            raise ValueError(f"{member}: longer than its header says")
    return out


def write(key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` under ``key`` atomically (temporary file, then rename).

    Raises CacheUnusable when the folder or the entry cannot be written; no temporary file
    is left behind either way.
    """
    folder = trusted_folder(create=True)
    final = _entry(key)
    where, tmp = folder, None
    try:
        _remove_stale_temporaries(folder)
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
        where = final
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **{name: arrays[name] for name in ARRAYS})
        os.replace(tmp, final)
    except OSError as error:
        reason = "is a folder, not a cache file" if where == final and final.is_dir() else os_reason(error)
        raise CacheUnusable(where, reason) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):  # never fail for the cache; old leftovers are cleaned later
                os.remove(tmp)


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete our own temporary files that a killed process left (``.arrays-*.tmp``, old)."""
    now = time.time()
    for tmp in folder.glob(".arrays-*.npz.*.tmp"):
        try:
            if now - tmp.lstat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
        except OSError:
            pass  # another process's file, or gone already
