"""The precision option: the products' arithmetic changes, the parameters, Adam's state and the
loss stay float32, and the CPU kernels (float32 only) are never asked to compute otherwise."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emnist_jax.cnn import TrainConfig, train_and_evaluate
from emnist_jax.cnn.config import BACKEND_DEFAULTS, PRECISIONS, ConfigError
from emnist_jax.cnn.steps import create_state, eval_step, train_step

CFG = TrainConfig(epochs=1, batch_size=16, conv_impl="xla", steps_per_call=2, loop="unroll", eval_batch_size=64)


def batch(n: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            "labels": jnp.asarray(rng.integers(0, 10, n).astype(np.int32)), "mask": jnp.ones(n, jnp.float32)}


@pytest.fixture(scope="module")
def runs(tiny_dataset) -> dict:
    return {p: train_and_evaluate(tiny_dataset, dataclasses.replace(CFG, precision=p), progress=False)
            for p in ("float32", "bfloat16")}


@pytest.mark.parametrize("conv_impl", ["slices", "xla"])
def test_each_precision_reaches_the_lowered_products(conv_impl):
    """float32 marks every product HIGHEST, tensorfloat32 HIGH, bfloat16 computes them in bf16;
    default leaves the choice to the backend."""
    texts = {}
    for precision in PRECISIONS:
        config = dataclasses.replace(CFG, precision=precision, conv_impl=conv_impl).resolved("cpu")
        texts[precision] = jax.jit(train_step).lower(create_state(config, 10, 0), batch()).as_text()
    products = texts["float32"].count("stablehlo.dot_general") + texts["float32"].count("stablehlo.convolution")
    assert products >= 14   # 5 layers forward, 5 weight gradients, 4 input gradients (the image needs none)
    assert texts["float32"].count("HIGHEST") >= products
    assert "HIGHEST" not in texts["tensorfloat32"] and texts["tensorfloat32"].count("HIGH") >= products
    assert "HIGH" not in texts["default"] and "bf16" not in texts["default"]
    assert "bf16" in texts["bfloat16"] and "HIGH" not in texts["bfloat16"]


def test_bfloat16_keeps_parameters_adam_state_and_loss_in_float32(runs, tiny_dataset):
    state = runs["bfloat16"].state
    assert runs["bfloat16"].config.precision == "bfloat16"
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)   # int32: Adam's step count
    data = batch()
    logits = jax.eval_shape(state.apply_fn, {"params": state.params}, data["images"][..., None] / 255.0)
    assert logits.dtype == jnp.float32
    loss = jax.eval_shape(lambda params: eval_step(params, state.apply_fn, data["images"], data["labels"],
                                                   data["mask"])[0], state.params)
    assert loss.dtype == jnp.float32


def test_bfloat16_trains_as_float32_does_to_its_rounding(runs):
    """An epoch on the tiny set: the same loss and accuracies to bf16's ~3 significant digits, not the same bits."""
    full, half = runs["float32"], runs["bfloat16"]
    assert np.isfinite(half.history[-1].loss) and half.history[-1].loss != full.history[-1].loss
    assert half.history[-1].loss == pytest.approx(full.history[-1].loss, rel=0.05)
    for name in ("holdout", "test"):
        assert half.evaluations[name].loss == pytest.approx(full.evaluations[name].loss, rel=0.05)
        assert abs(half.evaluations[name].accuracy - full.evaluations[name].accuracy) <= 0.05


def test_the_cpu_kernels_refuse_reduced_precision_and_auto_takes_an_xla_form():
    for precision in ("tensorfloat32", "bfloat16"):
        for impl in ("fused", "onednn"):
            with pytest.raises(ConfigError, match=f"computes in float32; precision '{precision}'"):
                TrainConfig(conv_impl=impl, precision=precision).resolved("cpu")
        assert TrainConfig(precision=precision).resolved("cpu").conv_impl == BACKEND_DEFAULTS["cpu"].conv_impl
        assert TrainConfig(precision=precision).resolved("gpu").conv_impl == BACKEND_DEFAULTS["gpu"].conv_impl
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="fp16")
