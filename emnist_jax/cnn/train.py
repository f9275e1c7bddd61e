"""Training and evaluation of the study's CNN: a short loop around jitted programs.

The train file's images live on the devices (uint8, replicated; on a CPU the loaded array itself,
:mod:`emnist_jax.cnn.placement`); each epoch draws a permutation of the training rows from
``(seed, epoch)``, so a run is reproducible and a resumed run replays the same batches. ``K``
steps (:mod:`emnist_jax.cnn.steps`) run per jitted call (:mod:`emnist_jax.cnn.programs`), scanned
or unrolled per backend (:mod:`emnist_jax.cnn.config`), the batch axis sharded over every device
of every process. The model and optimizer objects are made once per setting, so a second run with
the same settings reuses the compiled programs.

With a workdir, a checkpoint is written after every epoch and when SIGINT/SIGTERM/SIGHUP stops the
run (:mod:`emnist_jax.cnn.checkpoints`, :mod:`emnist_jax.cnn.safepoints`); ``resume`` continues
from it to the same final parameters, bit for bit. One run at a time holds a workdir.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from emnist_jax.cnn.checkpoints import CheckpointError, Checkpoints, data_fingerprint, run_identity
from emnist_jax.cnn.config import EXECUTION_FIELDS, TrainConfig
from emnist_jax.cnn.evaluation import Evaluation, summarize
from emnist_jax.cnn.inputs import Schedule, check_arguments, check_data, schedule_for
from emnist_jax.cnn.interrupts import DeferredSignals, _Forced
from emnist_jax.cnn.model import n_params
from emnist_jax.cnn.placement import make_mesh, place_images, platform_of, replicate, replicate_tree
from emnist_jax.cnn.programs import epoch_index, eval_calls, train_calls
from emnist_jax.cnn.results import EpochMetrics, Position, TrainResult
from emnist_jax.cnn.safepoints import Run
from emnist_jax.cnn.steps import TrainState, create_state, zero_sums
from emnist_jax.data import Dataset
from emnist_jax.devices import initialize_distributed


def train_and_evaluate(dataset: Dataset, config: TrainConfig = TrainConfig(), workdir: str | None = None,
                       resume: bool = False, progress: bool = True, devices: list | None = None,
                       on_epoch: Callable[[EpochMetrics], None] | None = None,
                       on_call: Callable[[Position], None] | None = None) -> TrainResult:
    """Train the study's CNN on ``dataset`` following ``config`` and evaluate it.

    With ``workdir``, checkpoints go to ``workdir/checkpoints`` after every epoch and when
    SIGINT/SIGTERM/SIGHUP stops the run (which then raises :class:`TrainingInterrupted`, a
    ``KeyboardInterrupt``); ``resume=True`` continues from the newest intact one (a fresh start
    when there is none) and reaches the same final parameters as an uninterrupted run.
    ``progress`` shows a tqdm bar; ``on_epoch`` is called with each epoch's metrics and
    ``on_call`` with the position after each jitted call (a ``KeyboardInterrupt`` raised by
    either stops the run like a signal). In a multi-process run (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) every process calls this with the same arguments.

    Raises ``ValueError`` (:class:`~emnist_jax.cnn.checkpoints.CheckpointError` for the workdir)
    with a one-line message on bad input.
    """
    check_arguments(config, workdir, resume, progress, devices, {"on_epoch": on_epoch, "on_call": on_call})
    check_data(dataset)
    if resume and not workdir:
        raise ValueError("resume needs a workdir holding the checkpoints to resume from")
    initialize_distributed()
    mesh = make_mesh(devices)
    schedule = schedule_for(dataset, config, mesh)
    checkpoints = _open_checkpoints(workdir, resume, dataset, schedule) if workdir else None
    try:  # the workdir is locked from here: released whatever happens
        data = _place(dataset, schedule, mesh)
        start = _start_or_resume(checkpoints if resume else None, dataset.n_classes, schedule, mesh)
        with DeferredSignals() as signals:
            run = Run(*start, checkpoints, schedule.steps, signals)
            del start  # the run holds the state from here, and its jitted calls donate it
            compile_seconds = _train(run, data, schedule, mesh, progress, on_epoch, on_call)
            evaluations = _evaluate_trained(run, data, dataset, schedule, mesh)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return TrainResult(run.state, schedule.config, n_params(dataset.n_classes), run.history, evaluations, schedule.n,
                       platform_of(mesh), mesh.size, compile_seconds, jax.process_count(), run.resumed_from)


# ---- before training ---------------------------------------------------------------------------

def _open_checkpoints(workdir: str, resume: bool, dataset: Dataset, schedule: Schedule) -> Checkpoints:
    """The workdir's checkpoints, locked for this run; a fresh run refuses a workdir holding another's."""
    identity = run_identity(schedule.config, dataset.n_classes, schedule.n,
                            data_fingerprint(dataset.train_images, dataset.train_labels, schedule.train_rows))
    checkpoints = Checkpoints(workdir, identity, {f: getattr(schedule.config, f) for f in EXECUTION_FIELDS},
                              process=jax.process_index())
    if not resume and checkpoints.steps():
        checkpoints.close()
        raise CheckpointError(f"{checkpoints.folder}: holds the checkpoints of an earlier run; resume it "
                              "(--resume) or use another workdir")
    return checkpoints


class TrainingData(NamedTuple):
    """The train file on the devices: all its images and labels, the training rows, the shuffling key."""

    images: jax.Array
    labels: jax.Array
    rows: jax.Array
    key: jax.Array


def _place(dataset: Dataset, schedule: Schedule, mesh: Mesh) -> TrainingData:
    """All the file's training images, indexed through the training rows: no copy of them on a CPU."""
    return TrainingData(place_images(dataset.train_images, mesh),
                        replicate(dataset.train_labels.astype(np.int32), mesh),
                        replicate(schedule.train_rows.astype(np.int32), mesh), jax.random.key(schedule.config.seed))


