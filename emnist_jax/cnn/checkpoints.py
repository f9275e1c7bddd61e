"""Checkpoints of one training run (orbax), and the checks that make resuming safe.

Each checkpoint is numbered by the global training step it holds (completed epochs x steps per
epoch + steps done in the current epoch): every position of a run has its own number, and the end
of an epoch and the start of the next, being one position, are saved once. Saving a position that
is already on disk does nothing.

A checkpoint also records what defines the run (:data:`~emnist_jax.cnn.config.RUN_FIELDS`, the
number of classes, the number of training images and a SHA-256 of the training data and split).
Resuming refuses another run's checkpoint, naming the field that differs; an unreadable newest
checkpoint falls back to the newest intact one, with a warning. Saves are synchronous and orbax
writes each one to a temporary folder that it renames when complete; temporary folders left by a
killed process are removed when the next run opens the folder (they are orbax's own).

On a shared machine: the folders made here are private (0700), a workdir that another user owns or
could write is refused, and ``checkpoints/.lock`` (flock, kept between runs) lets one run at a time
train in a workdir. When orbax fails inside a handled path (a full disk, a damaged checkpoint being
skipped), the user sees this module's one line, not orbax's tracebacks (:func:`quiet_orbax`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emnist_jax.cnn.config import RUN_FIELDS, TrainConfig
from emnist_jax.private import UntrustedPath, open_lock, private_folder, untrusted_reason

FORMAT = 1


class CheckpointError(ValueError):
    """A workdir that cannot be written, or resumed from; the message is one line naming the folder."""


class CheckpointWarning(UserWarning):
    """Resuming went on, but not quite as asked (a fallback, or other execution choices)."""


def data_fingerprint(images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> str:
    """SHA-256 of the train file's images and labels and of the rows the run trains on."""
    digest = hashlib.sha256()
    for array in (images, labels, rows.astype(np.int64)):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def run_identity(config: TrainConfig, n_classes: int, n_train: int, fingerprint: str) -> dict:
    """What a checkpoint must share with a run that resumes from it."""
    return {**{name: getattr(config, name) for name in RUN_FIELDS}, "n_classes": n_classes, "n_train": n_train,
            "training data": fingerprint}


def _first_line(error: BaseException, limit: int = 200) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a SHA-256
        return f"sha256 {value[:12]}..."
    return repr(value)


def _lock_workdir(path: Path, workdir: str | os.PathLike):
    """The open lock file ``path``, locked (flock) for this process until it is closed; a
    CheckpointError naming the run that holds it already."""
    lock = open_lock(path)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read().strip()
        lock.close()
        raise CheckpointError(f"{workdir}: another run (pid {holder or 'unknown'}) is training in this workdir "
                              "right now; wait for it to end or use another workdir") from None
    except BaseException:
        lock.close()
        raise
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


