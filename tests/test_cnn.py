import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emnist_jax.cnn import TrainConfig, n_params, train_and_evaluate, train_step
from emnist_jax.cnn.model import StudyCNN, max_pool_same
from emnist_jax.cnn.train import create_state
from emnist_jax.data import Dataset

FAST = TrainConfig(epochs=1, batch_size=32, log_every=1000)


def subset(dataset: Dataset, n_train: int, n_test: int = 62) -> Dataset:
    return dataclasses.replace(dataset, train_images=dataset.train_images[:n_train],
                               train_labels=dataset.train_labels[:n_train],
                               test_images=dataset.test_images[:n_test], test_labels=dataset.test_labels[:n_test])


def flat(params) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(params)])


def test_parameter_count_is_the_keras_models():
    assert n_params(62) == 362_942  # ORIGINAL_STUDY.md 6.2
    params = StudyCNN(n_classes=62).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 362_942
    params = StudyCNN(n_classes=10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == n_params(10)


def test_both_convolutions_compute_the_same_network():
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    params = StudyCNN(conv_impl="xla").init(jax.random.key(0), x)
    a = StudyCNN(conv_impl="xla").apply(params, x)
    b = StudyCNN(conv_impl="slices").apply(params, x)
    assert a.shape == (4, 62)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", [28, 14, 7])
def test_reshape_pool_equals_flax_same_pool(side):
    x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
    np.testing.assert_array_equal(max_pool_same(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))
    assert max_pool_same(x).shape[1] == -(-side // 2)


def test_one_step_lowers_the_loss_and_masked_steps_do_nothing(tiny_dataset):
    state = create_state(FAST.resolved(), 62, jax.random.key(0))
    batch = {"images": jnp.asarray(tiny_dataset.train_images[:64]),
             "labels": jnp.asarray(tiny_dataset.train_labels[:64], jnp.int32), "mask": jnp.ones(64, bool)}
    step = jax.jit(train_step)
    new_state, before = step(state, batch)
    _, after = step(new_state, batch)
    assert after["loss"] < before["loss"]
    unchanged, _ = step(state, {**batch, "mask": jnp.zeros(64, bool)})
    np.testing.assert_array_equal(flat(unchanged.params), flat(state.params))
    assert int(unchanged.step) == int(state.step)


@pytest.mark.parametrize("conv_impl", ["xla", "slices"])
def test_overfits_256_images(tiny_dataset, conv_impl):
    data = subset(tiny_dataset, 256)
    config = dataclasses.replace(FAST, epochs=25, protocol="official", conv_impl=conv_impl)
    result = train_and_evaluate(data, config, progress=False)
    assert result.history[-1].accuracy > 0.95, result.history[-1]
    assert result.history[-1].loss < result.history[0].loss / 5


def test_last_partial_batch_is_trained_without_a_recompile(tiny_dataset):
    from emnist_jax.cnn.train import train_calls

    data = subset(tiny_dataset, 100)  # 3 full batches of 32 and one of 4
    config = dataclasses.replace(FAST, epochs=2, protocol="official", steps_per_call=3, batch_size=32)
    before = train_calls._cache_size()
    result = train_and_evaluate(data, config, progress=False)
    assert int(result.state.step) == 2 * 4  # 4 steps per epoch; the padded 6th step did nothing
    assert train_calls._cache_size() == before + 1  # one compilation for full and partial calls


def test_same_seed_same_numbers(tiny_dataset):
    data = subset(tiny_dataset, 300)
    runs = [train_and_evaluate(data, dataclasses.replace(FAST, epochs=2), progress=False) for _ in range(2)]
    assert runs[0].history[-1].loss == runs[1].history[-1].loss
    np.testing.assert_array_equal(flat(runs[0].state.params), flat(runs[1].state.params))
    np.testing.assert_array_equal(runs[0].evaluations["test"].confusion, runs[1].evaluations["test"].confusion)
    other = train_and_evaluate(data, dataclasses.replace(FAST, epochs=2, seed=1), progress=False)
    assert other.history[-1].loss != runs[0].history[-1].loss


def test_study_protocol_splits_67_33_and_reports_both(tiny_dataset):
    result = train_and_evaluate(subset(tiny_dataset, 300), FAST, progress=False)
    assert result.n_train == 201 and result.evaluations["holdout"].n == 99
    test = result.evaluations["test"]
    assert test.n == 62 and test.confusion.shape == (62, 62) and test.confusion.sum() == 62
    assert all(isinstance(t, str) and isinstance(p, str) for t, p, _ in test.confused_pairs)


def run_python(code: str, env_extra: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_two_devices_follow_the_one_device_loss_trajectory(tiny_dataset, tmp_path):
    code = f"""
        import dataclasses, jax, numpy as np
        from emnist_jax.cnn import TrainConfig, train_and_evaluate
        from emnist_jax.data import load
        assert len(jax.devices()) == 2
        data = load({tiny_dataset.source!r})
        config = TrainConfig(epochs=2, batch_size=32, log_every=1000)
        one = train_and_evaluate(data, config, progress=False, devices=jax.devices()[:1])
        two = train_and_evaluate(data, config, progress=False)
        assert two.devices == 2 and one.devices == 1
        # Two devices sum the gradient in another order; Adam's normalisation lets that fp32
        # rounding grow step by step, so later epochs get a wider (still tiny) tolerance.
        losses = [h.loss for h in one.history], [h.loss for h in two.history]
        np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-5)
        np.testing.assert_allclose(losses[0][1], losses[1][1], rtol=1e-3)
        # Parameter by parameter, Adam turns rounding in near-zero gradients into +-lr steps;
        # the parameter vector as a whole must still agree closely.
        leaves = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params)])
        a, b = leaves(one.state), leaves(two.state)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-2, np.linalg.norm(a - b) / np.linalg.norm(a)
        print("ok", [h.loss for h in two.history])
    """
    result = run_python(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                               "JAX_PLATFORMS": "cpu", "EMNIST_JAX_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout, result.stdout


def test_killed_run_resumes_to_the_same_final_parameters(tiny_dataset, tmp_path):
    common = ["--data", tiny_dataset.source, "--epochs", "3", "--batch-size", "16", "--no-progress"]
    env = {**os.environ, "EMNIST_JAX_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "emnist_jax.cnn"]
    straight = subprocess.run(cli + common + ["--workdir", str(tmp_path / "a")], env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = subprocess.Popen(cli + common + ["--workdir", str(tmp_path / "b")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in killed.stdout:  # wait for the end of epoch 1 (its checkpoint is written before the line)
        if line.startswith("epoch   1"):
            break
    time.sleep(0.3)  # now inside epoch 2
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    resumed = subprocess.run(cli + common + ["--workdir", str(tmp_path / "b"), "--resume"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch   1" not in resumed.stdout and "epoch   3" in resumed.stdout

    def final_line(out):
        return [line for line in out.splitlines() if line.startswith(("holdout", "test"))]

    assert final_line(straight.stdout) == final_line(resumed.stdout)
    import orbax.checkpoint as ocp
    params = []
    for run in ("a", "b"):
        with ocp.CheckpointManager(str(tmp_path / run / "checkpoints")) as manager:
            restored = manager.restore(manager.latest_step())
            params.append(flat(restored["state"]["state"]["params"]))
    np.testing.assert_array_equal(params[0], params[1])


@pytest.mark.parametrize("change, message", [
    (dict(train_images=np.zeros((10, 28, 27), np.uint8)), "train_images must be"),
    (dict(train_images=np.zeros((10, 28, 28), np.float32)), "train_images must be"),
    (dict(train_labels=np.full(10, 70)), "train_labels must lie in 0..61"),
    (dict(train_labels=np.zeros(9, int)), "9 entries for 10 images"),
])
def test_bad_data_is_a_clear_error(tiny_dataset, change, message):
    data = dataclasses.replace(subset(tiny_dataset, 10), **change)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(data, FAST, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(batch_size=5000), "batch_size 5000 is larger than"),
    (dict(protocol="kfold"), "protocol must be"),
    (dict(conv_impl="fft"), "conv_impl must be"),
])
def test_bad_config_is_a_clear_error(tiny_dataset, change, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(subset(tiny_dataset, 100), dataclasses.replace(FAST, **change), progress=False)


def test_cli_unknown_device_exits_2():
    result = subprocess.run([sys.executable, "-m", "emnist_jax.cnn", "--device", "tpu", "--epochs", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--device tpu" in result.stderr and "Traceback" not in result.stderr
