"""Finished stages' results, kept beside the output so that an interrupted report can resume.

``<parent>/.<name>.state/`` holds a marker, ``key.json`` (everything the results depend on: the
data's fingerprint, the profile after command-line overrides, the package version and this
store's schema), one ``<stage>.json`` (+ ``<stage>.npz`` for arrays) per finished stage, each
written to a temporary name and renamed, and ``cnn/`` (the CNN's checkpoints). ``--resume``
reuses them only when the key is equal, field by field; otherwise it refuses with one line naming
the field that differs. A run without ``--resume`` empties the folder first; a finished report
removes it. A lock file keeps two reports from sharing one state folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from emnist_jax.report.output import write_bytes_atomic

SCHEMA = 1
MARKER = ".emnist_jax_report_state"


class StateError(Exception):
    """Stored stage results that cannot be used; the message is one line."""


@dataclasses.dataclass
class StageResult:
    """What one stage produced: ``metrics`` (top-level keys of metrics.json, JSON values) and the
    ``arrays`` its figures need beyond them."""

    metrics: dict[str, Any]
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float | None = None  # of this process and its workers (None: stored without it)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars Python numbers)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fingerprint(dataset) -> str:
    """A hash of the loaded arrays, classes and split: equal only for the same data."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{dataset.split}|{'|'.join(dataset.classes)}".encode())
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        array = np.ascontiguousarray(array)
        digest.update(f"|{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def package_version() -> str:
    try:
        return importlib.metadata.version("emnist_jax")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from emnist_jax import __version__

        return __version__


def run_key(data_fingerprint: str, profile) -> dict:
    """Everything a stage's result depends on. (Which stages run does not change any one stage's result.)"""
    return jsonable({"schema": SCHEMA, "package_version": package_version(), "data": data_fingerprint,
                     "profile": dataclasses.asdict(profile)})


def differences(stored: Any, current: Any, path: str = "") -> list[str]:
    """Dotted paths where two keys differ, with both values."""
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for name in sorted(set(stored) | set(current), key=str):
            found += differences(stored.get(name), current.get(name), f"{path}.{name}" if path else str(name))
        return found
    return [] if stored == current else [f"{path} {stored!r} -> {current!r}"]


class Store:
    """The state folder of one ``--out``; see the module docstring."""

    def __init__(self, folder: Path, key: dict, resume: bool, log=print):
        self.folder = folder
        self.key = key
        self._lock = None
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise StateError(f"{folder}: is not a folder this command made; move it away")
        if folder.exists() and not (folder / MARKER).is_file():
            raise StateError(f"{folder}: exists but was not made by this command (no {MARKER}); move it away")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MARKER).write_text(f"{SCHEMA}\n")
            self._lock = open(folder / "lock", "a+")
        except OSError as error:
            raise StateError(f"cannot write the resume state in {folder.parent}: {error.strerror or error}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "another process"
            self._lock.close()
            self._lock = None
            raise StateError(f"another report (pid {owner}) is writing the same --out right now") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        stored = self._read_key()
        if resume and stored is None:
            log("--resume: no stored results for this --out; starting fresh")
        elif resume and stored != key:
            found = sorted(differences(stored, key),  # the profile's name first, then the shallowest fields
                           key=lambda d: (not d.startswith("profile.name "), d.split()[0].count("."), d))
            raise StateError("--resume: the stored results were made with different inputs ("
                             + "; ".join(found[:3]) + (f"; {len(found) - 3} more" if len(found) > 3 else "")
                             + "); rerun without --resume to start fresh")
        elif resume:
            finished = [p.stem for p in sorted(folder.glob("*.json")) if p.name != "key.json"]
            log(f"--resume: reusing {', '.join(finished) or 'no finished stages'}"
                + ("; the CNN continues from its checkpoint" if (folder / "cnn").is_dir() else ""))
        if not resume or stored is None:
            finished = sorted(p.stem for p in folder.glob("*.json") if p.name != "key.json")
            if finished:
                log(f"starting fresh: discarding the stored results of an interrupted earlier run "
                    f"({', '.join(finished)}); --resume would have continued it")
            self._clear()
            write_bytes_atomic(folder / "key.json", json.dumps(key, indent=1).encode())

    def _read_key(self) -> dict | None:
        try:
            return json.loads((self.folder / "key.json").read_text())
        except (OSError, ValueError):
            return None

    def _clear(self) -> None:
        for entry in self.folder.iterdir():
            if entry.name in (MARKER, "lock"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @staticmethod
    def finished(folder: Path, key: dict, stage: str) -> bool:
        """Whether ``stage`` is stored under ``key`` in ``folder``, read without touching anything (the
        other processes of a multi-process run use it to skip what process 0 will reuse)."""
        try:
            return json.loads((folder / "key.json").read_text()) == key and (folder / f"{stage}.json").is_file()
        except (OSError, ValueError):
            return False

    @property
    def cnn_workdir(self) -> Path:
        return self.folder / "cnn"

    def load(self, stage: str) -> StageResult | None:
        """The stored result of ``stage``, or None if it has not finished under this key."""
        try:
            stored = json.loads((self.folder / f"{stage}.json").read_text())
        except (OSError, ValueError):
            return None
        arrays = {}
        if stored.get("arrays"):
            try:
                with np.load(self.folder / f"{stage}.npz", allow_pickle=False) as data:
                    arrays = {name: data[name] for name in stored["arrays"]}
            except (OSError, ValueError, KeyError):
                return None
        return StageResult(stored["metrics"], arrays, stored["seconds"], stored.get("cpu_seconds"))

    def save(self, stage: str, result: StageResult) -> None:
        """Store ``result`` (arrays first: the JSON's presence means the stage finished)."""
        if result.arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **result.arrays)
            write_bytes_atomic(self.folder / f"{stage}.npz", buffer.getvalue())
        write_bytes_atomic(self.folder / f"{stage}.json", json.dumps(
            {"metrics": result.metrics, "arrays": sorted(result.arrays), "seconds": result.seconds,
             "cpu_seconds": result.cpu_seconds}).encode())

    def remove(self) -> None:
        """Delete the state folder (the report is finished)."""
        self.release()
        shutil.rmtree(self.folder, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
