"""Training and evaluation of the study's CNN: pure jitted steps and a short loop around them.

The train file's images live on the devices (uint8, replicated; on a CPU the loaded array itself);
each epoch draws a permutation of the training rows with ``jax.random`` from ``(seed, epoch)``, so
a run is reproducible and a resumed run replays the same batches. ``K`` steps run per jitted call,
scanned or unrolled (per backend, see :mod:`emnist_jax.cnn.config`); the batch axis is sharded
over all devices of a ``Mesh``, which spans every process of a multi-process run (one device is
the same code). The last partial batch
is masked rather than reshaped, so it never recompiles. The model and optimizer objects are made
once per setting, so a second run with the same settings reuses the compiled programs.

With a workdir, a checkpoint is written after every epoch and when SIGINT/SIGTERM/SIGHUP stops the
run (:mod:`emnist_jax.cnn.checkpoints`, :mod:`emnist_jax.cnn.interrupts`); ``resume`` continues
from it to the same final parameters, bit for bit. One run at a time holds a workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from emnist_jax.cnn.checkpoints import CheckpointError, Checkpoints, data_fingerprint, run_identity
from emnist_jax.cnn.config import EXECUTION_FIELDS, TrainConfig
from emnist_jax.cnn.evaluation import Evaluation, summarize
from emnist_jax.cnn.interrupts import DeferredSignals, TrainingInterrupted, _Forced
from emnist_jax.cnn.model import StudyCNN, initial_params, n_params
from emnist_jax.data import Dataset
from emnist_jax.data.formats import ALIGNMENT, aligned_empty
from emnist_jax.devices import initialize_distributed

TrainState = train_state.TrainState


# ---- the model, its optimizer and the pure steps ------------------------------------------------

@functools.lru_cache(maxsize=16)
def model_for(n_classes: int, conv_impl: str) -> StudyCNN:
    """One model object per setting. The model's ``apply`` and the optimizer are static parts of
    a ``TrainState``: fresh objects per run would make every run compile its programs again."""
    return StudyCNN(n_classes=n_classes, conv_impl=conv_impl)


@functools.lru_cache(maxsize=16)
def optimizer_for(learning_rate: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def create_state(config: TrainConfig, n_classes: int, seed: int | tuple[int, ...] = 0) -> TrainState:
    """Fresh parameters (Keras' initialisers, from ``seed``) and Adam state; ``config`` must be resolved."""
    model = model_for(n_classes, config.conv_impl)
    params = jax.tree.map(jnp.asarray, initial_params(model, seed))
    return TrainState.create(apply_fn=model.apply, params=params,
                             tx=optimizer_for(config.learning_rate, config.b1, config.b2, config.eps))


def metric_sums(loss: Any, correct: Any, count: Any) -> dict:
    """The summed training metrics, the one place their layout is written."""
    return {"loss": loss, "correct": correct, "count": count}


def zero_sums() -> dict:
    return metric_sums(*(jnp.zeros((), jnp.float32) for _ in range(3)))


def _inputs(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32)[..., None] / 255.0


def loss_and_metrics(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array,
                     mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy over the unmasked examples, and summed metrics."""
    logits = apply_fn({"params": params}, _inputs(images))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weight = mask.astype(jnp.float32)
    count = weight.sum()
    metrics = metric_sums((losses * weight).sum(), ((logits.argmax(-1) == labels) * weight).sum(), count)
    return metrics["loss"] / jnp.maximum(count, 1.0), metrics


def _chunked_value_and_grad(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array,
                            mask: jax.Array, chunk: int) -> tuple[Any, dict]:
    """Gradient of the batch's mean loss, summed over chunks of ``chunk`` images under a
    ``lax.scan``: the same gradient (float rounding aside), computed on cache-sized activations."""
    def summed(params, images, labels, mask):
        mean, metrics = loss_and_metrics(params, apply_fn, images, labels, mask)
        return mean * jnp.maximum(metrics["count"], 1.0), metrics

    def one_chunk(acc, xs):
        (_, metrics), grads = jax.value_and_grad(summed, has_aux=True)(params, *xs)
        return jax.tree.map(jnp.add, acc, (grads, metrics)), None

    n = images.shape[0] // chunk
    split = lambda a: a.reshape(n, chunk, *a.shape[1:])  # noqa: E731
    zero = (jax.tree.map(jnp.zeros_like, params), zero_sums())
    (grads, metrics), _ = jax.lax.scan(one_chunk, zero, (split(images), split(labels), split(mask)))
    return jax.tree.map(lambda g: g / jnp.maximum(metrics["count"], 1.0), grads), metrics


def train_step(state: TrainState, batch: dict, grad_chunk: int = 0) -> tuple[TrainState, dict]:
    """One Adam step on a batch {images (B, 28, 28) uint8, labels (B,), mask (B,)}.

    An all-masked batch (padding at the end of an epoch) leaves the state unchanged. With
    ``grad_chunk`` (dividing B, smaller than B) the gradient is summed over chunks of that many images.
    """
    images, labels, mask = batch["images"], batch["labels"], batch["mask"]
    if 0 < grad_chunk < images.shape[0] and images.shape[0] % grad_chunk == 0:
        grads, metrics = _chunked_value_and_grad(state.params, state.apply_fn, images, labels, mask, grad_chunk)
    else:
        grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, state.apply_fn, images, labels, mask)
    new_state = state.apply_gradients(grads=grads)
    has_data = metrics["count"] > 0
    state = jax.tree.map(lambda new, old: jnp.where(has_data, new, old), new_state, state)
    return state, metrics


def eval_step(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array,
              mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed loss over unmasked examples, predictions)."""
    logits = apply_fn({"params": params}, _inputs(images))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return (losses * mask).sum(), logits.argmax(-1)


# ---- devices --------------------------------------------------------------------------------

def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis ("data") mesh over ``devices``, by default every device of every process."""
    return Mesh(np.asarray(devices or jax.devices()), ("data",))


def platform_of(mesh: Mesh) -> str:
    """"cpu", "gpu" or "tpu": the kind of device the mesh holds (CUDA and ROCm devices say "gpu")."""
    return mesh.devices.flat[0].platform


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array copied to every device of the mesh (every process passes the whole array)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(array))


def place_images(images: np.ndarray, mesh: Mesh) -> jax.Array:
    """``images`` on every device of the mesh; on a CPU, the host array itself when it can be.

    XLA's CPU client uses a C-ordered host buffer that starts at a multiple of 64 bytes as the
    device array without copying it, and :func:`emnist_jax.data.load` gives such arrays: the
    training images then take no second copy (547 MB at ByClass size; a gathered copy of the
    training rows held 0.34 GiB more). The caller must not change ``images`` while the result is
    in use. Elsewhere the devices get their copy of the whole array as they would anyway.
    """
    if platform_of(mesh) == "cpu" and not (images.flags.c_contiguous and images.ctypes.data % ALIGNMENT == 0):
        aligned = aligned_empty(images.shape, images.dtype)
        aligned[...] = images
        images = aligned
    return replicate(images, mesh)


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda leaf: replicate(np.asarray(leaf), mesh), tree)


def _shard(arrays: tuple, mesh: Mesh, spec: P) -> tuple:
    """Place arrays inside a jitted function; nothing on one device.

    On one device a sharding constraint only costs (on XLA CPU it made a training step about 20x
    slower, as measured) and there is nothing to partition.
    """
    if mesh.size == 1:
        return arrays
    sharding = NamedSharding(mesh, spec)
    return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)


# ---- jitted programs ------------------------------------------------------------------------

def _train_calls(state: TrainState, images: jax.Array, labels: jax.Array, index: jax.Array, call: jax.Array,
                 sums: dict, mesh: Mesh, loop: str = "unroll", grad_chunk: int = 0) -> tuple[TrainState, dict]:
    def one_step(carry: tuple, rows: jax.Array) -> tuple:
        state, sums = carry
        safe = jnp.maximum(rows, 0)
        x, y, mask = _shard((images[safe], labels[safe], rows >= 0), mesh, P("data"))
        state, metrics = train_step(state, {"images": x, "labels": y, "mask": mask}, grad_chunk)
        return (state, jax.tree.map(jnp.add, sums, metrics)), None

    rows = jax.lax.dynamic_index_in_dim(index, call, keepdims=False)   # (K, B)
    if loop == "scan":
        carry, _ = jax.lax.scan(one_step, (state, sums), rows)
    else:
        carry = (state, sums)
        for k in range(rows.shape[0]):
            carry, _ = one_step(carry, rows[k])
    return carry


#: K training steps in one jitted call: ``train_calls(state, images, labels, index, call, sums,
#: mesh=, loop=, grad_chunk=)`` runs the rows ``index[call]`` ((K, B) row numbers of ``images``,
#: -1 = padding) and returns the new state and the metric sums plus this call's. ``loop="scan"``
#: compiles the step once; ``"unroll"`` compiles K copies (on XLA CPU a scan over XLA-convolution
#: steps was 10-40x slower; docs/performance.md, 'CNN throughput on a CPU'). ``grad_chunk``: see
#: :func:`train_step`. ``state`` and ``sums`` are donated.
train_calls = jax.jit(_train_calls, static_argnames=("mesh", "loop", "grad_chunk"), donate_argnames=("state", "sums"))


def _epoch_index(key: jax.Array, epoch: jax.Array, start: jax.Array, rows: jax.Array, batch: int, k: int,
                 calls: int, mesh: Mesh) -> jax.Array:
    order = rows[jax.random.permutation(jax.random.fold_in(key, epoch + 1), len(rows))]
    padded = jnp.concatenate([order, jnp.full(calls * k * batch, -1, jnp.int32)])
    rest = jax.lax.dynamic_slice_in_dim(padded, start * batch, calls * k * batch)
    return _shard((rest.reshape(calls, k, batch),), mesh, P())[0]


_epoch_index_jit = jax.jit(_epoch_index, static_argnames=("batch", "k", "calls", "mesh"))


def epoch_index(key: jax.Array, epoch: int, start: int, rows: jax.Array, batch: int, k: int, calls: int,
                mesh: Mesh) -> jax.Array:
    """The (calls, K, B) image numbers of epoch ``epoch`` (0-based) from its step ``start`` on: ``rows``
    (the training rows, int32) shuffled, padded with -1; replicated on the mesh, placed like every
    other input of ``train_calls`` (one program)."""
    index = _epoch_index_jit(key, epoch, start, rows, batch=batch, k=k, calls=calls, mesh=mesh)
    return jax.device_put(index, NamedSharding(mesh, P()))


def _eval_batch(params: Any, images: jax.Array, labels: jax.Array, mask: jax.Array, apply_fn: Callable,
                mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    loss, predictions = eval_step(params, apply_fn, *_shard((images, labels, mask), mesh, P("data")))
    return _shard((loss, predictions), mesh, P())  # replicated, so every process can read them


#: ``eval_batch(params, images, labels, mask, apply_fn=, mesh=)``: (summed loss of the unmasked
#: examples, predictions) for one batch, both replicated on the mesh.
eval_batch = jax.jit(_eval_batch, static_argnames=("apply_fn", "mesh"))


def eval_batch_for(batch_size: int, n: int) -> int:
    """``batch_size``, but no larger than the power of two at or above ``n``: a batch beyond the
    images evaluated would only be padding (one of 10^8 images asked for 73 GiB), and powers of
    two keep the sets of one run (hold-out, test) on one compiled shape."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def evaluate(state: TrainState, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
             batch_size: int = 1024, mesh: Mesh | None = None,
             on_batch: Callable[[], None] | None = None, rows: np.ndarray | None = None) -> Evaluation:
    """Accuracy, loss, per-class accuracy and confusion on (images, labels); fixed-shape batches.

    ``rows``, when given, picks the images and labels evaluated (a batch at a time: no copy of the
    set). Batches larger than the set are cut down (:func:`eval_batch_for`): the same result.
    ``on_batch`` is called after each batch (the training loop uses it to stop on a signal).
    """
    started = time.perf_counter()
    mesh = mesh or make_mesh()
    if rows is not None:
        labels = labels[rows]
    n = len(labels)
    batch_size = -(-eval_batch_for(batch_size, n) // mesh.size) * mesh.size
    padded = -(-n // batch_size) * batch_size
    mask = (np.arange(padded) < n).astype(np.float32)
    losses, predictions = [], []
    for start in range(0, padded, batch_size):
        s = slice(start, start + batch_size)
        # Only the last batch is padded (a padded copy of the whole set cost 180 MB at ByClass's hold-out)
        x, y = (images[s] if rows is None else images[rows[s]]), labels[s].astype(np.int32)
        if len(y) < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - len(y), *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - len(y), np.int32)])
        batch_loss, batch_pred = eval_batch(state.params, replicate(x, mesh), replicate(y, mesh),
                                            replicate(mask[s], mesh), apply_fn=state.apply_fn, mesh=mesh)
        losses.append(batch_loss)   # read back once at the end: no host sync per batch
        predictions.append(batch_pred)
        if on_batch:
            on_batch()
    loss = float(np.sum(np.asarray(jax.device_get(losses), np.float64)))
    predictions = np.concatenate(jax.device_get(predictions))[:n]
    return summarize(labels, predictions, loss / max(n, 1), classes, seconds=time.perf_counter() - started)


