"""Training and evaluation of the study's CNN: pure jitted steps and a short loop around them.

The data set lives on the devices (uint8, replicated); each epoch draws a permutation with
``jax.random`` from ``(seed, epoch)``, so a run is reproducible and a resumed run replays the
same batches. ``K`` steps run per jitted call (unrolled); the batch axis is sharded
over all devices of a ``Mesh`` (one device is the same code). The last partial batch is
masked rather than reshaped, so it never recompiles. Checkpoints (orbax) are written after
every epoch and on Ctrl-C, with the position inside the epoch, so ``resume`` continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
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
from sklearn.model_selection import train_test_split

from emnist_jax.cnn.config import TrainConfig
from emnist_jax.cnn.evaluate import Evaluation, summarize
from emnist_jax.cnn.model import StudyCNN, n_params
from emnist_jax.data import Dataset


TrainState = train_state.TrainState


def create_state(config: TrainConfig, n_classes: int, key: jax.Array) -> TrainState:
    model = StudyCNN(n_classes=n_classes, conv_impl=config.conv_impl)
    params = jax.jit(model.init)(key, jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]  # one compile, not one per op
    tx = optax.adam(config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _inputs(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32)[..., None] / 255.0


def loss_and_metrics(params: Any, apply_fn: Callable, images: jax.Array, labels: jax.Array,
                     mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy over the unmasked examples, and summed metrics."""
    logits = apply_fn({"params": params}, _inputs(images))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weight = mask.astype(jnp.float32)
    count = weight.sum()
    metrics = {"loss": (losses * weight).sum(), "correct": ((logits.argmax(-1) == labels) * weight).sum(),
               "count": count}
    return (losses * weight).sum() / jnp.maximum(count, 1.0), metrics


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on a batch {images (B, 28, 28) uint8, labels (B,), mask (B,)}.

    An all-masked batch (padding at the end of an epoch) leaves the state unchanged.
    """
    grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, state.apply_fn, batch["images"], batch["labels"], batch["mask"])
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

def initialize_distributed() -> None:
    """Join a multi-host run when its environment is set (coordinator address etc.)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and jax.process_count() == 1:
        jax.distributed.initialize()


def make_mesh(devices: list | None = None) -> Mesh:
    return Mesh(np.asarray(devices or jax.devices()), ("data",))


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array copied to every device of the mesh (every process passes the whole array)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(array))


def _shard_batch(arrays: tuple, mesh: Mesh) -> tuple:
    """Split the batch axis over the mesh's devices.

    Skipped on one device: there the constraint only costs (on XLA CPU it made a training step
    about 20x slower), and one device needs no partitioning.
    """
    if mesh.size == 1:
        return arrays
    sharding = NamedSharding(mesh, P("data"))
    return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=(0, 4))
def train_calls(state: TrainState, images: jax.Array, labels: jax.Array, index: jax.Array,
                sums: dict, mesh: Mesh) -> tuple[TrainState, dict]:
    """K training steps in one jitted call. index: (K, B) rows of the data, -1 = padding.

    The K steps are unrolled rather than scanned: on XLA CPU a ``lax.scan`` around these steps
    ran 2-10x slower than the same steps unrolled (see README, "CNN throughput").
    """
    for rows in index:
        safe = jnp.maximum(rows, 0)
        x, y, mask = _shard_batch((images[safe], labels[safe], rows >= 0), mesh)
        state, metrics = train_step(state, {"images": x, "labels": y, "mask": mask})
        sums = jax.tree.map(jnp.add, sums, metrics)
    return state, sums


