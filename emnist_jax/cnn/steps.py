"""The study's CNN as pure functions: its model and optimizer objects, the training state, one
Adam step and one evaluation step on a batch.

Nothing here knows about devices or loops: :mod:`emnist_jax.cnn.programs` runs these steps K at a
time under ``jax.jit`` on a mesh, and :mod:`emnist_jax.cnn.train` loops over those programs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from emnist_jax.cnn.config import TrainConfig
from emnist_jax.cnn.model import StudyCNN, initial_params

TrainState = train_state.TrainState


@functools.lru_cache(maxsize=16)
def model_for(n_classes: int, conv_impl: str, precision: str = "default") -> StudyCNN:
    """One model object per setting. The model's ``apply`` and the optimizer are static parts of
    a ``TrainState``: fresh objects per run would make every run compile its programs again."""
    return StudyCNN(n_classes=n_classes, conv_impl=conv_impl, precision=precision)


@functools.lru_cache(maxsize=16)
def optimizer_for(learning_rate: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def create_state(config: TrainConfig, n_classes: int, seed: int | tuple[int, ...] = 0) -> TrainState:
    """Fresh parameters (Keras' initialisers, from ``seed``) and Adam state; ``config`` must be resolved."""
    model = model_for(n_classes, config.conv_impl, config.precision)
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
