"""The output folder: what ``--out`` may replace, the hidden folder a run writes into, the final swap.

A run writes into ``<parent>/.<name>.tmp-<pid>-<token>/``, marked from its first moment by a
marker file (:data:`MARKER`) naming this command, the host and the process. At the end the marker
lists every file written and the folder is renamed to ``--out``. An existing ``--out`` is replaced
only when this command made it: it holds our marker and nothing but the files the marker lists
(a report written before the marker existed is recognised by its ``metrics.json`` of schema 1 and
holds only the report's own file names). Anything else (a file, a symbolic link, a folder of other
files, the current folder or one above it) is refused with :class:`OutputError`, one line; nothing
this command did not make is ever renamed or deleted.

Hidden temporary folders of earlier runs that were killed (ours by name and marker, their process
gone) are removed; a report that was being swapped in when its run died is put back.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

MARKER = ".emnist_jax_report"
SCHEMA = "emnist_jax.report/1"
#: names a report written before the marker existed may hold
_LEGACY_NAMES = re.compile(r"^(index\.html|report\.md|metrics\.json|[\w.-]+\.png|\w+-error\.txt)$")
_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


class OutputError(Exception):
    """``--out`` cannot be used; the message is one line naming the folder."""


def check_target(out: str | os.PathLike) -> Path:
    """The absolute ``--out`` path if the report may write there; raises :class:`OutputError` if not."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputError("--out is empty; give the folder to write the report into")
    path = Path(os.path.abspath(text))
    cwd = Path(os.getcwd()).resolve()
    if path.is_symlink():
        raise OutputError(f"--out {text}: is a symbolic link (to {os.readlink(path)}); give a real folder")
    if path.exists() and (path.resolve() == cwd or path.resolve() in cwd.parents):
        raise OutputError(f"--out {text}: is the current folder or contains it; give a new folder for the report")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"--out {text}: is a file, not a report folder; choose another name")
        problem = foreign_content(path)
        if problem:
            raise OutputError(f"--out {text}: {problem}; the report replaces only a folder it made itself "
                              "(choose another --out or move it away)")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise OutputError(f"--out {text}: {folder} is not a folder")
            break
    return path


def foreign_content(folder: Path) -> str | None:
    """None if ``folder`` is a report this command made (and holds nothing else), else why not."""
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        info = _read_json(marker)
        if not info or info.get("schema") != SCHEMA or info.get("state") != "complete":
            return f"holds a {MARKER} file that is not a finished report's marker"
        allowed = set(info.get("files", [])) | {MARKER}
    else:
        metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
        if not (metrics and metrics.get("schema_version") == 1
                and str(metrics.get("command", "")).startswith("python -m emnist_jax.report")):
            entries = sorted(os.listdir(folder))
            return ("exists and is not a report made by this command ("
                    + (f"it holds {entries[0]!r}" + (f" and {len(entries) - 1} more" if len(entries) > 1 else "")
                       if entries else "an empty folder") + ")")
        allowed = None  # a report from before the marker: only the report's own names
    for entry in sorted(os.listdir(folder)):
        full = folder / entry
        ours = entry in allowed if allowed is not None else bool(_LEGACY_NAMES.match(entry))
        if not ours or full.is_symlink() or not full.is_file():
            return f"holds {entry!r}, which the report did not write"
    return None


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def clean_stale(parent: Path, log=print) -> None:
    """Remove this command's hidden temporary folders whose run died; put back a report caught mid-swap."""
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        match = _HIDDEN.match(entry)
        folder = parent / entry
        if not match or folder.is_symlink() or not folder.is_dir():
            continue
        info = _read_json(folder / MARKER)
        pid = int(match["pid"])
        if not info or info.get("schema") != SCHEMA or _alive(pid):
            continue
        if match["kind"] == "tmp" and (info.get("host") != host or info.get("pid") != pid):
            continue
        if match["kind"] == "old" and info.get("state") != "complete":
            continue
        final = parent / match["name"]
        if match["kind"] == "old" and not final.exists() and not final.is_symlink():
            os.rename(folder, final)
            log(f"put back {final}: an earlier run (pid {pid}) died while replacing it")
        else:
            shutil.rmtree(folder)
            log(f"removed {folder.name}: left by an earlier run (pid {pid}) that did not finish")


class Staging:
    """The hidden folder a run writes into, then :meth:`commit` (swap in) or :meth:`discard`."""

    def __init__(self, target: Path):
        self.target = target
        self.parent = target.parent
        token = secrets.token_hex(4)
        self.folder = self.parent / f".{target.name}.tmp-{os.getpid()}-{token}"
        self._old = self.parent / f".{target.name}.old-{os.getpid()}-{token}"
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
            self.folder.mkdir()
            self._write_marker("writing")
        except OSError as error:
            self.discard()
            raise OutputError(f"--out {target}: cannot write in {self.parent}: {error.strerror or error}") from None

    def _write_marker(self, state: str, files: list[str] | None = None) -> None:
        info = {"schema": SCHEMA, "state": state, "made_by": "python -m emnist_jax.report",
                "host": socket.gethostname(), "pid": os.getpid()}
        if files is not None:
            info["files"] = files
        write_text_atomic(self.folder / MARKER, json.dumps(info, indent=1) + "\n")

    def commit(self) -> None:
        """List the files in the marker and put the folder in place of ``--out`` (replacing our old one)."""
        files = sorted(e for e in os.listdir(self.folder) if e != MARKER)
        self._write_marker("complete", files)
        check_target(self.target)  # it may have changed during the run
        if self.target.exists():
            os.rename(self.target, self._old)
            os.rename(self.folder, self.target)
            shutil.rmtree(self._old)
        else:
            os.rename(self.folder, self.target)

    def discard(self) -> None:
        if self.folder.is_dir() and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
