"""Faults at the edges of the CNN: configs, data, checkpoints and resume, interrupts, the command line.

One table per entry point, each case with the fault, the expected exit code or exception, a
fragment of the expected message, and a check that nothing partial was left and nothing that
existed before changed (tests/fault_cases.py). Every run uses test_cnn's SMALL data and CFG, so
the training program is compiled once for the module. Resumed runs must end with parameters
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import emnist_jax.cnn.train as train_module
from emnist_jax import devices
from emnist_jax.cnn import (CheckpointError, CheckpointWarning, ConfigError, TrainConfig, TrainingInterrupted,
                            train_and_evaluate)
from emnist_jax.cnn.__main__ import main
from emnist_jax.cnn.checkpoints import Checkpoints
from fault_cases import as_neighbour, shared_folder, snapshot, unchanged_except
from test_cnn import CFG, SMALL_CONFIG_ARGS, flat, small, small_file, write_small  # noqa: F401  (fixtures)

CFG3 = dataclasses.replace(CFG, epochs=3)


@pytest.fixture(scope="module")
def reference(small):
    """Uninterrupted runs of 2 and 3 epochs: (parameters, test accuracy)."""
    runs = {epochs: train_and_evaluate(small, dataclasses.replace(CFG, epochs=epochs), progress=False)
            for epochs in (2, 3)}
    return {e: (flat(r.state.params), r.evaluations["test"].accuracy) for e, r in runs.items()}


@pytest.fixture(scope="module")
def made(small, tmp_path_factory) -> Path:
    """A workdir holding the checkpoints of a complete CFG run (steps 7 and 14)."""
    workdir = tmp_path_factory.mktemp("made") / "work"
    train_and_evaluate(small, CFG, workdir=str(workdir), progress=False)
    return workdir


@pytest.fixture(scope="module")
def datasets(small, tiny_dataset, tmp_path_factory) -> dict:
    other = write_small(tiny_dataset, tmp_path_factory.mktemp("other") / "other.mat", offset=150)
    from emnist_jax.data import load

    ten = dataclasses.replace(small, train_labels=small.train_labels % 10, test_labels=small.test_labels % 10,
                              classes=small.classes[:10], file_labels=small.file_labels[:10])
    return {None: small, "other file": load(other, use_cache=False), "10 classes": ten}


def user_workdir(tmp_path: Path, made: Path | None) -> Path:
    """A workdir (a copy of ``made``, or empty) that also holds a file of the user's."""
    workdir = tmp_path / "work"
    if made is not None:
        shutil.copytree(made, workdir)
    workdir.mkdir(exist_ok=True)
    (workdir / "notes.txt").write_text("the user's own file")
    return workdir


def leftovers(workdir: Path) -> list[str]:
    return [p.name for p in (workdir / "checkpoints").glob("*") if "tmp" in p.name]


HOLDER = """
import fcntl, os, sys
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0)
lock.write(str(os.getpid()))
lock.flush()
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def another_run_in(workdir: Path):
    """Another process holding ``workdir``'s lock, as a run training there would; yields its pid."""
    (workdir / "checkpoints").mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir / "checkpoints" / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.communicate("", timeout=30)


def steps_on_disk(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


# ---- TrainConfig: checked when made -----------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    (dict(epochs=0), "epochs"), (dict(epochs=1.5), "epochs"), (dict(batch_size=0), "batch_size"),
    (dict(steps_per_call=0), "steps_per_call"), (dict(steps_per_call=-1), "steps_per_call"),
    (dict(log_every=0), "log_every"), (dict(holdout_fraction=1.0), "holdout_fraction"),
    (dict(holdout_fraction=0), "holdout_fraction"), (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=-1e-3), "learning_rate"), (dict(eps=0.0), "eps"), (dict(b1=1.0), "b1"),
    (dict(seed=-1), "seed"), (dict(seed=2**32), "seed"), (dict(seed=True), "seed"),
    (dict(protocol="kfold"), "protocol"), (dict(conv_impl="fft"), "conv_impl"), (dict(loop="while"), "loop"),
    (dict(eval_batch_size=0), "eval_batch_size"), (dict(epochs=np.float32(1.5)), "epochs"),
    (dict(seed=np.bool_(True)), "seed"), (dict(batch_size=np.int64(0)), "batch_size"),
], ids=lambda v: str(v) if isinstance(v, str) else ",".join(f"{k}={x!r}" for k, x in v.items()))
def test_config_out_of_range_is_refused_when_made(change, field):
    with pytest.raises(ConfigError, match=f"^{field} must") as error:
        TrainConfig(**change)
    assert error.value.field == field and "\n" not in str(error.value)


