"""The study's 3x3 convolutions through oneDNN (the library behind PyTorch's CPU convolutions), CPU only.

Optional: ``pip install -e '.[onednn]'`` installs oneDNN's wheels (``onednn``, ``onednn-devel``:
``libdnnl.so`` and its headers under ``sys.prefix``). On first use this module compiles
``onednn_conv.cc`` with ``g++`` (about 10 s) against them and JAX's XLA FFI headers into a cache
folder (``$EMNIST_JAX_ONEDNN_CACHE``, default ``~/.cache/emnist_jax/onednn``; the file's name carries a
hash of the source and the versions, so a changed source or JAX builds anew) and registers three FFI
targets. Where anything is missing, :func:`available` is False and :func:`unavailable_reason` says
why in one line; ``conv_impl="auto"`` then falls back to the XLA forms. ``EMNIST_JAX_ONEDNN=0``
turns it off.

:func:`conv3x3_block` is one block of the network, ``max_pool_same(leaky_relu(conv(x, w) + b))``, with
a ``jax.custom_vjp``: the forward is one call (oneDNN's convolution with bias and LeakyReLU fused as a
post-op, then a one-pass 2x2 max-pool in C++); the backward is one C++ pass from the pooled gradient
to the gradient before the LeakyReLU (JAX's rule for ties: split evenly among a window's maxima; the
slope read off the output's sign, y >= 0 where x >= 0), then one oneDNN call for dx and one for (dw, db).
Outside differentiation (evaluation) the block is one call that runs the batch in cache-sized chunks
and returns only the pooled output.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from emnist_jax.cnn import native

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
TARGETS = {"onednn_conv_fwd": "OnednnConvForward", "onednn_conv_bwd_data": "OnednnConvBackwardData",
           "onednn_conv_bwd_weights": "OnednnConvBackwardWeights", "pool_leaky_bwd": "OnednnPoolLeakyBackward",
           "onednn_conv_pool_infer": "OnednnConvPoolInference"}


class OnednnUnavailable(RuntimeError):
    """oneDNN's convolution cannot run here; the message says why in one line."""


def _prefix() -> str:
    return os.environ.get("EMNIST_JAX_ONEDNN_ROOT") or sys.prefix


def cache_folder() -> str:
    return os.environ.get("EMNIST_JAX_ONEDNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                      "emnist_jax", "onednn")


def build(folder: str | None = None) -> str:
    """Path of the compiled extension, compiling it first when the cache holds none for this source."""
    prefix = _prefix()
    header = os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")
    library = os.path.join(prefix, "lib", "libdnnl.so")
    if os.environ.get("EMNIST_JAX_ONEDNN", "1") == "0":
        raise OnednnUnavailable("turned off by EMNIST_JAX_ONEDNN=0")
    if not (os.path.exists(header) and os.path.exists(library)):
        raise OnednnUnavailable(f"oneDNN not found under {prefix} (pip install -e '.[onednn]')")
    lib = os.path.join(prefix, "lib")
    with open(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl_version.h"), "rb") as f:
        release = f.read()   # the oneDNN release
    # DT_RPATH (not RUNPATH): it also finds libdnnl.so's own dependencies (libtbb, libsycl, ...),
    # which the wheels put beside it without a RUNPATH of their own
    link = ["-L", lib, "-ldnnl", f"-Wl,--disable-new-dtags,-rpath,{lib}"]
    try:
        return native.build(SOURCE, "onednn_conv", folder or cache_folder(), native.flags(native.march(), openmp=True),
                            [os.path.join(prefix, "include")], link, salt=release)
    except native.BuildError as e:
        raise OnednnUnavailable(str(e)) from None


#: Built, loaded and registered on first use: ``EXTENSION.available()``, ``EXTENSION.reason()``.
EXTENSION = native.Extension(build, TARGETS, OnednnUnavailable, "the oneDNN extension")
#: ``available()``: whether it can run here; ``unavailable_reason()``: why not, in one line, or None.
available, unavailable_reason, _require = EXTENSION.interface()


def _forward(x, w, b, slope: float):
    n, h, wd, _ = x.shape
    o = w.shape[-1]
    call = jax.ffi.ffi_call("onednn_conv_fwd", (jax.ShapeDtypeStruct((n, h, wd, o), x.dtype),
                                                jax.ShapeDtypeStruct((n, -(-h // 2), -(-wd // 2), o), x.dtype)))
    return call(x, w, b, slope=np.float32(slope))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv3x3_block(x, w, b, slope: float = 0.1):
    """``max_pool_same(leaky_relu(conv3x3_same(x, w) + b, slope))``: x (N, H, W, C), w (3, 3, C, O), b (O,),
    float32; the result is (N, ceil(H/2), ceil(W/2), O)."""
    _require()
    n, h, wd, _ = x.shape
    out = jax.ShapeDtypeStruct((n, -(-h // 2), -(-wd // 2), w.shape[-1]), x.dtype)
    return jax.ffi.ffi_call("onednn_conv_pool_infer", out)(x, w, b, slope=np.float32(slope))


def _fwd(x, w, b, slope):
    _require()
    y, p = _forward(x, w, b, slope)
    return p, (x, w, y, p)


def _bwd(slope, residuals, dp):
    x, w, y, p = residuals
    dpre = jax.ffi.ffi_call("pool_leaky_bwd", jax.ShapeDtypeStruct(y.shape, y.dtype))(y, p, dp, slope=np.float32(slope))
    dx = jax.ffi.ffi_call("onednn_conv_bwd_data", jax.ShapeDtypeStruct(x.shape, x.dtype))(dpre, w)
    dw, db = jax.ffi.ffi_call("onednn_conv_bwd_weights", (jax.ShapeDtypeStruct(w.shape, w.dtype),
                                                          jax.ShapeDtypeStruct(w.shape[-1:], w.dtype)))(x, dpre)
    return dx, dw, db


conv3x3_block.defvjp(_fwd, _bwd)
