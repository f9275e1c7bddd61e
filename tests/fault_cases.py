"""Shared pieces of the reliability suites (tests/test_reliability_*.py).

Each suite is a table of cases: the fault, the expected exit code or exception, a fragment of
the expected message, and a check that nothing partial was left and nothing that existed before
changed. :func:`snapshot` records a folder tree so a case can compare before and after.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


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