@functools.partial(jax.jit, static_argnames=("apply_fn", "mesh"))
def _eval_batch(params: Any, images: jax.Array, labels: jax.Array, mask: jax.Array,
                apply_fn: Callable, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    return eval_step(params, apply_fn, *_shard_batch((images, labels, mask), mesh))


def evaluate(state: TrainState, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
             batch_size: int = 1024, mesh: Mesh | None = None) -> Evaluation:
    """Accuracy, loss, per-class accuracy and confusion on (images, labels); fixed-shape batches."""
    started = time.perf_counter()
    mesh = mesh or make_mesh()
    batch_size = -(-batch_size // mesh.size) * mesh.size
    n = len(labels)
    padded = -(-n // batch_size) * batch_size
    rows = np.arange(padded)
    mask = rows < n
    images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    labels_p = np.concatenate([labels, np.zeros(padded - n, labels.dtype)]).astype(np.int32)
    loss, predictions = 0.0, []
    for start in range(0, padded, batch_size):
        s = slice(start, start + batch_size)
        batch_loss, batch_pred = _eval_batch(state.params, images[s], labels_p[s], mask[s].astype(np.float32),
                                             apply_fn=state.apply_fn, mesh=mesh)
        loss += float(batch_loss)
        predictions.append(np.asarray(batch_pred))
    predictions = np.concatenate(predictions)[:n]
    return summarize(labels, predictions, loss / max(n, 1), classes, seconds=time.perf_counter() - started)


# ---- the training loop -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float        # mean training loss over the epoch (as Keras' running average at epoch end)
    accuracy: float
    seconds: float
    images_per_second: float

    def __str__(self) -> str:
        return (f"epoch {self.epoch:3d}: loss {self.loss:.4f}  accuracy {self.accuracy:.4f}  "
                f"{self.seconds:7.1f} s  {self.images_per_second:8.0f} images/s")


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    config: TrainConfig
    n_params: int
    history: list[EpochMetrics]
    evaluations: dict[str, Evaluation]   # "holdout" (study protocol) and/or "test" (official test file)
    n_train: int
    backend: str
    devices: int


def _check(dataset: Dataset, config: TrainConfig, mesh: Mesh) -> None:
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if config.protocol not in ("study", "official"):
        raise ValueError(f"protocol must be 'study' or 'official', got {config.protocol!r}")
    if config.conv_impl not in ("xla", "slices"):
        raise ValueError(f"conv_impl must be 'xla', 'slices' or 'auto', got {config.conv_impl!r}")
    if config.batch_size < 1 or config.batch_size % mesh.size:
        raise ValueError(f"batch_size must be a positive multiple of the {mesh.size} devices, "
                         f"got {config.batch_size}")
    for name in ("train", "test"):
        images, labels = getattr(dataset, f"{name}_images"), getattr(dataset, f"{name}_labels")
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(f"{name}_images must be (N, 28, 28) uint8, got {images.shape} {images.dtype}")
        if len(labels) != len(images):
            raise ValueError(f"{name}_labels has {len(labels)} entries for {len(images)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= dataset.n_classes):
            raise ValueError(f"{name}_labels must lie in 0..{dataset.n_classes - 1}")


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout) of the train file: the study's seeded 67/33, or all/none."""
    rows = np.arange(len(dataset.train_labels))
    if config.protocol == "official":
        return rows, rows[:0]
    return train_test_split(rows, test_size=config.holdout_fraction, random_state=config.seed)


def _checkpointer(workdir: str):
    import orbax.checkpoint as ocp  # slow to import; only when checkpointing

    return ocp, ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                      options=ocp.CheckpointManagerOptions(max_to_keep=2))


def train_and_evaluate(dataset: Dataset, config: TrainConfig = TrainConfig(), workdir: str | None = None,
                       resume: bool = False, progress: bool = True, devices: list | None = None,
                       on_epoch: Callable[[EpochMetrics], None] | None = None) -> TrainResult:
    """Train the study's CNN on ``dataset`` following ``config`` and evaluate it.

    With ``workdir``, checkpoints go to ``workdir/checkpoints`` after every epoch and on Ctrl-C;
    ``resume=True`` continues from the latest one and reaches the same final parameters.
    ``progress`` shows a tqdm bar; ``on_epoch`` is called with each epoch's metrics.
    """
    from tqdm.auto import tqdm

    initialize_distributed()
    config = config.resolved()
    mesh = make_mesh(devices)
    _check(dataset, config, mesh)
    train_rows, holdout_rows = split_for(dataset, config)
    if config.batch_size > len(train_rows):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_rows)} training images")
    images = replicate(dataset.train_images[train_rows], mesh)
    labels = replicate(dataset.train_labels[train_rows].astype(np.int32), mesh)
    key = jax.random.key(config.seed)
    state = jax.device_put(create_state(config, dataset.n_classes, jax.random.fold_in(key, 0)),
                           NamedSharding(mesh, P()))
    n, batch, k = len(train_rows), config.batch_size, config.steps_per_call
    steps = -(-n // batch)   # the last batch may be partial
    calls = -(-steps // k)   # the last call may hold padding steps, which change nothing

    replicated = NamedSharding(mesh, P())

    def zero_sums() -> dict:  # fresh each epoch (the running sums are donated), placed like the outputs
        return jax.device_put({"loss": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}, replicated)

    history: list[EpochMetrics] = []
    start_epoch, start_call, sums = 0, 0, zero_sums()
    manager = ocp = None
    if workdir:
        ocp, manager = _checkpointer(workdir)
        if resume and manager.latest_step() is not None:
            restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"state": state, "sums": zero_sums()}), meta=ocp.args.JsonRestore()))
            state, sums = restored["state"]["state"], restored["state"]["sums"]
            meta = restored["meta"]
            start_epoch, start_call = meta["epoch"], meta["call"]
            history = [EpochMetrics(**h) for h in meta["history"]]

    def save(epoch: int, call: int, sums: dict) -> None:
        if manager is None:
            return
        step = epoch * calls + call
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"state": state, "sums": sums}),
            meta=ocp.args.JsonSave({"epoch": epoch, "call": call,
                                    "history": [dataclasses.asdict(h) for h in history]})), force=True)
        manager.wait_until_finished()

    epoch, next_call = start_epoch, start_call
    try:
        for epoch in range(start_epoch, config.epochs):
            order = jax.random.permutation(jax.random.fold_in(key, epoch + 1), n)
            index = jnp.full(calls * k * batch, -1, jnp.int32).at[:n].set(order).reshape(calls, k, batch)
            first = start_call if epoch == start_epoch else 0
            sums = sums if epoch == start_epoch else zero_sums()
            bar = tqdm(total=n, initial=min(first * k * batch, n), desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="img", unit_scale=True, disable=not progress, leave=False)
            started = time.perf_counter()
            for call in range(first, calls):
                state, sums = train_calls(state, images, labels, index[call], sums, mesh=mesh)
                next_call = call + 1
                if next_call % config.log_every == 0 or next_call == calls:
                    seen = float(sums["count"])  # the only host sync inside an epoch
                    bar.update(int(seen) - bar.n)
                    bar.set_postfix(loss=f"{float(sums['loss']) / max(seen, 1):.4f}",
                                    acc=f"{float(sums['correct']) / max(seen, 1):.4f}")
            seconds = time.perf_counter() - started
            bar.close()
            count = float(sums["count"])
            trained = n - min(first * k * batch, n)
            history.append(EpochMetrics(epoch + 1, float(sums["loss"]) / count, float(sums["correct"]) / count,
                                        seconds, trained / seconds if seconds else 0.0))
            next_call = 0
            save(epoch + 1, 0, zero_sums())
            if on_epoch:
                on_epoch(history[-1])
    except KeyboardInterrupt:
        jax.block_until_ready(state)
        save(epoch, next_call, sums)
        raise

    evaluations = {}
    if len(holdout_rows):
        evaluations["holdout"] = evaluate(state, dataset.train_images[holdout_rows], dataset.train_labels[holdout_rows],
                                          dataset.classes, config.eval_batch_size, mesh)
    evaluations["test"] = evaluate(state, dataset.test_images, dataset.test_labels, dataset.classes,
                                   config.eval_batch_size, mesh)
    return TrainResult(state, config, n_params(dataset.n_classes), history, evaluations, n,
                       jax.default_backend(), mesh.size)
