"""The output folder: what ``--out`` may replace, the hidden folder a run writes into, the final swap.

Every command that writes an ``--out`` folder (the report, ``python -m emnist_jax.data info``)
follows these rules, each as a :class:`Maker`. A run writes into the private (0700) folder
``<parent>/.<name>.tmp-<pid>-<token>/``, marked from its first moment by a marker file
(:data:`MARKER`) naming the command, the host and the process. At the end the marker lists every
file written, the folder is opened for reading (never for writing by group or others) and renamed
to ``--out``. An existing ``--out`` is replaced only when the same command made it: a folder of
this user holding a marker of that command and nothing but the files the marker lists (a report
written before the marker existed is recognised by its ``metrics.json`` of schema 1 and holds only
the report's own file names). Anything else (a file, a symbolic link, a folder of other files or
of another user, one made by the other command, the current folder or one above it) is refused
with :class:`OutputError`, one line; nothing the command did not make is ever renamed or deleted.

Hidden temporary folders of earlier runs that were killed (this user's, ours by name and marker,
their process gone) are removed; an output that was being swapped in when its run died is put back.
Markers are read only through :func:`~emnist_jax.private.read_trusted` (no link followed, no file
of another user or writable by others believed).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from emnist_jax.private import UntrustedPath, create_exclusive, read_trusted

MARKER = ".emnist_jax_report"
SCHEMA = "emnist_jax.report/1"
#: names a report written before the marker existed may hold
_LEGACY_NAMES = re.compile(r"^(index\.html|report\.md|metrics\.json|[\w.-]+\.png|\w+-error\.txt)$")
_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


class OutputError(Exception):
    """``--out`` cannot be used; the message is one line naming the folder."""


@dataclass(frozen=True)
class Maker:
    """A command that writes an ``--out`` folder: its name in the marker, the noun its messages use,
    and whether an output of it from before the marker existed is recognised."""

    command: str
    noun: str
    legacy: bool = False


REPORT = Maker("python -m emnist_jax.report", "report", legacy=True)
DATA_INFO = Maker("python -m emnist_jax.data info", "figure set")


def _owner_problem(path: Path) -> str | None:
    """Why ``path`` (a folder) cannot have been made by this program: a link, another user's."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link; not followed"
    if hasattr(os, "geteuid") and info.st_uid not in (os.geteuid(), 0):
        return f"is owned by another user (uid {info.st_uid})"
    return None


def check_target(out: str | os.PathLike, maker: Maker = REPORT) -> Path:
    """The absolute ``--out`` path if ``maker`` may write there; raises :class:`OutputError` if not."""
    text, noun = os.fspath(out), maker.noun
    if not text.strip():
        raise OutputError(f"--out is empty; give the folder to write the {noun} into")
    path = Path(os.path.abspath(text))
    cwd = Path(os.getcwd()).resolve()
    if path.is_symlink():
        raise OutputError(f"--out {text}: is a symbolic link (to {os.readlink(path)}); give a real folder")
    if path.exists() and (path.resolve() == cwd or path.resolve() in cwd.parents):
        raise OutputError(f"--out {text}: is the current folder or contains it; give a new folder for the {noun}")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"--out {text}: is a file, not a {noun} folder; choose another name")
        problem = _owner_problem(path) or foreign_content(path, maker)
        if problem:
            raise OutputError(f"--out {text}: {problem}; the {noun} replaces only a folder it made itself "
                              "(choose another --out or move it away)")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise OutputError(f"--out {text}: {folder} is not a folder")
            break
    return path