def test_config_takes_numpy_scalars_as_python_numbers():
    """A checkpoint records the config as JSON, which takes no numpy scalar."""
    config = TrainConfig(epochs=np.int64(2), seed=np.uint32(3), learning_rate=np.float32(0.5),
                         protocol=np.str_("official"), steps_per_call=np.int16(2))
    assert [type(getattr(config, f)) for f in ("epochs", "seed", "learning_rate", "protocol", "steps_per_call")] \
        == [int, int, float, str, int]
    assert json.loads(json.dumps(config.to_json()))["learning_rate"] == 0.5


# ---- train_and_evaluate: bad data and arguments -------------------------------------------------

@pytest.mark.parametrize("change, kwargs, message", [
    (dict(train_images=np.zeros((150, 28, 27), np.uint8)), {}, "train_images must be"),
    (dict(train_images=np.zeros((150, 28, 28), np.float32)), {}, "train_images must be"),
    (dict(train_labels=np.full(150, 70)), {}, "train_labels must lie in 0..61"),
    (dict(train_labels=np.zeros(149, int)), {}, "149 entries for 150 images"),
    (dict(test_labels=np.full(62, -1)), {}, "test_labels must lie in 0..61"),
    ({}, dict(config=dataclasses.replace(CFG, batch_size=5000)), "batch_size 5000 is larger than the 100"),
    ({}, dict(resume=True), "resume needs a workdir"),
    (dict(train_labels=np.arange(150) % 62 + 0.5), {},
     r"train_labels must be a 1-D array of integer class numbers, got \(150,\) float64"),
    (dict(train_labels=np.zeros((150, 1), np.int32)), {},
     r"train_labels must be a 1-D array of integer class numbers, got \(150, 1\) int32"),
    (dict(test_labels=list(range(62))), {}, "test_labels must be a 1-D array of integer class numbers, got list"),
    (dict(test_images=[[0] * 28] * 28), {}, r"test_images must be \(N, 28, 28\) uint8, got list"),
    (dict(classes=()), {}, "dataset.classes is empty"),
    ({}, dict(config={"epochs": 1}), "config must be a TrainConfig, got dict"),
    ({}, dict(workdir=5), "workdir must be a folder path or None, got 5"),
    ({}, dict(workdir=""), "workdir must be a folder path or None, got ''"),
    ({}, dict(resume="yes"), "resume must be True or False, got 'yes'"),
    ({}, dict(on_epoch=3), "on_epoch must be callable or None, got int"),
    ({}, dict(devices=[]), "devices must be a non-empty list of JAX devices or None"),
], ids=["image-shape", "image-dtype", "label-range", "label-count", "test-label-range", "batch-too-big",
        "resume-without-workdir", "fractional-labels", "2d-labels", "labels-not-an-array", "images-not-an-array",
        "no-classes", "config-not-a-trainconfig", "workdir-not-a-path", "workdir-empty", "resume-not-a-bool",
        "callback-not-callable", "devices-empty"])
def test_bad_data_or_arguments_are_one_line_errors(small, tmp_path, change, kwargs, message):
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        train_and_evaluate(dataclasses.replace(small, **change), **{"config": CFG, **kwargs}, progress=False)
    assert "\n" not in str(error.value)
    assert unchanged_except(before, snapshot(tmp_path)) == []


# ---- checkpoints and resume ---------------------------------------------------------------------

def corrupt_meta(workdir: Path, step: int) -> None:
    (workdir / "checkpoints" / str(step) / "meta" / "metadata").write_bytes(b"{not json")


def corrupt_arrays(workdir: Path, step: int) -> None:
    for path in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0" * 7)


def truncate_manifest(workdir: Path, step: int) -> None:
    """Half of orbax's OCDBT manifest: tensorstore then fails with a dozen tracebacks of its own."""
    for path in (workdir / "checkpoints" / str(step) / "state").rglob("manifest.ocdbt"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def old_format(workdir: Path, step: int) -> None:
    path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({k: meta[k] for k in ("epoch", "step", "history")}))


