"""Shared pieces of the reliability suites (tests/test_reliability_*.py).

Each suite is a table of cases: the fault, the expected exit code or exception, a fragment of
the expected message, and a check that nothing partial was left and nothing that existed before
changed. :func:`snapshot` records a folder tree so a case can compare before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

#: The neighbour on a shared machine: the user "nobody" (uid and gid 65534 on Debian and most Linux).
NEIGHBOUR = 65534


def snapshot(root: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """relative path -> (kind, content hash or link target) for everything under ``root``."""
    root = Path(root)
    found: dict[str, tuple[str, str]] = {}
    if not root.exists() and not root.is_symlink():
        return found
    if not root.is_dir() or root.is_symlink():
        return {".": _describe(root)}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = _describe(path)
    return found


def _describe(path: Path) -> tuple[str, str]:
    if path.is_symlink():
        return "link", os.readlink(path)
    if path.is_dir():
        return "dir", ""
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device: reading it could block forever
        return "special", ""
    try:
        return "file", hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:  # unreadable on purpose in some cases: record that it exists
        return "file", f"unreadable: {error.errno}"


def unchanged_except(before: dict, after: dict, allowed_new: tuple[str, ...] = ()) -> list[str]:
    """Problems: anything in ``before`` that changed or vanished, anything new outside ``allowed_new``."""
    problems = [f"changed or removed: {p}" for p, v in before.items() if after.get(p) != v]
    problems += [f"new: {p}" for p in after if p not in before and not p.startswith(allowed_new)]
    return problems


def as_neighbour(script: str, *args: str) -> str:
    """Run the shell ``script`` (``args`` as $1, $2, ...) as another user, as a neighbour on a shared
    machine would; returns its stdout. Skips the test where this process cannot act as another user
    (it must be root, with util-linux's ``setpriv``)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("acting as another user needs root (setpriv to uid 65534)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("acting as another user needs util-linux's setpriv")
    done = subprocess.run([setpriv, f"--reuid={NEIGHBOUR}", f"--regid={NEIGHBOUR}", "--clear-groups", "--",
                           "/bin/sh", "-c", script, "neighbour", *args],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, f"the neighbour's script failed: {done.stderr.strip()}"
    return done.stdout


def shared_folder(path: Path) -> Path:
    """``path`` made as a shared folder anyone may write (mode 1777, like /tmp)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o1777)
    for parent in path.parents:  # the neighbour must be able to reach it (pytest's tmp folders are 0700)
        mode = stat.S_IMODE(parent.stat().st_mode)
        if parent != Path(parent.anchor) and not mode & 0o001:
            os.chmod(parent, mode | 0o711)
    return path
