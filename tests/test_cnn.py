"""The study's CNN: the model, the training loop, the per-backend choices and the command line.

Every training run here uses one shape of data (SMALL: 150 train images -> 100 trained on, 50
held out, 62 test images) and one program configuration (CFG), so the training program is
compiled once for the whole module; tests/test_reliability_cnn.py and tests/test_multiprocess.py
use the same, and SMALL_CONFIG_ARGS is CFG on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import sys
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emnist_jax.cnn import TrainConfig, n_params, train_and_evaluate
from emnist_jax.cnn.config import BACKEND_DEFAULTS
from emnist_jax.cnn.model import StudyCNN, initial_params, max_pool_same
from emnist_jax.cnn.placement import make_mesh, place_images, replicate, replicate_tree
from emnist_jax.cnn.programs import train_calls
from emnist_jax.cnn.steps import create_state, zero_sums
from emnist_jax.data import Dataset, load, write_mat
from emnist_jax.data.formats import aligned_empty

CFG = TrainConfig(epochs=2, batch_size=16, conv_impl="xla", steps_per_call=2, loop="unroll", eval_batch_size=64,
                  log_every=1)
SMALL_CONFIG_ARGS = ["--batch-size", "16", "--conv-impl", "xla", "--steps-per-call", "2", "--loop", "unroll",
                     "--eval-batch-size", "64", "--log-every", "1", "--no-progress"]


def write_small(tiny: Dataset, path, n_train: int = 150, n_test: int = 62, offset: int = 0) -> str:
    """An official-layout .mat holding rows offset.. of the tiny set (the CLI reads files)."""
    rows, test = slice(offset, offset + n_train), slice(0, n_test)
    mapping = np.array([[label, ord(c[0])] for label, c in zip(tiny.file_labels, tiny.classes)])
    write_mat(str(path), tiny.train_images[rows], np.asarray(tiny.file_labels)[tiny.train_labels[rows]],
              tiny.test_images[test], np.asarray(tiny.file_labels)[tiny.test_labels[test]], mapping, synthetic=True)
    return str(path)


@pytest.fixture(scope="module")
def small_file(tiny_dataset, tmp_path_factory) -> str:
    return write_small(tiny_dataset, tmp_path_factory.mktemp("small") / "small.mat")


@pytest.fixture(scope="module")
def small(small_file) -> Dataset:
    return load(small_file, use_cache=False)


def flat(params) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(params)])


@contextlib.contextmanager
def compile_log():
    """Messages of every compilation JAX does inside the block (jax.log_compiles, public)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield messages
    finally:
        logger.removeHandler(handler)


def compiled(messages: list[str], name: str) -> int:
    return sum(m.startswith(f"Compiling jit({name})") for m in messages)


@pytest.fixture(scope="module")
def runs(small):
    """Two runs of CFG, with the compilations each did; the JIT caches are emptied first, so the
    first run compiles the training program whatever ran before in this process."""
    jax.clear_caches()
    with compile_log() as first_log:
        first = train_and_evaluate(small, CFG, progress=False)
    with compile_log() as second_log:
        second = train_and_evaluate(small, CFG, progress=False)
    return first, first_log, second, second_log


# ---- the model ------------------------------------------------------------------------------

def test_loaded_images_are_the_devices_own_on_a_cpu(tiny_dataset, tmp_path, monkeypatch):
    """load() gives 64-byte aligned images (from the source and from the cache), which JAX on a CPU
    uses without a copy; anything else is copied once, aligned."""
    monkeypatch.setenv("EMNIST_JAX_CACHE", str(tmp_path / "cache"))
    path = write_small(tiny_dataset, tmp_path / "emnist-byclass.mat", n_train=333)
    for _ in ("source", "cache"):
        loaded = load(path)
        np.testing.assert_array_equal(loaded.train_images, tiny_dataset.train_images[:333])
        for images in (loaded.train_images, loaded.test_images):
            assert images.ctypes.data % 64 == 0 and images.flags.c_contiguous
        placed = place_images(loaded.train_images, make_mesh())
        if jax.default_backend() == "cpu":
            assert placed.addressable_shards[0].data.unsafe_buffer_pointer() == loaded.train_images.ctypes.data
    images = tiny_dataset.train_images
    unaligned = aligned_empty((images.nbytes + 64,), np.uint8)[16:16 + images.nbytes].reshape(images.shape)
    unaligned[...] = images
    assert unaligned.ctypes.data % 64 == 16
    placed = place_images(unaligned, make_mesh())
    np.testing.assert_array_equal(np.asarray(placed), unaligned)
    if jax.default_backend() == "cpu":   # copied once into an aligned buffer, which JAX then uses as it is
        assert placed.addressable_shards[0].data.unsafe_buffer_pointer() % 64 == 0