def _start_or_resume(checkpoints: Checkpoints | None, n_classes: int, schedule: Schedule,
                     mesh: Mesh) -> tuple[TrainState, dict, list[EpochMetrics], Position | None]:
    """(state, metric sums, epochs done, position resumed from): fresh, or the newest intact checkpoint's."""
    config = schedule.config
    state = replicate_tree(create_state(config, n_classes, (config.seed, 0)), mesh)
    sums = replicate_tree(zero_sums(), mesh)
    restored = checkpoints.restore(state, sums) if checkpoints is not None else None
    if restored is None:
        return state, sums, [], None
    state, sums, meta = restored
    at = Position(meta["epoch"], meta["step"])
    if at.epoch > config.epochs + 1 or (at.epoch == config.epochs + 1 and at.step):
        raise ValueError(f"{checkpoints.folder}: the checkpoint is at epoch {at.epoch}, step "
                         f"{at.step}, past the {config.epochs} epochs asked for")
    return state, sums, [EpochMetrics(**h) for h in meta["history"]], at


# ---- training ----------------------------------------------------------------------------------

def _train(run: Run, data: TrainingData, schedule: Schedule, mesh: Mesh, progress: bool,
           on_epoch: Callable | None, on_call: Callable | None) -> float:
    """Train from the run's position to the end of the last epoch; the seconds spent compiling."""
    start, epochs, compile_seconds = run.position, schedule.config.epochs, 0.0
    try:
        if start.epoch <= epochs:
            index = _batches(data, schedule, start, mesh)
            compile_seconds = _compile(run, data, index, schedule, mesh)
        if run.stop_requested():
            raise run.stop()
        for epoch in range(start.epoch, epochs + 1):
            if epoch != start.epoch:
                index = _batches(data, schedule, run.position, mesh)
            run.history.append(_epoch(run, data, index, schedule, mesh, progress, on_call))
            _end_epoch(run, mesh, on_epoch, on_call)
    except _Forced:
        # a second signal, maybe inside a jitted call that had already consumed the state:
        # nothing new is saved, the newest checkpoint stays the place to resume from
        raise run.interrupted(run.saved) from None
    return compile_seconds