def stale_tmp(workdir: Path) -> None:  # what a SIGKILL in the middle of a save leaves
    (workdir / "checkpoints" / "21.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    (workdir / "checkpoints" / "21.orbax-checkpoint-tmp-1234" / "state" / "x").write_bytes(b"partial")


def full_disk(monkeypatch, workdir: Path) -> None:
    import orbax.checkpoint as ocp

    def save(self, step, *args, **kwargs):  # orbax starts its temporary folder, then the disk is full
        (Path(self.directory) / f"{step}.orbax-checkpoint-tmp-99").mkdir()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


OK = None
CHECKPOINT_CASES = [
    # id, start from `made`?, fault(workdir) or None, config change, data, resume, expected, message fragment,
    # paths that may change (prefixes)
    ("other-seed", True, None, dict(seed=1), None, True, CheckpointError, "seed is 0 there and 1 here", ()),
    ("other-batch-size", True, None, dict(batch_size=32), None, True, CheckpointError,
     "batch_size is 16 there and 32 here", ()),
    ("other-protocol", True, None, dict(protocol="official"), None, True, CheckpointError,
     "protocol is 'study' there and 'official' here", ()),
    ("other-learning-rate", True, None, dict(learning_rate=2e-3), None, True, CheckpointError,
     "learning_rate is 0.001 there and 0.002 here", ()),
    ("other-data", True, None, {}, "other file", True, CheckpointError, "training data is sha256 ", ()),
    ("other-class-count", True, None, {}, "10 classes", True, CheckpointError, "n_classes is 62 there and 10 here",
     ()),
    ("written-by-an-older-version", True, lambda w: old_format(w, 14), {}, None, True, CheckpointError,
     "without a record of its run", ()),
    ("corrupt-metadata-falls-back", True, lambda w: corrupt_meta(w, 14), {}, None, True, CheckpointWarning,
     "checkpoints/14/meta/metadata: ", ("checkpoints/14",)),
    ("corrupt-arrays-fall-back", True, lambda w: corrupt_arrays(w, 14), {}, None, True, CheckpointWarning,
     "resuming from checkpoint 7", ("checkpoints/14",)),
    ("nothing-intact", True, lambda w: (corrupt_meta(w, 14), corrupt_arrays(w, 7)), {}, None, True,
     CheckpointError, "checkpoints: no intact checkpoint to resume from", ()),
    ("stale-temporary-folder-removed", True, stale_tmp, {}, None, True, OK, "",
     ("checkpoints/21.orbax-checkpoint-tmp-1234",)),
    ("past-the-epochs-asked", True, None, dict(epochs=1), None, True, ValueError, "past the 1 epochs asked for", ()),
    ("more-epochs-continue", True, None, dict(epochs=3), None, True, OK, "", ("checkpoints/",)),
    ("fresh-run-into-used-workdir", True, None, {}, None, False, CheckpointError,
     "holds the checkpoints of an earlier run", ()),
    ("resume-with-empty-workdir-starts-fresh", False, None, {}, None, True, OK, "", ("checkpoints",)),
    ("workdir-is-a-file", False, "file", {}, None, True, CheckpointError, "cannot write checkpoints there", ()),
    ("workdir-under-a-file", False, "under-file", {}, None, True, CheckpointError, "cannot write checkpoints there",
     ()),
    ("disk-full-during-save", False, "full", {}, None, False, CheckpointError,
     "cannot write checkpoint 7 (No space left on device)", ("checkpoints",)),
    ("another-run-training-there", True, "locked", {}, None, True, CheckpointError,
     "another run (pid {pid}) is training in this workdir right now", ()),
    ("numpy-scalars-in-config", False, None, dict(epochs=np.int64(2), seed=np.uint32(0), batch_size=np.int32(16),
                                                  learning_rate=np.float64(1e-3)), None, False, OK, "",
     ("checkpoints",)),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_faults(case, made, datasets, reference, tmp_path, monkeypatch, request):
    name, from_made, fault, change, data, resume, expected, message, may_change = case
    workdir = user_workdir(tmp_path, made if from_made else None)
    target = workdir
    if fault == "file":
        target = workdir / "notes.txt"
    elif fault == "under-file":
        target = workdir / "notes.txt" / "sub"
    elif fault == "full":
        full_disk(monkeypatch, workdir)
    elif fault == "locked":
        holder = contextlib.ExitStack()
        message = message.format(pid=holder.enter_context(another_run_in(workdir)))
        request.addfinalizer(holder.close)
    elif fault is not None:
        fault(workdir)
    before = snapshot(workdir)
    config = dataclasses.replace(CFG, **change)
    run = functools.partial(train_and_evaluate, datasets[data], config, workdir=str(target), resume=resume,
                            progress=False)
    if expected is OK:
        result = run()
        assert flat(result.state.params).tobytes() == reference[config.epochs][0].tobytes()
    elif expected is CheckpointWarning:
        with pytest.warns(CheckpointWarning, match=message):
            result = run()
        assert flat(result.state.params).tobytes() == reference[config.epochs][0].tobytes()
    else:
        with pytest.raises(expected, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            run()
        assert "\n" not in str(error.value)
    after = snapshot(workdir)
    problems = [p for p in unchanged_except(before, after) if not p.split(": ", 1)[1].startswith(may_change)]
    assert problems == [] and leftovers(workdir) == [] and after["notes.txt"] == before["notes.txt"]


WORKDIR_ATTACKS = [
    # id, what the neighbour (uid 65534) does in the shared folder $1 first, what the user did, the
    # error: the workdir asked for is always $1/work
    ("neighbour-made-the-workdir", 'mkdir -m 777 "$1/work" "$1/work/checkpoints"', None,
     "/work: is owned by another user (uid 65534); not trusted; checkpoints are neither read nor written there"),
    ("neighbour-linked-the-workdir-to-theirs", 'mkdir -m 700 "$1/theirs" && ln -s "$1/theirs" "$1/work"', None,
     "/work: is owned by another user (uid 65534); not trusted"),
    ("workdir-writable-by-others", None, "chmod 777", "/work: is writable by others (mode 0777); not trusted"),
    ("checkpoints-folder-is-a-link", None, "link", "/work/checkpoints: is a symbolic link; not followed"),
]


@pytest.mark.parametrize("case", WORKDIR_ATTACKS, ids=[c[0] for c in WORKDIR_ATTACKS])
def test_a_workdir_another_user_could_write_is_refused(case, small, tmp_path):
    """Nothing is written into a folder a neighbour owns or could swap: orbax would follow their links."""
    name, neighbour, own, message = case
    shared = shared_folder(tmp_path / "shared")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("the user's own file")
    if neighbour:
        as_neighbour(neighbour, str(shared))
    if own == "chmod 777":
        (shared / "work").mkdir()
        os.chmod(shared / "work", 0o777)
    elif own == "link":
        (shared / "work").mkdir(mode=0o700)
        (shared / "work" / "checkpoints").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as error:
        train_and_evaluate(small, CFG, workdir=str(shared / "work"), progress=False)
    assert str(error.value).startswith(str(shared)) and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value) and unchanged_except(before, snapshot(tmp_path)) == []


def test_folders_made_for_checkpoints_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        checkpoints = Checkpoints(tmp_path / "new" / "work", {"seed": 0}, {})
        checkpoints.close()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in (tmp_path / "new", tmp_path / "new" / "work",
                                                                 tmp_path / "new" / "work" / "checkpoints")}
    assert modes == {"new": 0o700, "work": 0o700, "checkpoints": 0o700}
    assert stat.S_IMODE((tmp_path / "new" / "work" / "checkpoints" / ".lock").stat().st_mode) == 0o600


def test_other_execution_choices_resume_with_a_warning(tmp_path):
    """conv_impl/steps_per_call/loop change only speed and rounding: resuming is allowed, and said."""
    identity = {"seed": 0}
    checkpoints = Checkpoints(tmp_path, identity, {"conv_impl": "xla", "steps_per_call": 2, "loop": "unroll"})
    meta = {"format": 1, "run": identity, "execution": {"conv_impl": "slices", "steps_per_call": 2, "loop": "unroll"}}
    with pytest.warns(CheckpointWarning, match="conv_impl='slices', this run uses 'xla'"):
        checkpoints._check_identity(7, meta)


# ---- interrupts -----------------------------------------------------------------------------------

def send(*signals):
    def act():
        for signum in signals:
            if signum == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
    return act


INTERRUPT_CASES = [
    # id, workdir?, hook at (epoch, step) and what it does, patch, expected stop (epoch, step, saved?, signal),
    # steps on disk afterwards
    ("sigint-mid-epoch-1", True, ((1, 4), send(signal.SIGINT)), None, (1, 4, True, "SIGINT"), [4]),
    ("sigterm-mid-epoch-2", True, ((2, 2), send(signal.SIGTERM)), None, (2, 2, True, "SIGTERM"), [7, 9]),
    ("keyboardinterrupt-from-a-callback", True, ((1, 6), send("raise")), None,
     (1, 6, True, "KeyboardInterrupt"), [6]),
    ("sigint-at-an-epoch-end-saves-it-once", True, ((2, 0), send(signal.SIGINT)), None, (2, 0, True, "SIGINT"), [7]),
    ("second-sigint-stops-at-the-last-checkpoint", True, ((2, 4), send(signal.SIGINT, signal.SIGINT)), None,
     (2, 0, True, "SIGINT"), [7]),
    ("second-sigint-before-any-checkpoint", True, ((1, 2), send(signal.SIGINT, signal.SIGINT)), None,
     (1, 0, False, "SIGINT"), []),
    ("sigint-during-the-first-compile", True, None, "compile", (1, 0, False, "SIGINT"), []),
    ("two-sigints-during-a-save", True, None, "save", (2, 0, True, "SIGINT"), [7]),
    ("sigint-during-evaluation", True, None, "evaluation", (3, 0, True, "SIGINT"), [7, 14]),
    ("sigint-without-workdir", False, ((1, 4), send(signal.SIGINT)), None, (1, 4, False, "SIGINT"), None),
    ("sighup-mid-epoch-1", True, ((1, 4), send(signal.SIGHUP)), None, (1, 4, True, "SIGHUP"), [4]),
]


@pytest.mark.parametrize("case", INTERRUPT_CASES, ids=[c[0] for c in INTERRUPT_CASES])
def test_interrupts_stop_cleanly_and_resume_bit_for_bit(case, small, reference, tmp_path, monkeypatch):
    name, with_workdir, hook, patch, (epoch, step, saved, signal_name), on_disk = case
    workdir = user_workdir(tmp_path, None)
    before, handler = snapshot(workdir), signal.getsignal(signal.SIGINT)

    def on_call(position):
        if hook and (position.epoch, position.step) == hook[0]:
            hook[1]()

    if patch == "compile":
        real = train_module.train_calls

        class Compiling:  # the signal arrives while the training program compiles
            def lower(self, *args, **kwargs):
                os.kill(os.getpid(), signal.SIGINT)
                return real.lower(*args, **kwargs)

            __call__ = staticmethod(real)

        monkeypatch.setattr(train_module, "train_calls", Compiling())
    elif patch == "save":
        real_save = Checkpoints.save

        def save(self, *args, **kwargs):  # two signals while a checkpoint is written
            send(signal.SIGINT, signal.SIGINT)()
            return real_save(self, *args, **kwargs)

        monkeypatch.setattr(Checkpoints, "save", save)
    elif patch == "evaluation":
        real_eval = train_module.eval_calls

        def eval_calls(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real_eval(*args, **kwargs)

        monkeypatch.setattr(train_module, "eval_calls", eval_calls)
    with pytest.raises(TrainingInterrupted) as stop:
        train_and_evaluate(small, CFG, workdir=str(workdir) if with_workdir else None, progress=False,
                           on_call=on_call)
    monkeypatch.undo()
    stopped = stop.value
    assert (stopped.epoch, stopped.step, stopped.checkpoint is not None, stopped.signal_name) == \
        (epoch, step, saved, signal_name)
    assert stopped.during == ("evaluation" if patch == "evaluation" else "training")
    assert signal.getsignal(signal.SIGINT) is handler  # given back
    after = snapshot(workdir)
    assert [p for p in unchanged_except(before, after) if not p.startswith("new: checkpoints")] == []
    if not with_workdir:
        return
    assert leftovers(workdir) == [] and steps_on_disk(workdir) == on_disk
    result = train_and_evaluate(small, CFG, workdir=str(workdir), resume=True, progress=False)
    assert flat(result.state.params).tobytes() == reference[2][0].tobytes()
    assert result.evaluations["test"].accuracy == reference[2][1]


# ---- the command line -------------------------------------------------------------------------

def fail_platform(platform: str) -> None:
    raise RuntimeError(f"Unable to initialize backend '{platform}': not in the list of known backends")


CLI_CASES = [
    # id, arguments after --data SMALL, environment, workdir from `made`? (True; "corrupt" or "truncated":
    # with its newest checkpoint damaged, see DAMAGE; "locked": held by another process; "full": empty,
    # and orbax's writes fail for want of space), exit code, stderr fragment
    ("seed-negative", ["--seed", "-1"], {}, False, 2, "--seed must be in 0..4294967295, got -1"),
    ("seed-too-big", ["--seed", "4294967296"], {}, False, 2, "--seed must be in 0..4294967295"),
    ("epochs-zero", ["--epochs", "0"], {}, False, 2, "--epochs must be >= 1, got 0"),
    ("batch-size-zero", ["--batch-size", "0"], {}, False, 2, "--batch-size must be >= 1"),
    ("steps-per-call-zero", ["--steps-per-call", "0"], {}, False, 2, "--steps-per-call must be >= 1"),
    ("log-every-zero", ["--log-every", "0"], {}, False, 2, "--log-every must be >= 1"),
    ("learning-rate-nan", ["--learning-rate", "nan"], {}, False, 2, "--learning-rate must be a finite number"),
    ("learning-rate-negative", ["--learning-rate", "-1"], {}, False, 2, "--learning-rate must be > 0"),
    ("epochs-not-a-number", ["--epochs", "ten"], {}, False, 2, "invalid int value: 'ten'"),
    ("protocol-unknown", ["--protocol", "kfold"], {}, False, 2, "invalid choice: 'kfold'"),
    ("resume-without-workdir", ["--resume"], {}, False, 2, "--resume needs --workdir"),
    ("workdir-empty", ["--workdir", "", "--resume"], {}, False, 2,
     "error: --workdir '' names no folder; give a folder, or leave --workdir out"),
    ("data-missing", ["--data", "nowhere.mat"], {}, False, 2, "nowhere.mat: file not found"),
    ("batch-larger-than-data", ["--batch-size", "4096"], {}, False, 2, "batch_size 4096 is larger than the 100"),
    ("device-gpu-absent", ["--device", "gpu"], {}, False, 2, "--device gpu: no gpu is available to JAX here"),
    ("coordinator-alone", [], {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, False, 2,
     "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
    ("process-id-out-of-range", [], {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2",
                                     "JAX_PROCESS_ID": "2"}, False, 2, "JAX_PROCESS_ID must lie in 0..JAX_NUM"),
    ("coordinator-not-host-port", [], {"JAX_COORDINATOR_ADDRESS": "my laptop", "JAX_NUM_PROCESSES": "2",
                                       "JAX_PROCESS_ID": "1"}, False, 2,
     "error: JAX_COORDINATOR_ADDRESS='my laptop' must be host:port (a port in 1..65535), e.g. 10.0.0.1:1234"),
    ("processes-without-coordinator", [], {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, False, 2,
     "error: JAX_NUM_PROCESSES and JAX_PROCESS_ID are set but JAX_COORDINATOR_ADDRESS is not"),
    ("coordinator-timeout-not-a-number", [], {"EMNIST_JAX_COORDINATOR_TIMEOUT": "soon"}, False, 2,
     "error: EMNIST_JAX_COORDINATOR_TIMEOUT='soon' must be a whole number of seconds in 1..86400"),
    ("jax-platforms-unknown", [], {"JAX_PLATFORMS": "tpuu"}, False, 2,
     "error: JAX_PLATFORMS='tpuu': Unable to initialize backend 'tpuu': not in the list of known backends"),
    ("workdir-is-a-file", ["--workdir", "{work}/notes.txt"], {}, False, 2, "cannot write checkpoints there"),
    ("resume-another-seed", ["--workdir", "{work}", "--resume", "--seed", "5"], {}, True, 2,
     "seed is 0 there and 5 here"),
    ("used-workdir-without-resume", ["--workdir", "{work}"], {}, True, 2, "holds the checkpoints of an earlier run"),
    ("resume-a-finished-run", ["--workdir", "{work}", "--resume", "--epochs", "2"], {}, True, 0, ""),
    ("another-run-training-there", ["--workdir", "{work}", "--resume"], {}, "locked", 2,
     "error: {work}: another run (pid {pid}) is training in this workdir right now; wait for it to end or use "
     "another workdir"),
    ("eval-batch-of-10^8-images", ["--eval-batch-size", "100000000"], {}, False, 0, ""),
    ("disk-full-during-a-real-save", ["--workdir", "{work}"], {}, "full", 2,
     "error: {work}/checkpoints: cannot write checkpoint 7 (OUT_OF_RANGE: Error "),
    ("resume-past-a-truncated-manifest", ["--workdir", "{work}", "--resume"], {}, "truncated", 0,
     "/checkpoints/14: DATA_LOSS: "),
    ("resume-past-a-corrupt-checkpoint", ["--workdir", "{work}", "--resume"], {}, "corrupt", 0,
     "/checkpoints/14/meta/metadata: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
     "resuming from checkpoint 7"),
]


DAMAGE = {"corrupt": corrupt_meta, "truncated": truncate_manifest}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_faults(case, small_file, made, reference, tmp_path, monkeypatch, capsys, caplog, request):
    name, extra, environment, from_made, code, message = case
    workdir = user_workdir(tmp_path, made if from_made is True or from_made in (*DAMAGE, "locked") else None)
    if from_made == "full":
        message = message.format(work=workdir)
        real_save = Checkpoints.save

        def save(self, *args, **kwargs):  # files stop growing past 20 kB: orbax's own writes fail (EFBIG)
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, limit[1]))
            try:
                return real_save(self, *args, **kwargs)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, limit)

        monkeypatch.setattr(Checkpoints, "save", save)
    if from_made in DAMAGE:
        DAMAGE[from_made](workdir, 14)
    if from_made == "locked":
        holder = contextlib.ExitStack()
        message = message.format(pid=holder.enter_context(another_run_in(workdir)), work=workdir)
        request.addfinalizer(holder.close)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(devices, "_try_platform", fail_platform)  # only --device and JAX_PLATFORMS reach it
    before = snapshot(workdir)
    argv = ["--data", small_file, "--epochs", "2", *SMALL_CONFIG_ARGS] + [a.replace("{work}", str(workdir))
                                                                          for a in extra]
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and [r.getMessage() for r in caplog.records if r.name.startswith(("absl", "orbax"))
                                       and r.levelno >= logging.WARNING] == []
    if code == 2:
        assert err.strip().splitlines()[-1].startswith(("error:", "python -m emnist_jax.cnn: error:"))
        assert message in err, err
        if "invalid" not in message:  # argparse's own errors come with its usage line
            assert len(err.strip().splitlines()) == 1, err
    else:
        assert f"test     accuracy {reference[2][1]:.4f}" in out
        assert ("--resume" not in extra) or f"resumed from epoch {3 if from_made is True else 2}, step 0" in out
        assert [line.startswith("warning: ") and message in line for line in err.splitlines()] == \
            ([True] if message else []), err
    changes = unchanged_except(before, snapshot(workdir))
    assert [p for p in changes if not (from_made in DAMAGE and "checkpoints/14" in p)
            and not (from_made == "full" and p.startswith("new: checkpoints"))] == []
    if from_made == "full":
        assert leftovers(workdir) == []


def test_a_checkpoint_orbax_cannot_read_is_skipped_with_our_one_line_only(small_file, made, tmp_path):
    """In a real process: tensorstore printed a dozen tracebacks (73 lines) around the warning."""
    workdir = user_workdir(tmp_path, made)
    truncate_manifest(workdir, 14)
    done = subprocess.run([sys.executable, "-m", "emnist_jax.cnn", "--data", small_file, "--epochs", "2",
                           *SMALL_CONFIG_ARGS, "--workdir", str(workdir), "--resume"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "resumed from epoch 2, step 0" in done.stdout, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {workdir}/checkpoints: newest checkpoint unreadable "
                                                   f"({workdir}/checkpoints/14: DATA_LOSS: "), done.stderr[-3000:]
    assert lines[0].endswith("; resuming from checkpoint 7")


def test_cli_interrupt_prints_one_line_exits_130_and_its_resume_command_finishes_the_run(
        small_file, reference, tmp_path, monkeypatch, capsys):
    workdir = user_workdir(tmp_path, None)

    def on_call(position):
        if (position.epoch, position.step) == (2, 4):
            os.kill(os.getpid(), signal.SIGTERM)

    real = train_module.train_and_evaluate
    monkeypatch.setattr(train_module, "train_and_evaluate", functools.partial(real, on_call=on_call))
    argv = ["--data", small_file, "--epochs", "2", *SMALL_CONFIG_ARGS, "--workdir", str(workdir)]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted at epoch 2, step 4; resume with: python -m "
                                                   "emnist_jax.cnn "), err
    assert "epoch   1:" in out and "epoch   2:" not in out
    monkeypatch.setattr(train_module, "train_and_evaluate", real)
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "emnist_jax.cnn"] and command[-1] == "--resume"
    assert main(command[3:]) == 0
    out = capsys.readouterr().out
    assert "resumed from epoch 2, step 4" in out and f"test     accuracy {reference[2][1]:.4f}" in out
    assert leftovers(workdir) == []


# ---- memory limits ----------------------------------------------------------------------------------

KIB, GIB = 1024, 2**30
MEMORY_CASES = [
    # id, soft limits in bytes (None: unlimited), cores, data bytes, the refusal (None: the run may go on)
    ("ulimit-v-1.5-GB-on-2-cores", {"RLIMIT_AS": 1_500_000 * KIB, "RLIMIT_DATA": None}, 2, 0,
     "the memory limit RLIMIT_AS (ulimit -v) allows 1.43 GiB, and this run needs about 1.74 GiB (JAX's CPU runtime "
     "on 2 core(s), and 0.00 GiB of data); raise it (ulimit -v 1827000 or more) or run on fewer cores (taskset)"),
    ("ulimit-v-1.7-GB-on-2-cores", {"RLIMIT_AS": 1_700_000 * KIB, "RLIMIT_DATA": None}, 2, 0,
     "RLIMIT_AS (ulimit -v) allows 1.62 GiB, and this run needs about 1.74 GiB"),
    ("ulimit-v-1.9-GB-on-2-cores", {"RLIMIT_AS": 1_900_000 * KIB, "RLIMIT_DATA": None}, 2, 0, None),
    ("ulimit-v-1.9-GB-on-1-core", {"RLIMIT_AS": 1_900_000 * KIB, "RLIMIT_DATA": None}, 1, 0, None),
    ("ulimit-v-1.9-GB-and-2-GiB-of-data", {"RLIMIT_AS": 1_900_000 * KIB, "RLIMIT_DATA": None}, 2, 2 * GIB,
     "needs about 3.74 GiB (JAX's CPU runtime on 2 core(s), and 2.00 GiB of data)"),
    ("ulimit-d-500-MB-on-2-cores", {"RLIMIT_AS": None, "RLIMIT_DATA": 500_000 * KIB}, 2, 0,
     "the memory limit RLIMIT_DATA (ulimit -d) allows 0.48 GiB, and this run needs about 0.55 GiB"),
    ("unlimited", {"RLIMIT_AS": None, "RLIMIT_DATA": None}, 64, 10 * GIB, None),
]


@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_a_memory_limit_below_what_the_run_needs_is_refused_up_front(case):
    from emnist_jax.cnn.__main__ import memory_problem

    name, limits, cores, data_bytes, refusal = case
    problem = memory_problem(limits, cores, data_bytes)
    if refusal is None:
        assert problem is None
    else:
        assert problem.startswith("the memory limit ") and refusal in problem and "\n" not in problem, problem


REAL_LIMITS = [
    # id, ulimit option, soft limit (KiB), the start of the line on stderr
    ("ulimit-v-1500000", "-v", 1_500_000, "error: the memory limit RLIMIT_AS (ulimit -v) allows 1.43 GiB"),
    ("ulimit-d-400000", "-d", 400_000, "error: the memory limit RLIMIT_DATA (ulimit -d) allows 0.38 GiB"),
]


@pytest.mark.parametrize("case", REAL_LIMITS, ids=[c[0] for c in REAL_LIMITS])
def test_cli_under_a_real_memory_limit_exits_2_with_one_line_before_jax_starts(case, small_file, tmp_path):
    """Under ``ulimit -v 1500000`` JAX's runtime died of std::bad_alloc (SIGABRT); under ``ulimit -d``
    it could hang. The check runs before JAX is imported."""
    name, option, kib, line = case
    workdir = user_workdir(tmp_path, None)
    before = snapshot(workdir)
    done = subprocess.run(["/bin/sh", "-c", f'ulimit -S {option} {kib} && exec "$0" "$@"', sys.executable, "-m",
                           "emnist_jax.cnn", "--data", small_file, "--epochs", "1", *SMALL_CONFIG_ARGS,
                           "--workdir", str(workdir)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(line), done.stderr[-2000:]
    assert unchanged_except(before, snapshot(workdir)) == []


def test_cli_out_of_memory_during_the_run_is_one_line(small_file, monkeypatch, capsys):
    import jax

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4398046511104 bytes.\nmore")

    monkeypatch.setattr(train_module, "train_and_evaluate", exhausted)
    assert main(["--data", small_file, "--epochs", "1", *SMALL_CONFIG_ARGS]) == 2
    assert capsys.readouterr().err == (
        "error: out of memory (RESOURCE_EXHAUSTED: Out of memory allocating 4398046511104 bytes.); raise the memory "
        "limit, or use a smaller --batch-size or --eval-batch-size\n")


# ---- real signals in a real process ----------------------------------------------------------------

CHILD = """
    import functools, json, os, signal, sys
    import emnist_jax.cnn.train as train
    from emnist_jax.cnn.__main__ import main

    argv, points = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    real = train.train_and_evaluate
    for number, (epoch, step, name) in enumerate(points):
        def on_call(position, at=(epoch, step), signum=getattr(signal, name)):
            if (position.epoch, position.step) == at:
                os.kill(os.getpid(), signum)
        train.train_and_evaluate = functools.partial(real, on_call=on_call)
        print("exit", main(argv + (["--resume"] if number else [])), flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def signalled_child(small_file, tmp_path_factory):
    """The real process of the last test, started with the module so that it runs beside the
    in-process cases (2 cores); the test waits for it. It gets SIGINT, SIGTERM, SIGHUP (a closed
    terminal) and SIGKILL at four seeded positions of a 3-epoch run, each phase resuming the one before."""
    positions = [(e, s) for e in (1, 2, 3) for s in (2, 4, 6)] + [(2, 0), (3, 0)]
    rng = np.random.default_rng(2024)
    chosen = sorted(positions[i] for i in rng.choice(len(positions), 4, replace=False))
    points = [(e, s, name) for (e, s), name in zip(chosen, ("SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"))]
    folder = tmp_path_factory.mktemp("signalled")
    argv = ["--data", small_file, "--epochs", "3", *SMALL_CONFIG_ARGS, "--workdir", str(folder / "work")]
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), json.dumps(argv), json.dumps(points)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "EMNIST_JAX_CACHE": str(folder / "cache")})
    yield child, points, folder / "work"
    child.kill()
    child.communicate()


def test_sigint_sigterm_sighup_and_sigkill_at_seeded_points_then_resume_bit_for_bit(signalled_child, small,
                                                                                    reference):
    """After the SIGKILL, resuming ends with the uninterrupted run's parameters, bit for bit."""
    child, points, workdir = signalled_child
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, stderr[-3000:]
    assert [line for line in stdout.splitlines() if line.startswith("exit")] == ["exit 130"] * 3, stdout
    lines = stderr.strip().splitlines()
    assert [line.split(";")[0] for line in lines] == [f"interrupted at epoch {e}, step {s}" for e, s, _ in points[:3]]
    assert all("resume with: python -m emnist_jax.cnn" in line for line in lines)
    assert leftovers(workdir) == []
    resumed = train_and_evaluate(small, CFG3, workdir=str(workdir), resume=True, progress=False)
    assert flat(resumed.state.params).tobytes() == reference[3][0].tobytes()
    assert resumed.evaluations["test"].accuracy == reference[3][1]
