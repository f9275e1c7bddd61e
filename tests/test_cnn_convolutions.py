"""The convolution choices of the study's CNN: every one computes the plain XLA network's numbers,
the choice can be forced, and the two CPU extensions (our fused kernels, built with g++; oneDNN's,
an optional extra) fall back cleanly where they are missing.

Tests that run an extension are skipped, with the reason, where it cannot be built (oneDNN: ``pip
install -e '.[onednn]'``; fused: a C++ compiler); the fallback tests run everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emnist_jax.cnn import TrainConfig
from emnist_jax.cnn import config as config_module
from emnist_jax.cnn import fused, native, onednn
from emnist_jax.cnn.config import BACKEND_DEFAULTS, CPU_FUSED, CPU_ONEDNN, ConfigError
from emnist_jax.cnn.model import conv3x3_xla, max_pool_same
from emnist_jax.cnn.placement import make_mesh
from emnist_jax.cnn.programs import train_calls
from emnist_jax.cnn.steps import create_state, zero_sums

ONEDNN = onednn.available() and jax.default_backend() == "cpu"
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN convolution unavailable here: "
                                                     f"{onednn.unavailable_reason() or 'not a CPU backend'}")
FUSED = fused.available() and jax.default_backend() == "cpu"
needs_fused = pytest.mark.skipif(not FUSED, reason=f"fused kernels unavailable here: "
                                                   f"{fused.unavailable_reason() or 'not a CPU backend'}")
#: (convolution, images per gradient chunk): every choice, whole batch and chunked (0 = whole batch)
CHOICES = [("xla", 4), ("slices", 0), pytest.param("onednn", 0, marks=needs_onednn),
           pytest.param("onednn", 4, marks=needs_onednn), pytest.param("fused", 0, marks=needs_fused),
           pytest.param("fused", 4, marks=needs_fused)]


# ---- choosing and falling back (no oneDNN needed) ----------------------------------------------

@pytest.mark.parametrize("fused_builds, onednn_installed", [(False, False), (False, True), (True, False), (True, True)])
def test_auto_takes_fused_then_onednn_on_the_cpu_only_where_they_run(monkeypatch, fused_builds, onednn_installed):
    monkeypatch.setattr(config_module, "fused_not_default_reason", lambda: None if fused_builds else "cannot")
    monkeypatch.setattr(config_module, "onednn_available", lambda: onednn_installed)
    cpu = TrainConfig().resolved("cpu")
    expected = CPU_FUSED if fused_builds else CPU_ONEDNN if onednn_installed else BACKEND_DEFAULTS["cpu"]
    assert (cpu.conv_impl, cpu.steps_per_call, cpu.loop) == (expected.conv_impl, expected.steps_per_call,
                                                             expected.loop)
    gpu = TrainConfig().resolved("gpu")
    assert gpu.conv_impl == BACKEND_DEFAULTS["gpu"].conv_impl          # never an extension off the CPU
    forced = TrainConfig(conv_impl="slices").resolved("cpu")
    assert forced.conv_impl == "slices"                                 # an explicit choice wins


@pytest.mark.parametrize("impl, module, reason, o", [
    ("onednn", onednn, "oneDNN not found under /nowhere", 2),
    ("fused", fused, "no C++ compiler (g++ or $CXX) to build fused_conv.cc", 16)])
def test_forcing_an_extension_where_it_cannot_run_says_why(monkeypatch, impl, module, reason, o):
    monkeypatch.setattr(module.EXTENSION, "reason", lambda: reason)
    with pytest.raises(ConfigError, match=f"'{impl}' cannot run here: {re.escape(reason)}") as e:
        TrainConfig(conv_impl=impl).resolved("cpu")
    assert e.value.field == "conv_impl"
    with pytest.raises(ConfigError, match="CPU only"):
        TrainConfig(conv_impl=impl).resolved("gpu")
    with pytest.raises(RuntimeError, match=re.escape(reason)):   # OnednnUnavailable, FusedUnavailable
        module.conv3x3_block(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, o)), jnp.zeros(o))


def test_build_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("EMNIST_JAX_ONEDNN", raising=False)
    monkeypatch.setenv("EMNIST_JAX_ONEDNN_ROOT", str(tmp_path))
    with pytest.raises(onednn.OnednnUnavailable, match=f"oneDNN not found under {tmp_path}.*onednn"):
        onednn.build(str(tmp_path / "cache"))
    monkeypatch.setenv("EMNIST_JAX_ONEDNN", "0")
    with pytest.raises(onednn.OnednnUnavailable, match="EMNIST_JAX_ONEDNN=0"):
        onednn.build(str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_fused_build_says_why_it_cannot(monkeypatch, tmp_path):
    monkeypatch.setenv("EMNIST_JAX_FUSED", "0")
    with pytest.raises(fused.FusedUnavailable, match="EMNIST_JAX_FUSED=0"):
        fused.build(str(tmp_path / "off"))
    monkeypatch.delenv("EMNIST_JAX_FUSED")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(fused.FusedUnavailable, match="compiling .*fused_conv.cc failed"):
        fused.build(str(tmp_path / "missing"))
    assert list((tmp_path / "missing").iterdir()) == []                 # no half-written library left
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))                           # no g++ on the path
    with pytest.raises(fused.FusedUnavailable, match="no C\\+\\+ compiler"):
        fused.build(str(tmp_path / "nothing"))


def test_a_broken_source_is_a_one_line_error_and_leaves_nothing(tmp_path):
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++\n")
    with pytest.raises(native.BuildError, match=f"compiling {source} failed: .*error") as e:
        native.build(str(source), "broken", str(tmp_path / "cache"), native.flags("native"), [], [])
    assert "broken.cc:1:1: error:" in str(e.value)        # the first error, with its place
    assert list((tmp_path / "cache").iterdir()) == []


def test_turned_off_the_cpu_default_is_the_xla_fallback():
    code = ("from emnist_jax.cnn import TrainConfig\nfrom emnist_jax.cnn import fused, onednn\n"
            "c = TrainConfig().resolved('cpu')\n"
            "print(c.conv_impl, c.steps_per_call, c.loop, onednn.available(), fused.available())")
    env = dict(os.environ, EMNIST_JAX_ONEDNN="0", EMNIST_JAX_FUSED="0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    cpu = BACKEND_DEFAULTS["cpu"]
    assert done.stdout.split() == [cpu.conv_impl, str(cpu.steps_per_call), cpu.loop, "False", "False"]


# ---- same numbers on every choice ---------------------------------------------------------------

EXTENSIONS = [pytest.param(onednn, marks=needs_onednn, id="onednn"), pytest.param(fused, marks=needs_fused, id="fused")]


def flat_rows(h: int) -> int:
    """Rows of zeros at the top of a test image: 4k + 1 of them, so that an output whose 3x3
    neighbourhood is all zeros also has a Winograd tile of zeros (F(2x2) and F(4x4) tiles span 4 and
    6 rows from a row 2t - 1 or 4t - 1), is computed exactly and ties exactly with its window."""
    return max(0, 4 * ((h - 3) // 4) + 1) if h >= 5 else 0


def block_case(n, h, wd, c, o):
    """x, w, b and the output gradient of a block test, with ties in the pooling windows (a zero image
    border, as in EMNIST's pictures)."""
    rng = np.random.default_rng(h * 31 + wd)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((n, h, wd, c), (3, 3, c, o), (o,)))
    x[:, : flat_rows(h)] = 0.0                  # flat regions: equal maxima in many windows
    dy = rng.normal(size=(n, -(-h // 2), -(-wd // 2), o)).astype(np.float32)
    return x, w, b, dy


def assert_block_matches_xla(block, x, w, b, dy):
    """Output and all three gradients of ``block`` against the plain XLA form, to 1e-5 of each one's scale."""
    def plain(x, w, b):
        return max_pool_same(jnp.where(conv3x3_xla(x, w) + b >= 0, conv3x3_xla(x, w) + b,
                                       0.1 * (conv3x3_xla(x, w) + b)))

    def output_and_gradients(block):   # jitted whole: one compile instead of an op-by-op trace
        def both(x, w, b, dy):
            y, vjp = jax.vjp(block, x, w, b)
            return y, vjp(dy)
        return jax.jit(both)(x, w, b, dy)

    y_ref, grads_ref = output_and_gradients(plain)
    y, grads = output_and_gradients(block)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, atol=1e-5 * np.abs(y_ref).max())
    for ours, ref in zip(grads, grads_ref):
        np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("module", EXTENSIONS)
@pytest.mark.parametrize("n, h, wd, c, o", [(4, 28, 28, 1, 32), (4, 14, 14, 32, 64), (3, 7, 7, 64, 128),
                                            (2, 1, 7, 16, 16), (2, 7, 5, 3, 32)])
def test_extension_block_matches_xla_forward_and_gradients(module, n, h, wd, c, o):
    """The network's three blocks (convolution, bias, LeakyReLU, max-pool), and odd, one-pixel and
    non-square sides with other channel counts: output and all three gradients, with tied maxima."""
    assert_block_matches_xla(lambda x, w, b: module.conv3x3_block(x, w, b, 0.1), *block_case(n, h, wd, c, o))


@needs_fused
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("n, h, wd, c, o", [(2, 7, 7, 64, 128), (3, 9, 5, 16, 32), (2, 1, 7, 16, 16)])
def test_both_winograd_tiles_match_xla(tile, n, h, wd, c, o):
    """F(2x2, 3x3) and F(4x4, 3x3) on conv3's shape, sides that are not multiples of the tile and a
    one-pixel side (conv2's 14x14 runs F(2x2) in the block test above, F(4x4) in the evaluation test)."""
    assert_block_matches_xla(lambda x, w, b: fused.conv3x3_block(x, w, b, 0.1, tile), *block_case(n, h, wd, c, o))


@needs_fused
def test_the_tile_argument_chooses_the_algorithm():
    x, w, b, _ = block_case(2, 7, 7, 64, 128)
    two, four = (jax.jit(lambda x, w, b, t=t: fused.conv3x3_block(x, w, b, 0.1, t))(x, w, b) for t in (2, 4))
    assert not np.array_equal(two, four)          # different rounding: each tile ran its own algorithm


def test_the_winograd_tile_is_the_one_with_fewer_elements():
    assert fused.winograd_tile(7, 7) == 4          # conv3: 4 tiles x 36 against 16 x 16
    assert fused.winograd_tile(14, 14) == 4        # conv2: 16 x 36 against 49 x 16
    assert fused.winograd_tile(1, 7) == 2          # 2 x 36 against 4 x 16


@pytest.mark.parametrize("module", EXTENSIONS)
@pytest.mark.parametrize("side, c, o", [(28, 1, 32), (14, 32, 64), (7, 64, 128)])
def test_extension_evaluation_block_matches_xla(module, side, c, o):
    """Outside differentiation the block is its evaluation form (oneDNN: cache-sized chunks of 10
    images of 28x28x32, 20 of 14x14x64, 41 of 7x7x128, so 93 images make full chunks and a remainder
    in each layer; fused: no full-size activation kept)."""
    rng = np.random.default_rng(side)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((93, side, side, c), (3, 3, c, o), (o,)))
    pre = conv3x3_xla(x, w) + b
    ref = max_pool_same(jnp.where(pre >= 0, pre, 0.1 * pre))
    ours = jax.jit(lambda x, w, b: module.conv3x3_block(x, w, b, 0.1))(x, w, b)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 62, 64).astype(np.int32))
    index = jnp.asarray(np.tile(rng.permutation(64)[:8].astype(np.int32), (4, 1, 1)))  # 4 calls, the same 8 images
    return images, labels, index


