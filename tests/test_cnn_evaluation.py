"""The evaluation's forward loop: the images placed once, a few compiled calls per set, one
compiled shape for the sets of a run, and the numbers of a batch-at-a-time evaluation."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from emnist_jax.cnn import TrainConfig, train_and_evaluate
from emnist_jax.cnn import train as train_module
from emnist_jax.cnn.placement import make_mesh, replicate
from emnist_jax.cnn.programs import eval_batch, eval_calls
from emnist_jax.cnn.steps import create_state
from emnist_jax.cnn.train import EVAL_IMAGES_PER_CALL, eval_index, evaluate

CFG = TrainConfig(epochs=1, batch_size=16, conv_impl="xla", steps_per_call=2, loop="unroll", eval_batch_size=24)


def test_the_index_keeps_the_rows_in_order_and_pads_at_the_end_only():
    rows = np.arange(1000, 1050)
    index = eval_index(rows, batch_size=16, mesh_size=1)
    assert index.shape == (1, 4, 16)                      # 4 batches of 16, one call
    flat = index.ravel()
    np.testing.assert_array_equal(flat[:50], rows)
    assert (flat[50:] == -1).all()
    assert eval_index(rows, 16, mesh_size=3).shape == (1, 4, 18)   # a batch splits evenly over the devices
    assert eval_index(np.arange(3), 1024, 1).shape == (1, 1, 4)    # no batch beyond the set


def test_the_sets_of_a_full_size_run_share_one_compiled_shape_in_a_few_calls():
    """ByClass's hold-out (230,303 rows) and test file (116,323) at the default batch of 1024."""
    holdout, test = (eval_index(np.arange(n), 1024, 1) for n in (230_303, 116_323))
    assert holdout.shape[1:] == test.shape[1:] == (EVAL_IMAGES_PER_CALL // 1024, 1024)
    assert (len(holdout), len(test)) == (4, 2)


def test_evaluation_places_a_set_once_and_runs_one_call_per_chunk(tiny_dataset, monkeypatch):
    state = create_state(CFG.resolved(), tiny_dataset.n_classes, 0)
    placed, calls = [], []
    real_replicate, real_calls = train_module.replicate, train_module.eval_calls
    monkeypatch.setattr(train_module, "replicate", lambda a, mesh: placed.append(np.shape(a)) or real_replicate(a, mesh))
    monkeypatch.setattr(train_module, "eval_calls", lambda *a, **k: calls.append(a[3].shape) or real_calls(*a, **k))
    monkeypatch.setattr(train_module, "EVAL_IMAGES_PER_CALL", 48)   # 2 batches of 24 per call
    n = 150
    images, labels = tiny_dataset.train_images[:n], tiny_dataset.train_labels[:n]
    result = evaluate(state, images, labels, tiny_dataset.classes, batch_size=24)
    # the labels once (the images through place_images), then each call's (batches, B) rows
    assert placed == [(n,)] + [(2, 24)] * 4
    assert calls == [(2, 24)] * 4
    assert result.n == n


def test_the_loop_gives_the_numbers_of_one_batch_at_a_time(tiny_dataset):
    state = create_state(CFG.resolved(), tiny_dataset.n_classes, 3)
    images, labels = tiny_dataset.test_images[:70], tiny_dataset.test_labels[:70]
    mesh = make_mesh()
    losses, predictions = [], []
    for start in range(0, 96, 32):
        x, y = images[start:start + 32], labels[start:start + 32].astype(np.int32)
        mask = np.zeros(32, np.float32)
        mask[:len(y)] = 1
        x = np.concatenate([x, np.zeros((32 - len(x), 28, 28), np.uint8)])
        y = np.concatenate([y, np.zeros(32 - len(y), np.int32)])
        loss, predicted = eval_batch(state.params, replicate(x, mesh), replicate(y, mesh), replicate(mask, mesh),
                                     apply_fn=state.apply_fn, mesh=mesh)
        losses.append(float(loss))
        predictions.append(np.asarray(predicted))
    result = evaluate(state, images, labels, tiny_dataset.classes, batch_size=32)
    np.testing.assert_array_equal(result.predictions, np.concatenate(predictions)[:70])
    assert result.loss == pytest.approx(sum(losses) / 70, rel=1e-6)


def test_sets_of_other_sizes_from_one_image_array_reuse_the_compiled_program(tiny_dataset, monkeypatch):
    """A hold-out of any size past one call's images runs the program compiled for the first set."""
    monkeypatch.setattr(train_module, "EVAL_IMAGES_PER_CALL", 80)      # 2 batches of 40 per call
    state = create_state(CFG.resolved(), tiny_dataset.n_classes, 0)
    images, labels = tiny_dataset.train_images, tiny_dataset.train_labels
    before = eval_calls._cache_size()
    for n in (100, 130, 250):
        evaluate(state, images, labels, tiny_dataset.classes, batch_size=40, rows=np.arange(n))
    assert eval_calls._cache_size() == before + 1


def test_evaluation_reads_the_hold_out_from_the_training_images_on_the_devices(tiny_dataset, monkeypatch):
    """Only the test file is placed for evaluation: the hold-out rows index the training images."""
    placed = []
    real = train_module.place_images
    monkeypatch.setattr(train_module, "place_images", lambda a, mesh: placed.append(len(a)) or real(a, mesh))
    train_and_evaluate(tiny_dataset, CFG, progress=False)
    assert placed == [len(tiny_dataset.train_images), len(tiny_dataset.test_images)]
    assert jax.default_backend() in ("cpu", "gpu", "tpu")
