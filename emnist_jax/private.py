"""Folders the program makes for itself, and the files it reads back from them, on a shared machine.

The rules are those of ssh, pip's cache and Python's bytecode cache: a folder the program creates
for itself (a cache, a build folder, a resume state) is private, mode 0700 whatever the umask;
a folder or file that another user owns, or that group or others may write, is never trusted
(no library loaded from it, no array read from it, no link in it followed); files are opened
without following a link (``O_NOFOLLOW``), and marker files are created exclusively (``O_EXCL``).
Root's own files are trusted as well, as ssh does: root could replace the program anyway.

Every refusal is an :class:`UntrustedPath` whose message is one line naming the path and why.
On a system without POSIX ownership (Windows) the ownership checks are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o700
#: Writable by group or others: anyone in that group, or anyone at all, could plant a file.
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UntrustedPath(Exception):
    """A path the program will not use: ``path`` and ``reason``; the message is one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _owners() -> tuple[int, ...] | None:
    """The users whose files are trusted (this process's user and root), or None without POSIX owners."""
    if not hasattr(os, "geteuid"):
        return None
    return (os.geteuid(), 0)


def untrusted_reason(info: os.stat_result, kind: str = "folder") -> str | None:
    """Why a file or folder with this ``lstat``/``fstat`` result must not be trusted, or None."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link; not followed"
    owners = _owners()
    if owners is None:
        return None
    if info.st_uid not in owners:
        return f"is owned by another user (uid {info.st_uid}); not trusted"
    if info.st_mode & _SHARED_WRITE:
        who = "others" if info.st_mode & stat.S_IWOTH else "its group"
        return (f"is writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}); not trusted "
                f"(chmod go-w it, or use another {kind})")
    return None


def check_folder(path: str | os.PathLike) -> None:
    """Raise :class:`UntrustedPath` unless ``path`` is a folder (not a link) that only its owner,
    this user or root, can write."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UntrustedPath(path, "does not exist") from None
    reason = untrusted_reason(info)
    if reason is None and not stat.S_ISDIR(info.st_mode):
        reason = "is not a folder"
    if reason:
        raise UntrustedPath(path, reason)


def private_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder this program may keep its own files in: the missing folders on the way
    are created with mode 0700 whatever the umask; an existing one must pass :func:`check_folder`.
    Raises :class:`UntrustedPath`, or OSError when a folder cannot be created."""
    path = Path(os.path.abspath(path))
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_MODE)
        except FileExistsError:  # made by another process just now: checked below like any other
            continue
        os.chmod(folder, PRIVATE_MODE)  # the umask may have taken bits away (or, never, added them)
    check_folder(path)
    return path


def _open(path: str | os.PathLike, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            raise UntrustedPath(path, "is a symbolic link; not followed") from None
        raise


def _checked(fd: int, path: str | os.PathLike) -> int:
    """``fd`` if the file it holds open is a trusted regular file; else closed, and UntrustedPath."""
    try:
        info = os.fstat(fd)
        reason = untrusted_reason(info, "file") or (None if stat.S_ISREG(info.st_mode) else "is not a regular file")
        if reason:
            raise UntrustedPath(path, reason)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_trusted(path: str | os.PathLike, flags: int = os.O_RDONLY) -> int:
    """A file descriptor of the regular file ``path``, opened without following a link; raises
    :class:`UntrustedPath` when the file is another user's, writable by group or others, or not a
    regular file (the checks are made on the open file, so it cannot be swapped in between), and
    FileNotFoundError when it does not exist."""
    return _checked(_open(path, flags), path)


def read_trusted(path: str | os.PathLike) -> bytes:
    """The whole content of a trusted regular file (see :func:`open_trusted`)."""
    with os.fdopen(open_trusted(path), "rb") as f:
        return f.read()


def create_exclusive(path: str | os.PathLike, mode: int = 0o600) -> int:
    """A new file at ``path`` for writing, created here and now: an existing file or link of that
    name (planted, or left by another run) is FileExistsError, never opened."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


def open_lock(path: str | os.PathLike):
    """The lock file ``path`` opened for reading and writing (created 0600 if missing), never through
    a link and only if it is this user's own regular file; raises :class:`UntrustedPath` otherwise.
    Returns a text file object for ``fcntl.flock``."""
    return os.fdopen(_checked(_open(path, os.O_RDWR | os.O_CREAT, 0o600), path), "r+")