def _batches(data: TrainingData, schedule: Schedule, at: Position, mesh: Mesh) -> jax.Array:
    """The (calls, K, B) rows of epoch ``at.epoch`` from its step ``at.step`` on."""
    return epoch_index(data.key, at.epoch - 1, at.step, data.rows, batch=schedule.batch, k=schedule.k,
                       calls=schedule.calls, mesh=mesh)


def _compile(run: Run, data: TrainingData, index: jax.Array, schedule: Schedule, mesh: Mesh) -> float:
    """Compile the training program before the first call, so that no epoch's time includes it; its seconds."""
    started = time.perf_counter()
    train_calls.lower(run.state, data.images, data.labels, index, 0, run.sums, mesh=mesh, loop=schedule.config.loop,
                      grad_chunk=schedule.grad_chunk).compile()
    return time.perf_counter() - started


def _epoch(run: Run, data: TrainingData, index: jax.Array, schedule: Schedule, mesh: Mesh, progress: bool,
           on_call: Callable | None) -> EpochMetrics:
    """The rest of the run's epoch, a jitted call and a safe point at a time; the epoch's metrics."""
    config, steps, k = schedule.config, schedule.steps, schedule.k
    epoch, first = run.position.epoch, run.position.step
    done = min(first * schedule.batch, schedule.n)   # images trained before a resume
    bar = _progress_bar(schedule, epoch, done, progress)
    started = time.perf_counter()
    for call in range(-(-(steps - first) // k)):
        run.state, run.sums = train_calls(run.state, data.images, data.labels, index, call, run.sums, mesh=mesh,
                                          loop=config.loop, grad_chunk=schedule.grad_chunk)
        run.position = Position(epoch, min(first + (call + 1) * k, steps))
        if run.position.step == steps:
            break  # the end of an epoch is saved as the start of the next, by _end_epoch
        synced = (call + 1) % config.log_every == 0
        if synced:
            _show(bar, run.sums)  # the only host sync inside an epoch
        run.call(on_call, run.position)
        if run.stop_requested(synced):
            raise run.stop()
    _show(bar, run.sums)  # waits for the epoch's last call
    seconds = time.perf_counter() - started
    bar.close()
    count = float(run.sums["count"])
    return EpochMetrics(epoch, float(run.sums["loss"]) / count, float(run.sums["correct"]) / count, seconds,
                        (schedule.n - done) / seconds if seconds else 0.0)


def _end_epoch(run: Run, mesh: Mesh, on_epoch: Callable | None, on_call: Callable | None) -> None:
    """Move the run to the start of the next epoch and save it there: a safe point."""
    run.position = Position(run.position.epoch + 1, 0)
    run.sums = replicate_tree(zero_sums(), mesh)
    run.save()
    run.call(on_call, run.position)
    run.call(on_epoch, run.history[-1])
    if run.stop_requested():
        raise run.stop()


def _progress_bar(schedule: Schedule, epoch: int, done: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=schedule.n, initial=done, desc=f"epoch {epoch}/{schedule.config.epochs}", unit="img",
                unit_scale=True, disable=not progress or jax.process_index() != 0, leave=False)


def _show(bar: Any, sums: dict) -> None:
    seen = float(sums["count"])
    bar.update(int(seen) - bar.n)
    bar.set_postfix(loss=f"{float(sums['loss']) / max(seen, 1):.4f}",
                    acc=f"{float(sums['correct']) / max(seen, 1):.4f}")


# ---- evaluation --------------------------------------------------------------------------------

def _evaluate_trained(run: Run, data: TrainingData, dataset: Dataset, schedule: Schedule,
                      mesh: Mesh) -> dict[str, Evaluation]:
    """The trained state on the hold-out rows (study protocol), read from the training images
    already on the devices, and on the test file, placed once; a signal stops it between calls."""
    batch_size, evaluations = schedule.config.eval_batch_size, {}
    try:
        if len(schedule.holdout_rows):
            started = time.perf_counter()
            loss, predictions = _predict(run.state, data.images, data.labels, schedule.holdout_rows, batch_size, mesh,
                                         run.check_evaluation)
            evaluations["holdout"] = summarize(dataset.train_labels[schedule.holdout_rows], predictions, loss,
                                               dataset.classes, seconds=time.perf_counter() - started)
        evaluations["test"] = evaluate(run.state, dataset.test_images, dataset.test_labels, dataset.classes,
                                       batch_size, mesh, on_call=run.check_evaluation)
        run.check_evaluation(at_end=True)
    except _Forced:
        raise run.interrupted(run.saved, during="evaluation") from None
    return evaluations


def eval_batch_for(batch_size: int, n: int) -> int:
    """``batch_size``, but no larger than the power of two at or above ``n``: a batch beyond the
    images evaluated would only be padding (one of 10^8 images asked for 73 GiB), and powers of
    two keep the sets of one run (hold-out, test) on one compiled shape."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


#: The most images one compiled evaluation call covers: a set takes a few calls (the host
#: dispatches a few programs, not a batch at a time), and a signal waits for one call at most.
EVAL_IMAGES_PER_CALL = 65_536


def eval_index(rows: np.ndarray, batch_size: int, mesh_size: int) -> np.ndarray:
    """The (calls, batches, B) image numbers of an evaluation, ``rows`` in order, padded with -1.

    B is :func:`eval_batch_for` rounded to the mesh; batches per call the smaller of
    :data:`EVAL_IMAGES_PER_CALL` / B and the power of two at or above the batches needed, so the
    sets of one run share one compiled shape and a small set does not loop over empty batches.
    """
    n = len(rows)
    batch = -(-eval_batch_for(batch_size, n) // mesh_size) * mesh_size
    batches = max(-(-n // batch), 1)
    per_call = min(max(EVAL_IMAGES_PER_CALL // batch, 1), 1 << (batches - 1).bit_length())
    calls = -(-batches // per_call)
    index = np.full(calls * per_call * batch, -1, np.int32)
    index[:n] = rows
    return index.reshape(calls, per_call, batch)


def _predict(state: TrainState, images: jax.Array, labels: jax.Array, rows: np.ndarray, batch_size: int,
             mesh: Mesh, on_call: Callable[[], None] | None) -> tuple[float, np.ndarray]:
    """(mean loss, predictions) of ``state`` on the images ``rows`` of ``images`` (on the devices)."""
    losses, predictions = [], []
    for call_rows in eval_index(rows, batch_size, mesh.size):   # a small int32 transfer per call
        loss, predicted = eval_calls(state.params, images, labels, replicate(call_rows, mesh), apply_fn=state.apply_fn,
                                     mesh=mesh)
        losses.append(loss)   # read back once at the end: no host sync per call
        predictions.append(predicted)
        if on_call:
            on_call()
    loss = float(np.sum(np.asarray(jax.device_get(losses), np.float64)))
    return loss / max(len(rows), 1), np.concatenate(jax.device_get(predictions), axis=None)[:len(rows)]


def evaluate(state: TrainState, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
             batch_size: int = 1024, mesh: Mesh | None = None,
             on_call: Callable[[], None] | None = None, rows: np.ndarray | None = None) -> Evaluation:
    """Accuracy, loss, per-class accuracy and confusion on (images, labels), forward only.

    The images go to the devices once (on a CPU the array itself where it can, as for training:
    :func:`~emnist_jax.cnn.placement.place_images`) and their batches of ``batch_size`` run in
    one compiled loop, a few calls per set. ``rows``, when given, picks the images and labels
    evaluated. Batches larger than the set are cut down (:func:`eval_batch_for`): the same
    result. ``on_call`` is called after each call (the training loop stops there on a signal).
    """
    started = time.perf_counter()
    mesh = mesh or make_mesh()
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    loss, predictions = _predict(state, place_images(images, mesh), replicate(labels.astype(np.int32), mesh), rows,
                                 batch_size, mesh, on_call)
    return summarize(labels[rows], predictions, loss, classes, seconds=time.perf_counter() - started)