# ---- the training loop -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float        # mean training loss over the epoch (as Keras' running average at epoch end)
    accuracy: float
    seconds: float     # training only: compilation happens before the first epoch (TrainResult.compile_seconds)
    images_per_second: float

    def __str__(self) -> str:
        return (f"epoch {self.epoch:3d}: loss {self.loss:.4f}  accuracy {self.accuracy:.4f}  "
                f"{self.seconds:7.1f} s  {self.images_per_second:8.0f} images/s")


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` (1-based) being trained and ``step`` steps of it done."""

    epoch: int
    step: int


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    config: TrainConfig                  # resolved: the per-backend choices that ran
    n_params: int
    history: list[EpochMetrics]
    evaluations: dict[str, Evaluation]   # "holdout" (study protocol) and/or "test" (official test file)
    n_train: int
    backend: str                         # "cpu", "gpu" or "tpu"
    devices: int                         # over all processes
    compile_seconds: float = 0.0         # tracing + compiling the training program (~1 ms when reused)
    processes: int = 1
    resumed_from: Position | None = None  # where a resumed run started


def _check_data(dataset: Dataset) -> None:
    """The dataset as training needs it, or a one-line ValueError naming the part that is not."""
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be an emnist_jax.data.Dataset, got {type(dataset).__name__}")
    if not dataset.classes:
        raise ValueError("dataset.classes is empty: there is no class to learn")
    for name in ("train", "test"):
        images, labels = getattr(dataset, f"{name}_images"), getattr(dataset, f"{name}_labels")
        if not isinstance(images, np.ndarray) or images.ndim != 3 or images.shape[1:] != (28, 28) \
                or images.dtype != np.uint8:
            raise ValueError(f"{name}_images must be (N, 28, 28) uint8, got {_shape_of(images)}")
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"{name}_labels must be a 1-D array of integer class numbers, got {_shape_of(labels)}")
        if len(labels) != len(images):
            raise ValueError(f"{name}_labels has {len(labels)} entries for {len(images)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= dataset.n_classes):
            raise ValueError(f"{name}_labels must lie in 0..{dataset.n_classes - 1}")


def _shape_of(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.shape} {value.dtype}"
    return type(value).__name__


def _check_arguments(config: Any, workdir: Any, resume: Any, progress: Any, devices: Any,
                     callbacks: dict[str, Any]) -> None:
    """train_and_evaluate's other arguments, each checked before any work (a one-line ValueError)."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if workdir is not None and (not isinstance(workdir, (str, os.PathLike)) or workdir == ""):
        raise ValueError(f"workdir must be a folder path or None, got {workdir!r}")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if devices is not None and (not isinstance(devices, (list, tuple)) or not devices):
        raise ValueError(f"devices must be a non-empty list of JAX devices or None, got {devices!r}")
    for name, function in callbacks.items():
        if function is not None and not callable(function):
            raise ValueError(f"{name} must be callable or None, got {type(function).__name__}")


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout) of the train file: the study's seeded 67/33, or all/none.

    The study's split is ``sklearn.model_selection.train_test_split(rows, test_size=0.33,
    random_state=seed)``; this computes the same rows the way it does (a ``RandomState(seed)``
    permutation, the first ceil(0.33 n) held out) without importing scikit-learn (2 s).
    """
    n = len(dataset.train_labels)
    rows = np.arange(n)
    if config.protocol == "official":
        return rows, rows[:0]
    n_test = math.ceil(config.holdout_fraction * n)
    permutation = np.random.RandomState(config.seed).permutation(n)
    return rows[permutation[n_test:]], rows[permutation[:n_test]]


def _any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


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
    from tqdm.auto import tqdm

    _check_arguments(config, workdir, resume, progress, devices, {"on_epoch": on_epoch, "on_call": on_call})
    _check_data(dataset)
    if resume and not workdir:
        raise ValueError("resume needs a workdir holding the checkpoints to resume from")
    initialize_distributed()
    mesh = make_mesh(devices)
    config = config.resolved(platform_of(mesh))
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size must be a multiple of the {mesh.size} devices, got {config.batch_size}")
    train_rows, holdout_rows = split_for(dataset, config)
    n, batch = len(train_rows), config.batch_size
    if batch > n:
        raise ValueError(f"batch_size {batch} is larger than the {n} training images")
    steps = -(-n // batch)                           # per epoch; the last batch may be partial
    k = min(config.steps_per_call, steps)            # more steps per call than an epoch holds is padding
    config = dataclasses.replace(config, steps_per_call=k)
    calls = -(-steps // k)                           # per epoch; the last call may hold padding steps
    grad_chunk = config.grad_chunk if mesh.size == 1 else 0   # chunks of a batch split over devices: no

    checkpoints = None
    if workdir:
        identity = run_identity(config, dataset.n_classes, n,
                                data_fingerprint(dataset.train_images, dataset.train_labels, train_rows))
        checkpoints = Checkpoints(workdir, identity, {f: getattr(config, f) for f in EXECUTION_FIELDS},
                                  process=jax.process_index())
        if not resume and checkpoints.steps():
            checkpoints.close()
            raise CheckpointError(f"{checkpoints.folder}: holds the checkpoints of an earlier run; resume it "
                                  "(--resume) or use another workdir")

    try:  # the workdir is locked from here: released whatever happens
        # all the file's training images, indexed through the training rows: no copy of them on a CPU
        images = place_images(dataset.train_images, mesh)
        labels = replicate(dataset.train_labels.astype(np.int32), mesh)
        rows = replicate(train_rows.astype(np.int32), mesh)
        key = jax.random.key(config.seed)
        state = replicate_tree(create_state(config, dataset.n_classes, (config.seed, 0)), mesh)
        sums = replicate_tree(zero_sums(), mesh)

        history: list[EpochMetrics] = []
        position, resumed_from = Position(1, 0), None
        if resume and checkpoints is not None:
            restored = checkpoints.restore(state, sums)
            if restored is not None:
                state, sums, meta = restored
                position = resumed_from = Position(meta["epoch"], meta["step"])
                history = [EpochMetrics(**h) for h in meta["history"]]
                if position.epoch > config.epochs + 1 or (position.epoch == config.epochs + 1 and position.step):
                    raise ValueError(f"{checkpoints.folder}: the checkpoint is at epoch {position.epoch}, step "
                                     f"{position.step}, past the {config.epochs} epochs asked for")
        saved = resumed_from   # the newest position on disk
        single = jax.process_count() == 1

        def save(at: Position, sums: dict) -> None:
            nonlocal saved
            if checkpoints is not None and at != Position(1, 0):
                with signals.critical():
                    checkpoints.save((at.epoch - 1) * steps + at.step, state, sums, {
                        "epoch": at.epoch, "step": at.step, "history": [dataclasses.asdict(h) for h in history]})
                saved = at

        def interrupted(at: Position | None, during: str = "training") -> TrainingInterrupted:
            """The exception to raise at ``at`` (None: the run had not started)."""
            at = at or Position(1, 0)
            folder = str(checkpoints.folder) if checkpoints is not None and saved == at else None
            return TrainingInterrupted(at.epoch, at.step, folder, signals.name, during)

        def stop_here(at: Position) -> TrainingInterrupted:
            """Stop at a safe point (between calls, the state whole), saving ``at`` first."""
            jax.block_until_ready(state)
            save(at, sums)
            return interrupted(at)

        def signalled() -> bool:
            return signals.received is not None

        compile_seconds = 0.0
        with DeferredSignals() as signals:
            try:
                start = position
                if start.epoch <= config.epochs:
                    index = epoch_index(key, start.epoch - 1, start.step, rows, batch=batch, k=k, calls=calls,
                                        mesh=mesh)
                    started = time.perf_counter()
                    train_calls.lower(state, images, labels, index, 0, sums, mesh=mesh, loop=config.loop,
                                      grad_chunk=grad_chunk).compile()
                    compile_seconds = time.perf_counter() - started
                if _any_process(signalled()):
                    raise stop_here(position)
                for epoch in range(start.epoch, config.epochs + 1):
                    first = start.step if epoch == start.epoch else 0
                    if epoch != start.epoch:
                        sums = replicate_tree(zero_sums(), mesh)
                        index = epoch_index(key, epoch - 1, 0, rows, batch=batch, k=k, calls=calls, mesh=mesh)
                    bar = tqdm(total=n, initial=min(first * batch, n), desc=f"epoch {epoch}/{config.epochs}",
                               unit="img", unit_scale=True, disable=not progress or jax.process_index() != 0,
                               leave=False)
                    started = time.perf_counter()
                    for call in range(-(-(steps - first) // k)):
                        state, sums = train_calls(state, images, labels, index, call, sums, mesh=mesh,
                                                    loop=config.loop, grad_chunk=grad_chunk)
                        position = Position(epoch, min(first + (call + 1) * k, steps))
                        if position.step == steps:
                            break  # the end of an epoch is saved as the start of the next, below
                        synced = (call + 1) % config.log_every == 0
                        if synced:
                            _show(bar, sums)  # the only host sync inside an epoch
                        _callback(on_call, position, lambda: stop_here(position))
                        if (signalled() if single else synced and _any_process(signalled())):
                            raise stop_here(position)
                    _show(bar, sums)  # waits for the epoch's last call
                    seconds = time.perf_counter() - started
                    bar.close()
                    count = float(sums["count"])
                    trained = n - min(first * batch, n)
                    history.append(EpochMetrics(epoch, float(sums["loss"]) / count, float(sums["correct"]) / count,
                                                seconds, trained / seconds if seconds else 0.0))
                    position = Position(epoch + 1, 0)
                    sums = replicate_tree(zero_sums(), mesh)
                    save(position, sums)
                    _callback(on_call, position, lambda: stop_here(position))
                    _callback(on_epoch, history[-1], lambda: stop_here(position))
                    if _any_process(signalled()):
                        raise stop_here(position)
            except _Forced:
                # a second signal, maybe inside a jitted call that had already consumed the state:
                # nothing new is saved, the newest checkpoint stays the place to resume from
                raise interrupted(saved) from None

            def check_signal() -> None:  # between evaluation batches; all processes run them together
                if single and signalled():
                    raise interrupted(saved, during="evaluation")

            del images, labels  # off the devices before the evaluation's batches arrive (a copy, off a CPU)
            evaluations = {}
            try:
                if len(holdout_rows):
                    evaluations["holdout"] = evaluate(state, dataset.train_images, dataset.train_labels,
                                                      dataset.classes, config.eval_batch_size, mesh,
                                                      on_batch=check_signal, rows=holdout_rows)
                evaluations["test"] = evaluate(state, dataset.test_images, dataset.test_labels, dataset.classes,
                                               config.eval_batch_size, mesh, on_batch=check_signal)
                if not single and _any_process(signalled()):  # several processes agree once, at the end
                    raise interrupted(saved, during="evaluation")
            except _Forced:
                raise interrupted(saved, during="evaluation") from None
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return TrainResult(state, config, n_params(dataset.n_classes), history, evaluations, n, platform_of(mesh),
                       mesh.size, compile_seconds, jax.process_count(), resumed_from)


def _show(bar: Any, sums: dict) -> None:
    seen = float(sums["count"])
    bar.update(int(seen) - bar.n)
    bar.set_postfix(loss=f"{float(sums['loss']) / max(seen, 1):.4f}",
                    acc=f"{float(sums['correct']) / max(seen, 1):.4f}")


def _callback(function: Callable | None, argument: Any, stop_here: Callable) -> None:
    """Call a user callback at a safe point; its KeyboardInterrupt stops the run like a signal."""
    if function is None:
        return
    try:
        function(argument)
    except _Forced:
        raise
    except KeyboardInterrupt:
        raise stop_here() from None
