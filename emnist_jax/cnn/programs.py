"""The jitted programs the training loop calls: K training steps per call, an epoch's shuffled
batches, and the evaluation's batches in one forward loop; the batch axis is sharded over the
mesh's "data" axis.

The batches index the training images on the devices: each epoch's order is a permutation drawn
with ``jax.random`` from ``(seed, epoch)``, padded with -1 rows that the steps mask out, so the last
partial batch never recompiles.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from emnist_jax.cnn.steps import TrainState, eval_step, train_step


def _shard(arrays: tuple, mesh: Mesh, spec: P) -> tuple:
    """Place arrays inside a jitted function; nothing on one device.

    On one device a sharding constraint only costs (on XLA CPU it made a training step about 20x
    slower, as measured) and there is nothing to partition.
    """
    if mesh.size == 1:
        return arrays
    sharding = NamedSharding(mesh, spec)
    return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)


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


def _eval_calls(params: Any, images: jax.Array, labels: jax.Array, rows: jax.Array, apply_fn: Callable,
                mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    def one_batch(loss: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        def forward(loss: jax.Array) -> tuple[jax.Array, jax.Array]:
            safe = jnp.maximum(rows, 0)
            batch_loss, predictions = _eval_batch(params, images[safe], labels[safe], (rows >= 0).astype(jnp.float32),
                                                  apply_fn, mesh)
            return loss + batch_loss, predictions

        # rows are padded at the end only: a batch whose first row is padding is padding throughout
        return jax.lax.cond(rows[0] >= 0, forward, lambda loss: (loss, jnp.zeros(rows.shape, jnp.int32)), loss)

    return jax.lax.scan(one_batch, jnp.zeros((), jnp.float32), rows)


#: ``eval_calls(params, images, labels, rows, apply_fn=, mesh=)``: the evaluation's batches
#: ``rows`` ((batches, B) row numbers of the images on the devices, -1 = padding) as one compiled
#: forward loop: (summed loss, (batches, B) predictions), replicated on the mesh. Batches of
#: padding only are skipped, so one compiled shape serves sets of every size.
eval_calls = jax.jit(_eval_calls, static_argnames=("apply_fn", "mesh"))
