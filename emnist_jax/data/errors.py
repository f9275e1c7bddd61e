"""EmnistDataError and the words of its one-line messages.

Every reader raises :class:`EmnistDataError` with a one-line message that names the file and the
problem; :func:`reading` is the one place that turns an operating-system error on a path
(permission denied, symlink loop, a folder where a file belongs ...) into such a line, and
:func:`describe_values` says what an array holds.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import numpy as np


class EmnistDataError(ValueError):
    """Bad, missing or inconsistent EMNIST data; the message names the file and the problem."""


_OS_REASONS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symbolic link loop (too many levels of symbolic links)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (failing disk or network file system?)",
    errno.EEXIST: "already exists",
}


def os_reason(error: OSError) -> str:
    """A few words for an operating-system error, by errno (the path is not included)."""
    return _OS_REASONS.get(error.errno, error.strerror or type(error).__name__)


def os_error_line(error: OSError, path: str | os.PathLike | None = None) -> str:
    """``PATH: reason``, naming the path the system call failed on when it says which."""
    return f"{error.filename if error.filename is not None else path}: {os_reason(error)}"


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn an operating-system error while reading ``path`` into a one-line EmnistDataError.

    Only errors with an errno are translated: an OSError without one (gzip's BadGzipFile,
    requests' errors) is a content or protocol problem that its reader words itself.
    """
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise EmnistDataError(os_error_line(error, path)) from None


def number(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def describe_values(values: np.ndarray) -> str:
    """``float64 values 0..434`` (and how many are NaN/inf): what an array holds, for messages."""
    values = np.asarray(values)
    if values.size == 0:
        return f"an empty {values.dtype} array"
    if values.dtype.kind not in "biuf":
        return f"{values.dtype} values"
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    text = f"{values.dtype} values"
    if finite.size:
        text += f" {number(finite.min())}..{number(finite.max())}"
    if finite.size < values.size:
        text += f" ({values.size - finite.size:,} NaN or infinite)"
    return text