def test_parameter_count_is_the_keras_models():
    assert n_params(62) == 362_942  # ORIGINAL_STUDY.md 6.2
    for classes in (62, 10):
        shapes = jax.eval_shape(StudyCNN(n_classes=classes).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == n_params(classes)


def test_initial_params_are_keras_glorot_uniform_and_seeded():
    model = StudyCNN(n_classes=62)
    params = initial_params(model, (0, 0))
    conv3, dense = params["Conv3x3_2"]["kernel"], params["Dense_0"]["kernel"]
    assert conv3.shape == (3, 3, 64, 128) and dense.shape == (2048, 128)
    limit = np.sqrt(6 / (9 * 64 + 9 * 128))  # Keras: fans count the 3x3 receptive field
    assert limit * 0.98 < np.abs(conv3).max() <= limit
    assert np.sqrt(6 / (2048 + 128)) * 0.98 < np.abs(dense).max() <= np.sqrt(6 / (2048 + 128))
    assert all(not leaf.any() for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if path[-1].key == "bias")
    np.testing.assert_array_equal(flat(params), flat(initial_params(model, (0, 0))))
    assert not np.array_equal(flat(params), flat(initial_params(model, (1, 0))))


def test_both_convolutions_compute_the_same_network():
    x = np.random.default_rng(1).random((4, 28, 28, 1), np.float32)  # numpy: jax.random compiles for seconds
    params = {"params": initial_params(StudyCNN(), 0)}
    a = jax.jit(StudyCNN(conv_impl="xla").apply)(params, x)
    b = jax.jit(StudyCNN(conv_impl="slices").apply)(params, x)
    assert a.shape == (4, 62)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_reshape_pool_equals_flax_same_pool():
    both = jax.jit(lambda x: (max_pool_same(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")))
    for side in (28, 14, 7):  # the network's three sizes; 7 pads to 8
        ours, flax_pool = both(np.random.default_rng(side).normal(size=(2, side, side, 3)).astype(np.float32))
        np.testing.assert_array_equal(ours, flax_pool)
        assert ours.shape[1] == -(-side // 2)


# ---- per-backend choices ----------------------------------------------------------------------

def test_backend_defaults_follow_the_recorded_measurements(monkeypatch):
    from emnist_jax.cnn import config

    monkeypatch.setattr(config, "onednn_available", lambda: False)   # the CPU without the oneDNN extra
    monkeypatch.setattr(config, "fused_not_default_reason", lambda: "no C++ compiler")   # nor the fused kernels
    gpu, cpu = TrainConfig().resolved("gpu"), TrainConfig().resolved("cpu")
    assert (gpu.conv_impl, gpu.steps_per_call, gpu.loop) == ("slices", 64, "scan")   # the H100 measurement (docs/performance.md)
    assert (cpu.conv_impl, cpu.steps_per_call, cpu.loop) == ("slices", 4, "unroll")
    assert "guessed" in BACKEND_DEFAULTS["tpu"].source and "H100" in BACKEND_DEFAULTS["gpu"].source
    mine = TrainConfig(conv_impl="xla", steps_per_call=3, loop="unroll").resolved("gpu")
    assert (mine.conv_impl, mine.steps_per_call, mine.loop) == ("xla", 3, "unroll")  # explicit fields win


# ---- training -------------------------------------------------------------------------------

def test_a_run_compiles_its_training_program_once_for_full_and_partial_calls(runs):
    first, first_log, _, _ = runs
    # 100 images in batches of 16: 6 full steps and one of 4; 2 steps per call: the 4th call holds a
    # padding step, which changes nothing. All of it is one program, compiled once, before epoch 1.
    assert int(first.state.step) == CFG.epochs * 7
    assert compiled(first_log, "_train_calls") == 1
    assert first.compile_seconds > 0


def test_a_second_run_with_the_same_config_compiles_nothing_and_gives_the_same_numbers(runs, small):
    first, _, second, second_log = runs
    assert [m for m in second_log if m.startswith("Compiling")] == []
    assert second.compile_seconds < first.compile_seconds
    np.testing.assert_array_equal(flat(first.state.params), flat(second.state.params))
    assert [h.loss for h in first.history] == [h.loss for h in second.history]
    np.testing.assert_array_equal(first.evaluations["test"].confusion, second.evaluations["test"].confusion)
    other = train_and_evaluate(small, dataclasses.replace(CFG, seed=1), progress=False)
    assert other.history[-1].loss != first.history[-1].loss


def test_the_study_protocol_trains_on_its_rows_as_on_a_file_of_them(runs, small):
    """Training reads the train file's images through the training rows, and the hold-out set is
    evaluated through its rows: the same numbers as a file holding only those rows, in that order."""
    from emnist_jax.cnn.inputs import split_for
    from emnist_jax.cnn.train import evaluate

    study = runs[0]
    train_rows, holdout_rows = split_for(small, CFG)
    only_them = dataclasses.replace(small, train_images=small.train_images[train_rows],
                                    train_labels=small.train_labels[train_rows])
    official = train_and_evaluate(only_them, dataclasses.replace(CFG, protocol="official"), progress=False)
    np.testing.assert_array_equal(flat(official.state.params), flat(study.state.params))
    copied = evaluate(study.state, small.train_images[holdout_rows], small.train_labels[holdout_rows], small.classes,
                      CFG.eval_batch_size)
    through_rows = study.evaluations["holdout"]
    assert (copied.accuracy, copied.loss) == (through_rows.accuracy, through_rows.loss)
    np.testing.assert_array_equal(copied.confusion, through_rows.confusion)


def test_study_protocol_splits_67_33_and_reports_both(runs):
    result = runs[0]
    assert result.n_train == 100 and result.evaluations["holdout"].n == 50
    test = result.evaluations["test"]
    assert test.n == 62 and test.confusion.shape == (62, 62) and test.confusion.sum() == 62
    assert all(isinstance(t, str) and isinstance(p, str) for t, p, _ in test.confused_pairs)
    assert (result.backend, result.devices, result.processes) == (jax.default_backend(), 1, 1)
    assert result.config.conv_impl == "xla" and result.config.steps_per_call == 2


@pytest.mark.parametrize("n, seed", [(150, 0), (1000, 7), (697_932, 3)])
def test_the_study_split_is_sklearns_train_test_split(n, seed):
    from sklearn.model_selection import train_test_split

    from emnist_jax.cnn.inputs import split_for

    data = SimpleNamespace(train_labels=np.zeros(n))
    ours = split_for(data, TrainConfig(seed=seed))
    theirs = train_test_split(np.arange(n), test_size=0.33, random_state=seed)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_steps_lower_the_loss_and_padding_steps_change_nothing(runs, small):
    mesh = make_mesh()
    state = replicate_tree(create_state(runs[0].config, 62, 0), mesh)
    images, labels = replicate(small.train_images[:100], mesh), replicate(small.train_labels[:100], mesh)
    rows = np.tile(np.arange(16, dtype=np.int32), (4, 2, 1))        # the same batch, twice per call
    rows[1] = -1                                                      # call 1: padding only
    index = replicate(rows, mesh)
    sums = lambda: replicate_tree(zero_sums(), mesh)  # noqa: E731  placed as in a run: the same program
    state, first = train_calls(state, images, labels, index, 0, sums(), mesh=mesh, loop="unroll")
    before = flat(state.params)
    state, padding = train_calls(state, images, labels, index, 1, sums(), mesh=mesh, loop="unroll")
    np.testing.assert_array_equal(flat(state.params), before)
    assert int(state.step) == 2 and float(padding["count"]) == 0
    _, again = train_calls(state, images, labels, index, 0, sums(), mesh=mesh, loop="unroll")
    assert float(again["loss"]) < float(first["loss"])


def test_scan_and_unroll_run_the_same_steps(runs, small):
    """The GPU default scans the K steps; CPU unrolls them. Same steps, so the same numbers up to
    float rounding: XLA fuses a scanned body differently, and Adam's normalisation turns rounding in
    near-zero gradients into visible differences in single parameters (1e-4 relative here), so the
    parameter vector is compared as a whole."""
    mesh = make_mesh()
    images, labels = replicate(small.train_images[:100], mesh), replicate(small.train_labels[:100], mesh)
    index = replicate(np.random.default_rng(0).integers(0, 100, (4, 2, 16)).astype(np.int32), mesh)
    results = []
    for loop in ("unroll", "scan"):
        state, sums = replicate_tree(create_state(runs[0].config, 62, 0), mesh), replicate_tree(zero_sums(), mesh)
        for call in range(2):
            state, sums = train_calls(state, images, labels, index, call, sums, mesh=mesh, loop=loop)
        results.append((flat(state.params), float(sums["loss"])))
    (a, loss_a), (b, loss_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6   # measured 1.8e-7 after 4 steps


def test_overfits_the_100_training_images(small):
    result = train_and_evaluate(small, dataclasses.replace(CFG, epochs=20), progress=False)
    assert result.history[-1].accuracy > 0.95, result.history[-1]
    assert result.history[-1].loss < result.history[0].loss / 5


# ---- the command line -----------------------------------------------------------------------

def test_help_is_fast_describes_every_option_and_imports_no_jax():
    code = ("import sys, contextlib, io\nfrom emnist_jax.cnn.__main__ import main, build_parser\n"
            "out = io.StringIO()\nwith contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\nprint(out.getvalue())\nprint('JAX IMPORTED' if 'jax' in sys.modules else 'no jax')\n"
            "print('UNDOCUMENTED', [a.dest for a in build_parser()._actions if not a.help])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "no jax" in out and "UNDOCUMENTED []" in out
    assert "Train the original study's CNN" in out and "exit codes: 0 ok" in out
    assert out.count("from the file name, else") == 1            # --split's default, shown once
    assert f"(default: {TrainConfig().epochs})" in out and "per backend" in out


def test_cli_trains_and_prints_epochs_and_accuracies(small_file, runs, capsys):
    from emnist_jax.cnn.__main__ import main

    assert main(["--data", small_file, "--epochs", "2", *SMALL_CONFIG_ARGS]) == 0
    out = capsys.readouterr().out
    first = runs[0]
    assert f"epoch   1: loss {first.history[0].loss:.4f}" in out and f"epoch   2: loss {first.history[1].loss:.4f}" in out
    assert f"test     accuracy {first.evaluations['test'].accuracy:.4f}" in out
    assert "100 training images" in out and "conv=xla, 2 steps per call (unroll)" in out


def test_the_command_line_offers_every_train_config_field_with_its_own_help():
    from emnist_jax.cnn.__main__ import build_parser, config_from

    parser = build_parser()
    options = {action.dest: action for action in parser._actions}
    fields = dataclasses.fields(TrainConfig)
    assert {f.name for f in fields} <= set(options)
    for field in fields:
        assert options[field.name].help.startswith(field.metadata["help"])
    args = parser.parse_args(["--b1", "0.8", "--b2", "0.99", "--eps", "1e-8", "--holdout-fraction", "0.2",
                              "--grad-chunk", "8", "--loop", "scan", "--conv-impl", "xla"])
    config = config_from(args)
    assert (config.b1, config.b2, config.eps, config.holdout_fraction, config.grad_chunk, config.loop,
            config.conv_impl) == (0.8, 0.99, 1e-8, 0.2, 8, "scan", "xla")
    assert config_from(parser.parse_args([])) == TrainConfig()
