"""Finished stages' results, kept beside the output so that an interrupted report can resume.

``<parent>/.<name>.state/`` holds a marker, ``key.json`` (everything the results depend on: the
data's fingerprint, the profile after command-line overrides, the package version and this
store's schema), one ``<stage>.json`` (+ ``<stage>.npz`` for arrays) per finished stage, each
written to a temporary name and renamed, and ``cnn/`` (the CNN's checkpoints). ``--resume``
reuses them only when the key is equal, field by field; otherwise it refuses with one line naming
the field that differs, and it never discards what it cannot read (a damaged ``key.json`` beside
finished stages or checkpoints is refused too). A run without ``--resume`` empties the folder
first; a finished report removes it. A lock file keeps two reports from sharing one state folder.

On a shared machine the folder is private (0700 whatever the umask) and its marker is created
exclusively when the folder is made; an existing folder is used only if it is this user's, not
writable by others, not a link, and holds the marker as this user's own regular file. The lock and
every file read back are opened without following links (``emnist_jax.private``).
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
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from emnist_jax.private import UntrustedPath, check_folder, create_exclusive, open_lock, private_folder, read_trusted
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
        _open_folder(folder)
        try:
            self._lock = open_lock(folder / "lock")
        except UntrustedPath as error:
            raise StateError(f"{error}; {_NOT_OURS}") from None
        except OSError as error:
            raise StateError(f"cannot write the resume state in {folder}: {error.strerror or error}") from None
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
        stored, problem = read_key(folder)
        kept = self._kept()
        if resume and kept and (problem or stored is None):
            self.release()  # refused: nothing stored is touched
            raise StateError(f"--resume: {folder / 'key.json'} {problem or 'is missing'}, so the stored results "
                             f"({', '.join(kept)}) cannot be checked against this run; they are kept: "
                             "rerun without --resume to discard them and start fresh")
        if resume and stored is None:
            log("--resume: no stored results for this --out; starting fresh")
        elif resume and stored != key:
            found = sorted(differences(stored, key),  # the profile's name first, then the shallowest fields
                           key=lambda d: (not d.startswith("profile.name "), d.split()[0].count("."), d))
            self.release()
            raise StateError("--resume: the stored results were made with different inputs ("
                             + "; ".join(found[:3]) + (f"; {len(found) - 3} more" if len(found) > 3 else "")
                             + "); rerun without --resume to start fresh")
        elif resume:
            log(f"--resume: reusing {', '.join(self._finished()) or 'no finished stages'}"
                + ("; the CNN continues from its checkpoint" if (folder / "cnn").is_dir() else ""))
        if not resume or stored is None:
            finished = self._finished()
            if finished:
                log(f"starting fresh: discarding the stored results of an interrupted earlier run "
                    f"({', '.join(finished)})" + ("; --resume would have continued it" if stored == key else ""))
            self._clear()
            _write(folder / "key.json", json.dumps(key, indent=1).encode())

    def _finished(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if p.name != "key.json")

    def _kept(self) -> list[str]:
        """What ``--resume`` would continue from: the finished stages and the CNN's checkpoints."""
        cnn = self.folder / "cnn"
        has_checkpoints = cnn.is_dir() and not cnn.is_symlink() and any(cnn.iterdir())
        return self._finished() + (["the CNN's checkpoints"] if has_checkpoints else [])

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
        return read_key(folder)[0] == key and _read_json(folder / f"{stage}.json") is not None

    @property
    def cnn_workdir(self) -> Path:
        return self.folder / "cnn"

    def load(self, stage: str, log=print) -> StageResult | None:
        """The stored result of ``stage``, or None if it has not finished under this key (or cannot be
        read back: then ``log`` says why, and the stage runs again)."""
        path = self.folder / f"{stage}.json"
        if not path.exists() and not path.is_symlink():
            return None
        try:
            return _stage_result(path, self.folder / f"{stage}.npz")
        except (OSError, UntrustedPath, ValueError) as error:
            log(f"{stage}: the stored result cannot be read ({_why(error)}); running the stage again")
            return None

    def save(self, stage: str, result: StageResult) -> None:
        """Store ``result`` (arrays first: the JSON's presence means the stage finished)."""
        if result.arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **result.arrays)
            _write(self.folder / f"{stage}.npz", buffer.getvalue())
        _write(self.folder / f"{stage}.json", json.dumps(
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


_NOT_OURS = ("the resume state is used only when this command made it, for this user "
             "(choose another --out or move it away)")


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically, readable and writable by this user only: a file that others
    may write (as the umask 000 leaves it) is not trusted when it is read back."""
    write_bytes_atomic(path, data)
    os.chmod(path, 0o600)


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _open_folder(folder: Path) -> None:
    """Make ``folder`` private with its marker, or check that an existing one is ours; raises StateError."""
    marker = folder / MARKER
    try:
        if not os.path.lexists(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)  # the report's own parent: not private
            private_folder(folder)
            try:
                fd = create_exclusive(marker)
            except FileExistsError:  # another report made the folder just now: checked below
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{SCHEMA}\n")
        check_folder(folder)
        read_trusted(marker)
    except FileNotFoundError:
        raise StateError(f"{folder}: exists but was not made by this command (no {MARKER}); move it away") from None
    except UntrustedPath as error:
        raise StateError(f"{error}; {_NOT_OURS}") from None
    except OSError as error:
        raise StateError(f"cannot write the resume state in {folder.parent}: {error.strerror or error}") from None


def _read_json(path: Path) -> Any:
    """The JSON value of the trusted file ``path``; None if it is missing, unreadable or not JSON."""
    try:
        return json.loads(read_trusted(path))
    except (OSError, UntrustedPath, ValueError):
        return None


def read_key(folder: Path) -> tuple[dict | None, str | None]:
    """(the stored key, None), (None, None) if there is none, or (None, why it cannot be read)."""
    path = folder / "key.json"
    try:
        value = json.loads(read_trusted(path))
    except FileNotFoundError:
        return None, None
    except (OSError, UntrustedPath, ValueError) as error:
        reason = error.reason if isinstance(error, UntrustedPath) else (
            "is not JSON" if isinstance(error, ValueError) else f"cannot be read ({error.strerror or error})")
        return None, reason
    if not isinstance(value, dict):
        return None, "is not a JSON object"
    return value, None


def _stage_result(json_path: Path, npz_path: Path) -> StageResult:
    """One stored stage, read back without following links; ValueError if it is not what ``save`` wrote."""
    stored = json.loads(read_trusted(json_path))
    if not (isinstance(stored, dict) and isinstance(stored.get("metrics"), dict)
            and isinstance(stored.get("arrays", []), list)
            and isinstance(stored.get("seconds"), (int, float))
            and isinstance(stored.get("cpu_seconds"), (int, float, type(None)))):
        raise ValueError(f"{json_path.name} is not a stored stage result")
    arrays = {}
    if stored.get("arrays"):
        try:
            with np.load(io.BytesIO(read_trusted(npz_path)), allow_pickle=False) as data:
                arrays = {name: data[name] for name in stored["arrays"]}
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile, EOFError) as error:  # numpy on a damaged file
            raise ValueError(f"{npz_path.name} is damaged ({_why(error)})") from None
    return StageResult(stored["metrics"], arrays, stored["seconds"], stored.get("cpu_seconds"))