def foreign_content(folder: Path, maker: Maker = REPORT) -> str | None:
    """None if ``folder`` is an output ``maker`` made (and holds nothing else), else why not."""
    marker, noun = folder / MARKER, maker.noun
    if os.path.lexists(marker):
        try:
            info = _read_json(marker)
        except UntrustedPath as untrusted:
            return f"{MARKER} {untrusted.reason}"
        if not info or info.get("schema") != SCHEMA or info.get("state") != "complete":
            return f"holds a {MARKER} file that is not a finished {noun}'s marker"
        if info.get("made_by") != maker.command:
            return f"was made by {info.get('made_by')}, not by this command"
        allowed = set(info.get("files", [])) | {MARKER}
    else:
        legacy = maker.legacy and (folder / "metrics.json").is_file()
        metrics = _believed_json(folder / "metrics.json") if legacy else None
        if not (metrics and metrics.get("schema_version") == 1
                and str(metrics.get("command", "")).startswith(REPORT.command)):
            entries = sorted(os.listdir(folder))
            return (f"exists and is not a {noun} made by this command ("
                    + (f"it holds {entries[0]!r}" + (f" and {len(entries) - 1} more" if len(entries) > 1 else "")
                       if entries else "an empty folder") + ")")
        allowed = None  # a report from before the marker: only the report's own names
    for entry in sorted(os.listdir(folder)):
        full = folder / entry
        ours = entry in allowed if allowed is not None else bool(_LEGACY_NAMES.match(entry))
        if not ours or full.is_symlink() or not full.is_file():
            return f"holds {entry!r}, which the {noun} did not write"
    return None


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None if unreadable or not one; raises UntrustedPath for a link
    or a file of another user or writable by others."""
    try:
        value = json.loads(read_trusted(path).decode("utf-8"))
    except UntrustedPath:
        raise
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _believed_json(path: Path) -> dict | None:
    """:func:`_read_json`, None for a file that cannot be trusted."""
    try:
        return _read_json(path)
    except UntrustedPath:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def clean_stale(parent: Path, log=print) -> None:
    """Remove the hidden temporary folders of runs that died; put back an output caught mid-swap.

    Only this user's folders with a marker it can trust: in a shared parent, another user's
    look-alike is left alone."""
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        match = _HIDDEN.match(entry)
        folder = parent / entry
        if not match or not folder.is_dir() or _owner_problem(folder):
            continue
        info = _believed_json(folder / MARKER)
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

    def __init__(self, target: Path, maker: Maker = REPORT):
        self.target, self.maker = target, maker
        self.parent = target.parent
        token = secrets.token_hex(4)
        self.folder = self.parent / f".{target.name}.tmp-{os.getpid()}-{token}"
        self._old = self.parent / f".{target.name}.old-{os.getpid()}-{token}"
        self._made = False
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
            self.folder.mkdir(mode=0o700)  # nobody else can add a file while it is written
            self._made = True
            self._write_marker("writing")
        except OSError as error:
            self.discard()
            raise OutputError(f"--out {target}: cannot write in {self.parent}: {error.strerror or error}") from None

    def _write_marker(self, state: str, files: list[str] | None = None) -> None:
        info = {"schema": SCHEMA, "state": state, "made_by": self.maker.command,
                "host": socket.gethostname(), "pid": os.getpid()}
        if files is not None:
            info["files"] = files
        # never writable by group or others: a marker that is cannot be trusted when read back
        write_text_atomic(self.folder / MARKER, json.dumps(info, indent=1) + "\n", mode=0o644)

    def commit(self) -> None:
        """List the files in the marker and put the folder in place of ``--out`` (replacing our old one)."""
        files = sorted(e for e in os.listdir(self.folder) if e != MARKER)
        self._write_marker("complete", files)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.folder, 0o755 & ~umask)  # readable as the user's folders are; writable only by the user
        check_target(self.target, self.maker)  # it may have changed during the run
        if self.target.exists():
            os.rename(self.target, self._old)
            os.rename(self.folder, self.target)
            shutil.rmtree(self._old)
        else:
            os.rename(self.folder, self.target)

    def discard(self) -> None:
        if self._made and self.folder.is_dir() and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to a new temporary file beside ``path`` (created here, never through a link;
    ``mode`` less the umask), then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        with os.fdopen(create_exclusive(tmp, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def write_text_atomic(path: Path, text: str, mode: int = 0o666) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)