class Checkpoints:
    """The checkpoints of one run in ``workdir/checkpoints``, held by this process alone while open:
    a second run into the same workdir is refused (a lock file per process of a multi-process run,
    ``process``). Folders made here are private (0700); a workdir or checkpoints folder of another
    user, or writable by group or others, is refused, and a checkpoints folder that is a link too."""

    def __init__(self, workdir: str | os.PathLike, identity: dict, execution: dict, keep: int = 2,
                 process: int = 0):
        import orbax.checkpoint as ocp  # slow to import: only when checkpointing

        self.ocp = ocp
        self.identity, self.execution = identity, execution
        self._unreadable: set[int] = set()
        try:
            if os.path.isdir(workdir):  # the user's own folder, maybe through a link: its target is checked
                reason = untrusted_reason(os.stat(workdir))
                if reason:
                    raise UntrustedPath(workdir, reason)
            self.folder = private_folder(Path(workdir) / "checkpoints")
            with tempfile.TemporaryFile(dir=self.folder):  # fails now, not at the first save
                pass
            self._lock = _lock_workdir(self.folder / (".lock" if process == 0 else f".lock-{process}"), workdir)
        except UntrustedPath as error:
            raise CheckpointError(f"{error}; checkpoints are neither read nor written there") from None
        except OSError as error:
            raise CheckpointError(f"{workdir}: cannot write checkpoints there ({error.strerror or error})") from None
        try:
            with quiet_orbax():
                self.manager = ocp.CheckpointManager(self.folder, options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, cleanup_tmp_directories=True, enable_async_checkpointing=False))
        except BaseException:
            self._lock.close()
            raise

    def steps(self) -> list[int]:
        with quiet_orbax():
            return sorted(self.manager.all_steps())

    def _meta_file(self, step: int) -> Path:
        folder = self.folder / str(step) / "meta"
        return folder / "metadata" if (folder / "metadata").exists() else folder

    def _read_meta(self, step: int) -> dict:
        with quiet_orbax():
            meta = self.manager.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"holds {type(meta).__name__}, not a JSON object")
        return meta

    def _check_identity(self, step: int, meta: dict) -> None:
        if meta.get("format") != FORMAT or not isinstance(meta.get("run"), dict):
            raise CheckpointError(f"{self.folder / str(step)}: checkpoint without a record of its run (written by "
                                  "another version of emnist_jax); resume it with that version or use another workdir")
        there = meta["run"]
        for name, here in self.identity.items():
            if there.get(name) != here:
                raise CheckpointError(
                    f"{self.folder}: the checkpoint belongs to another run: {name} is {_describe(there.get(name))} "
                    f"there and {_describe(here)} here; resume with the same settings and data, or use another workdir")
        for name, here in self.execution.items():
            if name in meta.get("execution", {}) and meta["execution"][name] != here:
                warnings.warn(f"{self.folder}: checkpoint made with {name}={meta['execution'][name]!r}, this run uses "
                              f"{here!r}: the same model, so the result matches an uninterrupted run only to float "
                              "rounding", CheckpointWarning, stacklevel=4)

    def restore(self, state: Any, sums: Any) -> tuple[Any, Any, dict] | None:
        """(state, sums, metadata) of the newest intact checkpoint, or None when there is none at all.

        ``state`` and ``sums`` give the structure, shapes and placement to restore into.
        """
        problems: list[str] = []
        for step in reversed(self.steps()):
            try:
                meta = self._read_meta(step)
            except Exception as error:  # any unreadable metadata: fall back to an older checkpoint
                problems.append(f"{self._meta_file(step)}: {_first_line(error)}")
                self._unreadable.add(step)
                continue
            self._check_identity(step, meta)
            try:
                with quiet_orbax():
                    restored = self.manager.restore(step, args=self.ocp.args.Composite(
                        state=self.ocp.args.StandardRestore({"state": state, "sums": sums})))["state"]
            except Exception as error:  # truncated or garbled arrays: the same
                problems.append(f"{self.folder / str(step)}: {_first_line(error)}")
                self._unreadable.add(step)
                continue
            if problems:
                warnings.warn(f"{self.folder}: newest checkpoint unreadable ({'; '.join(problems)}); "
                              f"resuming from checkpoint {step}", CheckpointWarning, stacklevel=3)
            return restored["state"], restored["sums"], meta
        if problems:
            raise CheckpointError(f"{self.folder}: no intact checkpoint to resume from ({'; '.join(problems)})")
        return None

    def save(self, step: int, state: Any, sums: Any, position: dict) -> None:
        """Write the run's position ``step`` (once: a position already saved intact is left as it is)."""
        if step in self.steps():
            if step not in self._unreadable:
                return
            with quiet_orbax():
                self.manager.delete(step)
            self._unreadable.discard(step)
        meta = {"format": FORMAT, "run": self.identity, "execution": self.execution, **position}
        try:
            with quiet_orbax():
                self.manager.save(step, args=self.ocp.args.Composite(
                    state=self.ocp.args.StandardSave({"state": state, "sums": sums}),
                    meta=self.ocp.args.JsonSave(meta)), force=True)
                self.manager.wait_until_finished()
        except Exception as error:  # a full or vanished disk, most often
            for partial in self.folder.glob(f"{step}.orbax-checkpoint-tmp*"):  # orbax's own, of this save
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"{self.folder}: cannot write checkpoint {step} ({_first_line(error)})") from None

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            self._lock.close()  # closing the file releases the lock


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def quiet_orbax():
    """Hold what orbax says during the block (its and absl's log records, what it prints on stderr):
    dropped when the block raises, since the caller turns the failure into its own line and orbax's
    hundred lines of tracebacks would bury it; passed on as usual when the block ends normally."""
    held = _Held()
    loggers = [logging.getLogger(name) for name in _ORBAX_LOGGERS]
    saved = [(logger.propagate, logger.handlers[:]) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [held], False
    stderr, sys.stderr = sys.stderr, io.StringIO()
    unraisable = sys.unraisablehook
    sys.unraisablehook = _without_closed_loop_reports(unraisable)
    try:
        yield
    except BaseException:
        held.records.clear()
        sys.stderr.truncate(0)
        unraisable = sys.unraisablehook  # kept: the late reports of the writes still in flight
        raise
    finally:
        said, sys.stderr, sys.unraisablehook = sys.stderr.getvalue(), stderr, unraisable
        for logger, (propagate, handlers) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
        for record in held.records:
            logging.getLogger(record.name).handle(record)
        if said:
            stderr.write(said)


def _without_closed_loop_reports(previous: Callable) -> Callable:
    """``sys.unraisablehook`` less the reports of a failed save: tensorstore's writes still in flight
    finish into the event loop that orbax closed on the failure, and each reports RuntimeError('Event
    loop is closed') as a bare traceback, up to a second later. Every other report goes on."""
    if getattr(previous, "drops_closed_loop_reports", False):
        return previous

    def hook(report) -> None:
        frames = traceback.extract_tb(report.exc_traceback) if report.exc_traceback else []
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"
                and frames and frames[0].name == "call_soon_threadsafe"):
            previous(report)

    hook.drops_closed_loop_reports = True
    return hook


_ORBAX_LOGGERS = ("absl", "orbax", "orbax.checkpoint")