def trajectory(conv_impl: str, batches, grad_chunk: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-step training losses of 4 Adam steps from the same parameters, and the final parameters."""
    images, labels, index = batches
    config = TrainConfig(conv_impl=conv_impl, steps_per_call=1, loop="unroll", batch_size=8,
                         grad_chunk=grad_chunk).resolved("cpu")
    state, mesh, losses = create_state(config, 62, 0), make_mesh(), []
    for call in range(index.shape[0]):
        state, sums = train_calls(state, images, labels, index, call, zero_sums(), mesh=mesh, loop="unroll",
                                  grad_chunk=grad_chunk)
        losses.append(float(sums["loss"]) / 8)
    return np.array(losses), np.concatenate([np.ravel(p) for p in jax.tree.leaves(state.params)])


@pytest.fixture(scope="module")
def xla_trajectory(batches):
    return trajectory("xla", batches)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's convolution choices")
@pytest.mark.parametrize("conv_impl, grad_chunk", CHOICES)
def test_every_convolution_trains_the_same_network(conv_impl, grad_chunk, batches, xla_trajectory):
    losses, params = trajectory(conv_impl, batches, grad_chunk)
    ref_losses, ref_params = xla_trajectory
    assert losses[-1] < losses[0]                                   # it learns the 8 images
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert np.linalg.norm(params - ref_params) / np.linalg.norm(ref_params) < 1e-5


@needs_fused
def test_fused_training_on_blank_bordered_images_matches_the_slices_network(batches):
    """EMNIST's pictures have a blank border, where pooling windows hold exactly tied maxima. The fused
    kernels train with F(2x2) tiles, which keep those ties as the plain network does: after 4 Adam
    steps the losses and parameters are the slices form's to 1e-5 (measured 3.2e-6 and 6.7e-7; with
    F(4x4) tiles in training the loss moved 1.3e-4). XLA's own convolution is not the reference here:
    its rounding breaks some of those ties, and Adam's normalisation of the tiny gradients that
    follow moves its parameters 1.2e-4 from both."""
    images, labels, index = batches
    bordered = np.array(images)
    bordered[:, :6], bordered[:, -6:], bordered[:, :, :6], bordered[:, :, -6:] = 0, 0, 0, 0
    bordered_batches = (jnp.asarray(bordered), labels, index)
    losses, params = trajectory("fused", bordered_batches)
    ref_losses, ref_params = trajectory("slices", bordered_batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert np.linalg.norm(params - ref_params) / np.linalg.norm(ref_params) < 1e-5


@needs_fused
@pytest.mark.parametrize("h, c, o, tile", [(14, 32, 64, None), (7, 64, 128, 4)])
def test_fused_gradients_are_the_same_numbers_every_run(h, c, o, tile):
    rng = np.random.default_rng(5)
    x, w, b = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((64, h, h, c), (3, 3, c, o), (o,)))
    dy = jnp.asarray(rng.normal(size=(64, -(-h // 2), -(-h // 2), o)).astype(np.float32))
    grads = jax.jit(lambda x, w, b, dy: jax.vjp(lambda *a: fused.conv3x3_block(*a, 0.1, tile), x, w, b)[1](dy))
    first, second = grads(x, w, b, dy), grads(x, w, b, dy)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)


@needs_fused
def test_fused_refuses_what_it_cannot_compute_in_python_terms():
    x, w, b = jnp.zeros((1, 8, 8, 16)), jnp.zeros((3, 3, 16, 16)), jnp.zeros(16)
    with pytest.raises(ValueError, match="slope must be positive"):
        fused.conv3x3_block(x, w, b, 0.0)
    with pytest.raises(ValueError, match="multiple of 16"):
        fused.conv3x3_block(x, jnp.zeros((3, 3, 16, 8)), jnp.zeros(8))
    with pytest.raises(ValueError, match="b \\(O,\\)"):
        fused.conv3x3_block(x, w, jnp.zeros(8))
    with pytest.raises(ValueError, match="float32 only"):
        fused.conv3x3_block(x.astype(jnp.bfloat16), w, b)
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        fused.conv3x3_block(x, w, b, 0.1, 3)


@needs_fused
def test_a_fused_model_takes_the_slices_form_for_shapes_the_kernels_do_not_take():
    from emnist_jax.cnn.model import Conv3x3

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32))
    params = jax.jit(Conv3x3(8, impl="slices").init)(jax.random.key(0), x)   # 8 output channels: no kernel for it
    ours = jax.jit(Conv3x3(8, impl="fused").apply)(params, x)
    np.testing.assert_array_equal(ours, jax.jit(Conv3x3(8, impl="slices").apply)(params, x))
