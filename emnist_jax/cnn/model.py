"""The original study's CNN (section 6.2) in Flax.

Conv 32/64/128 (3x3, 'same') each followed by LeakyReLU(0.1) and 2x2 max-pool ('same'
padding: 28 -> 14 -> 7 -> 4), Dense 128, LeakyReLU, Dense logits. Kernels are Glorot-uniform
and biases zero, as Keras' defaults (drawn on the host by :func:`initial_params`). 362,942 parameters for 62 classes.

Interchangeable ways to compute the same layers (same parameters, same numbers to float
rounding), chosen per backend by measurement (``emnist_jax.cnn.config``):
- ``"xla"``: ``lax.conv_general_dilated``, XLA's native convolution (fast on GPU/TPU);
- ``"slices"``: each 3x3 convolution as 9 shifted slices concatenated and one matmul, whose
  weight gradient is a plain matmul; on XLA CPU it measured 1.2-1.8x faster than ``"xla"``;
- ``"fused"`` (CPU, needs g++): our C++ kernels, one call per block forward and backward: a direct
  convolution a pooling window at a time for conv1, Winograd for conv2 and conv3 (F(2x2, 3x3) in
  training, F(4x4, 3x3) in evaluation), bias, LeakyReLU and pool applied as each output tile is made
  (``emnist_jax.cnn.fused``);
  shapes it does not take (channels not multiples of 16) use the slices form;
- ``"onednn"`` (CPU, optional extra): oneDNN's direct convolution with bias and LeakyReLU fused,
  the pooling and its backward in one C++ pass each, input and weight gradients each one oneDNN
  call (``emnist_jax.cnn.onednn``).
Max-pooling is a reshape and a max in the XLA forms (``reduce_window``'s backward pass was half of
the step time on CPU).

``precision`` (:data:`emnist_jax.cnn.config.PRECISIONS`) sets the arithmetic of the XLA forms'
products: JAX's default, true float32, TF32, or the layers computed in bfloat16. Parameters are
float32 under every choice and the logits come out float32, so the loss, the gradients and Adam's
state stay float32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FILTERS = (32, 64, 128)
HIDDEN = 128


def n_params(n_classes: int = 62, filters: tuple[int, ...] = FILTERS, hidden: int = HIDDEN) -> int:
    """Parameter count of the architecture, derived layer by layer (= Keras' model.summary())."""
    count, channels, side = 0, 1, 28
    for f in filters:
        count += (3 * 3 * channels + 1) * f   # kernel + bias
        channels, side = f, -(-side // 2)      # 'same' pooling rounds up
    count += (side * side * channels + 1) * hidden
    return count + (hidden + 1) * n_classes


def max_pool_same(x: jax.Array) -> jax.Array:
    """2x2/2 max-pool with TensorFlow 'SAME' padding (the extra row/column at bottom/right)."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c).max(axis=(2, 4))


#: lax's precision argument and the layers' dtype for each ``precision`` setting
_ARITHMETIC = {"default": (None, jnp.float32), "float32": ("highest", jnp.float32),
               "tensorfloat32": ("tensorfloat32", jnp.float32), "bfloat16": (None, jnp.bfloat16)}


def conv3x3_slices(x: jax.Array, kernel: jax.Array, precision: str | None = None) -> jax.Array:
    """'same' 3x3 convolution as one matmul over the 9 shifted copies of the input."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return jnp.matmul(patches, kernel.reshape(9 * c, -1), precision=precision)


def conv3x3_xla(x: jax.Array, kernel: jax.Array, precision: str | None = None) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


class Conv3x3(nn.Module):
    """One block: 'same' 3x3 convolution, bias, LeakyReLU(``slope``) and 2x2 'same' max-pool."""

    features: int
    impl: str = "xla"
    slope: float = 0.1
    precision: str = "default"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.glorot_uniform(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.impl == "onednn":
            from emnist_jax.cnn.onednn import conv3x3_block

            return conv3x3_block(x, kernel, bias, self.slope)
        if self.impl == "fused":
            from emnist_jax.cnn import fused

            if fused.supports(x.shape[-1], self.features) and x.dtype == kernel.dtype == jnp.float32:
                return fused.conv3x3_block(x, kernel, bias, self.slope)
        conv = {"xla": conv3x3_xla, "slices": conv3x3_slices, "fused": conv3x3_slices}[self.impl]
        lax_precision, dtype = _ARITHMETIC[self.precision]
        x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
        return max_pool_same(nn.leaky_relu(conv(x, kernel, lax_precision) + bias, negative_slope=self.slope))


class StudyCNN(nn.Module):
    """Input: (N, 28, 28, 1) floats in [0, 1]; output: (N, n_classes) logits."""

    n_classes: int = 62
    conv_impl: str = "xla"
    precision: str = "default"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for features in FILTERS:
            x = Conv3x3(features, impl=self.conv_impl, precision=self.precision)(x)
        x = x.reshape(x.shape[0], -1)  # flatten H, W, C as Keras does (NHWC)
        lax_precision, dtype = _ARITHMETIC[self.precision]
        dense = functools.partial(nn.Dense, kernel_init=nn.initializers.glorot_uniform(), dtype=dtype,
                                  param_dtype=jnp.float32, precision=lax_precision)
        x = nn.leaky_relu(dense(HIDDEN)(x), negative_slope=0.1)
        return dense(self.n_classes)(x).astype(jnp.float32)  # the loss and its gradient in float32


def initial_params(model: StudyCNN, seed: int | tuple[int, ...]) -> dict:
    """Parameters as Keras initialises them: Glorot-uniform kernels, zero biases; numpy arrays.

    Drawn with numpy from ``seed``, leaf by leaf in the order of the parameter tree. The same
    distributions as ``model.init``, whose jitted form took 3-5 s to compile on the 2-core machine
    (measured on the development machines); this takes milliseconds and gives the same numbers on every backend and process.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        if path[-1].key == "bias":
            return np.zeros(leaf.shape, np.float32)
        receptive = int(np.prod(leaf.shape[:-2]))          # 3x3 for a convolution, 1 for a dense layer
        fan_in, fan_out = leaf.shape[-2] * receptive, leaf.shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])
