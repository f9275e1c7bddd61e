"""Mutual information between each pixel and the label, as one jitted JAX function.

Pixels are discretised into ``bins`` equal-width bins of the 0-255 range; the joint counts of
(pixel, bin, class) for all pixels at once are one segment sum (scatter-add) per chunk of
samples, accumulated with ``lax.scan``, so memory stays bounded on the full byclass train set
(697,932 images) and no Python loop runs over pixels or samples. On XLA CPU the segment sum
measured 12x faster than the one-hot matmul formulation (0.26 s vs 3.2 s for 50,000 x 784).

Pixel order is whatever the caller passes. The original study ranks pixels in the files'
(transposed) order; ``emnist_jax.data.file_rows`` gives that order from upright images, and
:func:`file_to_upright` converts an index: raw p is upright (row p % 28, column p // 28).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from emnist_jax.classic.config import is_integer


def file_to_upright(pixel: int | np.ndarray, side: int = 28) -> tuple:
    """File-order pixel index -> upright (row, column)."""
    return np.asarray(pixel) % side, np.asarray(pixel) // side


def mi_from_counts(counts: jax.Array) -> jax.Array:
    """(pixels, bins, classes) joint counts -> (pixels,) mutual information in nats."""
    counts = counts.astype(jnp.float32)
    joint = counts / counts.sum(axis=(1, 2), keepdims=True)
    p_bin = joint.sum(axis=2, keepdims=True)
    p_class = joint.sum(axis=1, keepdims=True)
    ratio = jnp.where(joint > 0, joint / jnp.maximum(p_bin * p_class, 1e-30), 1.0)
    return jnp.sum(joint * jnp.log(ratio), axis=(1, 2))


@partial(jax.jit, static_argnames=("n_classes", "bins", "chunk"))
def joint_counts(features: jax.Array, labels: jax.Array, n_classes: int, bins: int = 16,
                 chunk: int = 4096) -> jax.Array:
    """(N, P) uint8 features and (N,) labels -> (P, bins, n_classes) int32 joint counts.

    Rows past N are padded with label ``n_classes``, a segment that is dropped at the end.
    """
    n, n_pixels = features.shape
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    features = jnp.pad(features, ((0, pad), (0, 0))).reshape(n_chunks, chunk, n_pixels)
    labels = jnp.pad(labels, (0, pad), constant_values=n_classes).reshape(n_chunks, chunk)
    n_segments = n_pixels * bins * (n_classes + 1)

    def add_chunk(counts, block):
        x, y = block
        binned = (x.astype(jnp.int32) * bins) // 256
        segment = (jnp.arange(n_pixels)[None, :] * bins + binned) * (n_classes + 1) + y[:, None]
        return counts + jax.ops.segment_sum(jnp.ones(segment.size, jnp.int32), segment.reshape(-1),
                                            num_segments=n_segments), None

    counts, _ = jax.lax.scan(add_chunk, jnp.zeros(n_segments, jnp.int32), (features, labels))
    return counts.reshape(n_pixels, bins, n_classes + 1)[:, :, :n_classes]


def mutual_information(features: np.ndarray | jax.Array, labels: np.ndarray | jax.Array, n_classes: int,
                       bins: int = 16, chunk: int = 4096) -> jax.Array:
    """Mutual information (nats) between each column of ``features`` (uint8) and ``labels`` (0..n_classes-1)."""
    if not is_integer(n_classes) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if not is_integer(bins) or not 2 <= bins <= 256:
        raise ValueError(f"bins must be an integer in 2..256, got {bins!r}")
    if not is_integer(chunk) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    label_dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, P), got shape {features.shape}")
    if features.dtype != jnp.uint8:
        raise ValueError(f"features must be uint8 pixel values, got {features.dtype}")
    if features.shape[0] == 0:
        raise ValueError("features has no rows: mutual information needs at least one sample")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be ({features.shape[0]},) to match features, got {labels.shape}")
    if not jnp.issubdtype(label_dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {label_dtype}")
    # A label outside 0..n_classes-1 would land in another pixel's or the padding's counts: refuse it.
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes}), found {low}..{high}")
    counts = joint_counts(features, labels.astype(jnp.int32), n_classes=int(n_classes), bins=int(bins),
                          chunk=int(min(chunk, features.shape[0])))
    return mi_from_counts(counts)


def rank_pixels(mi: np.ndarray) -> np.ndarray:
    """Pixel indices by descending MI; ties keep ascending index (the study's order is arbitrary there)."""
    return np.argsort(-np.asarray(mi), kind="stable")
