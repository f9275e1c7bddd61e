"""The study's convolution blocks as hand-written C++ kernels through ``jax.ffi`` (CPU): ``conv_impl="fused"``.

Each block, ``max_pool_same(leaky_relu(conv3x3_same(x, w) + b))``, is one call forward and one or
two backward (``fused_conv.cc``):
- few input channels (conv1): a direct convolution computed a pooling window at a time; neither the
  full-size activation nor its gradient is written, the backward pass recomputes each window;
- channels a multiple of 16 (conv2, conv3): Winograd, F(2x2, 3x3) in training (2.25x fewer
  multiplies than the direct form) and in evaluation F(4x4, 3x3) where the image side makes it pay
  (conv2 and conv3: 4x fewer, less the padding to a multiple of 4), with bias, LeakyReLU and the
  pool applied to each output tile as it is made; what the backward pass needs of the activation is
  kept as a byte per pooling window and channel (which outputs are maxima, which pre-activations
  are >= 0), and the backward pass is the gradient of the same algorithm, in one sweep.
Same numbers as the XLA forms to float rounding (tests/test_cnn_convolutions.py); F(4x4)'s rounding
error is about 1e-6 of an output's scale, ten times F(2x2)'s, and why training keeps F(2x2) is
told at :data:`TRAINING_TILE`. The kernels run on XLA's own intra-op threads. Needs only g++ (the
extension is compiled on first use, about 12 s, into :func:`emnist_jax.cnn.native.cache_folder`);
where it cannot be built, :func:`available` is False, :func:`unavailable_reason` says why and
``conv_impl="auto"`` falls back to oneDNN's extension where installed, else to the XLA forms.
``EMNIST_JAX_FUSED=0`` turns it off.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from emnist_jax.cnn import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_conv.cc")
TARGETS = {"fused_direct_fwd": "FusedDirectForward", "fused_direct_bwd_w": "FusedDirectBackwardWeights",
           "fused_direct_bwd_x": "FusedDirectBackwardData", "fused_wino_fwd": "FusedWinogradForward",
           "fused_wino_infer": "FusedWinogradInference", "fused_wino_bwd": "FusedWinogradBackward"}


class FusedUnavailable(RuntimeError):
    """The fused kernels cannot run here; the message says why in one line."""


def build(folder: str | None = None) -> str:
    """Path of the compiled extension, compiling it first where the cache holds none for this source."""
    if os.environ.get("EMNIST_JAX_FUSED", "1") == "0":
        raise FusedUnavailable("turned off by EMNIST_JAX_FUSED=0")
    try:
        flags = native.flags(native.march(), threads=True)   # XLA's threads, not OpenMP's
        return native.build(SOURCE, "fused_conv", folder or native.cache_folder(), flags, [], [])
    except native.BuildError as e:
        raise FusedUnavailable(str(e)) from None


#: Built, loaded and registered on first use: ``EXTENSION.available()``, ``EXTENSION.reason()``.
EXTENSION = native.Extension(build, TARGETS, FusedUnavailable, "the fused kernels")
#: True where the fused kernels can run (building them on first call).
#: ``available()``: whether they can run here; ``unavailable_reason()``: why not, in one line, or None.
available, unavailable_reason, _require = EXTENSION.interface()


#: The instruction sets on which the kernels were measured faster than the fallback (the slices
#: form), reports/performance/cpu.md: AVX-512, and AVX2 (built for ``-march=x86-64-v3`` on the
#: AVX-512 machine, XLA and PyTorch capped at AVX2, 2026-12-02: fused K=4 scan trained 2,454 / 2,701
#: images/s at batch 64 / 256 against 1,003 / 872 for slices K=4 in the same run, and 2.0x PyTorch
#: eager in interleaved rounds). A build target with neither (SSE only; Arm, built and tested only
#: under emulation) is not the default; ``conv_impl="fused"`` still takes it.
MEASURED_FAST_ON = {"__AVX512F__": "AVX-512", "__AVX2__": "AVX2"}


def not_default_reason() -> str | None:
    """None where ``conv_impl="auto"`` should take the fused kernels here: they are not turned off,
    the build target has an instruction set they were measured fast on, and they build and load.
    Otherwise why not, in one line. Asks the compiler for the target's instruction sets before
    building anything, so an unmeasured target costs no build."""
    if os.environ.get("EMNIST_JAX_FUSED", "1") == "0":
        return "turned off by EMNIST_JAX_FUSED=0"
    try:
        target = native.march()
        macros = native.predefined_macros(tuple(native.compiler()), target)
    except native.BuildError as e:
        return str(e)
    if not macros & MEASURED_FAST_ON.keys():
        return (f"the build target ({target}) has no {' or '.join(MEASURED_FAST_ON.values())}, the instruction "
                "sets they were measured faster than the slices form on")
    return unavailable_reason()


def supports(channels: int, features: int) -> bool:
    """Shapes the kernels take: output channels a multiple of 16; input channels below 16 (direct)
    or a multiple of 16 (Winograd)."""
    return features % 16 == 0 and (channels < 16 or channels % 16 == 0)


def _check(x: jax.Array, w: jax.Array, b: jax.Array, slope: float) -> None:
    """At trace time, so that a misuse is a Python error rather than one from inside XLA."""
    if x.ndim != 4 or w.shape[:2] != (3, 3) or w.ndim != 4 or w.shape[2] != x.shape[-1] or b.shape != w.shape[-1:]:
        raise ValueError(f"expected x (N, H, W, C), w (3, 3, C, O), b (O,); got {x.shape}, {w.shape}, {b.shape}")
    if not supports(x.shape[-1], w.shape[-1]):
        raise ValueError(f"channels {x.shape[-1]} -> {w.shape[-1]}: output channels must be a multiple of 16, "
                         "input channels below 16 or a multiple of 16")
    if any(a.dtype != np.float32 for a in (x, w, b)):
        raise ValueError(f"float32 only, got {x.dtype}, {w.dtype}, {b.dtype}")
    if not slope > 0:
        raise ValueError(f"the LeakyReLU slope must be positive, got {slope}")


def _like(x: jax.Array, *shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, x.dtype)


def _pooled(x: jax.Array, w: jax.Array) -> jax.ShapeDtypeStruct:
    n, h, wd, _ = x.shape
    return _like(x, n, -(-h // 2), -(-wd // 2), w.shape[-1])


def _direct(x: jax.Array) -> bool:
    return x.shape[-1] < 16


def winograd_tile(height: int, width: int) -> int:
    """The Winograd output tile for evaluating an image of this size: 4 where F(4x4, 3x3) has fewer
    transformed elements than F(2x2, 3x3) (36 per 16 outputs against 16 per 4, but the image padded
    to a multiple of 4: conv3's 7x7, 0.56 of F(2x2)'s, and conv2's 14x14, 0.73), else 2."""
    def elements(m: int) -> int:
        return -(-height // m) * -(-width // m) * (m + 2) ** 2
    return 4 if elements(4) < elements(2) else 2


#: The tile under differentiation. F(4x4) measured 1.09-1.10x the training step's speed, but its
#: 6x6 input tiles mix pixels outside an output's 3x3 neighbourhood into its rounding, so a pooling
#: window whose maxima tie exactly in the plain network (EMNIST's blank background) is often broken
#: by a rounding residue, and the window's gradient goes to one maximum instead of being split: over
#: 4 Adam steps on images with a blank border the loss moved 1.3e-4 (relative) from the plain XLA
#: network's, against 3.2e-6 for F(2x2) and for the slices form. F(2x2)'s tile is exactly the union
#: of its window's neighbourhoods, so training keeps it. Evaluation needs only the maximum's value,
#: which does not depend on which output holds it.
TRAINING_TILE = 2


def _tile(x: jax.Array, tile: int | None, default: int | None = None) -> np.int32:
    if tile is None:
        return np.int32(default or winograd_tile(*x.shape[1:3]))
    if tile not in (2, 4):
        raise ValueError(f"the Winograd tile must be 2 or 4, got {tile}")
    return np.int32(tile)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv3x3_block(x: jax.Array, w: jax.Array, b: jax.Array, slope: float = 0.1, tile: int | None = None) -> jax.Array:
    """``max_pool_same(leaky_relu(conv3x3_same(x, w) + b, slope))``: x (N, H, W, C), w (3, 3, C, O), b (O,),
    float32, channels as :func:`supports`, slope > 0; the result is (N, ceil(H/2), ceil(W/2), O).
    ``tile``: the Winograd output tile, 2 or 4 (default: :func:`winograd_tile` when evaluating,
    :data:`TRAINING_TILE` under differentiation)."""
    _check(x, w, b, slope)
    _require()
    if _direct(x):
        return jax.ffi.ffi_call("fused_direct_fwd", _pooled(x, w))(x, w, b, slope=np.float32(slope))
    return jax.ffi.ffi_call("fused_wino_infer", _pooled(x, w))(x, w, b, slope=np.float32(slope), tile=_tile(x, tile))


def _fwd(x, w, b, slope, tile):
    _check(x, w, b, slope)
    _require()
    if _direct(x):
        p = jax.ffi.ffi_call("fused_direct_fwd", _pooled(x, w))(x, w, b, slope=np.float32(slope))
        return p, (x, w, b, None)
    pooled = _pooled(x, w)
    p, mask = jax.ffi.ffi_call("fused_wino_fwd", (pooled, jax.ShapeDtypeStruct(pooled.shape, np.uint8)))(
        x, w, b, slope=np.float32(slope), tile=_tile(x, tile, TRAINING_TILE))
    return p, (x, w, b, mask)


def _bwd(slope, tile, residuals, dp):
    x, w, b, mask = residuals
    slope = np.float32(slope)
    if mask is None:   # direct: dx in a call of its own, which XLA drops where only dw, db are used
        dw, db = jax.ffi.ffi_call("fused_direct_bwd_w", (_like(x, *w.shape), _like(x, w.shape[-1])))(
            x, w, b, dp, slope=slope)
        dx = jax.ffi.ffi_call("fused_direct_bwd_x", _like(x, *x.shape))(x, w, b, dp, slope=slope)
        return dx, dw, db
    return jax.ffi.ffi_call("fused_wino_bwd", (_like(x, *x.shape), _like(x, *w.shape), _like(x, w.shape[-1])))(
        x, w, mask, dp, slope=slope, tile=_tile(x, tile, TRAINING_TILE))


conv3x3_block.defvjp(_fwd, _bwd)
