import json
import os
import stat
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.io

import official_layout as ol
from emnist_jax.data import SPLITS, EmnistDataError, default_file, file_rows, load, write_mat
from emnist_jax.data import cache as data_cache
from emnist_jax.data import loading

SPLIT_NAMES = list(SPLITS)


def assert_same(dataset, data, split):
    mapping = ol.mapping_rows(split)
    file_labels = [row[0] for row in mapping]
    np.testing.assert_array_equal(dataset.train_images, data["train_images"])
    np.testing.assert_array_equal(dataset.test_images, data["test_images"])
    np.testing.assert_array_equal(np.array(file_labels)[dataset.train_labels], data["train_labels"])
    np.testing.assert_array_equal(np.array(file_labels)[dataset.test_labels], data["test_labels"])
    assert dataset.classes == tuple("".join(chr(c) for c in row[1:]) for row in mapping)
    assert dataset.file_labels == tuple(file_labels)
    assert dataset.split == split and dataset.n_classes == SPLITS[split][0]
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape[1:] == (28, 28)
    assert not dataset.synthetic


# ---- round trips: every format, every split -------------------------------------------------

@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_mat_round_trip(tmp_path, split):
    data = ol.make_split(split, seed=1)
    path = ol.write_mat(tmp_path / f"emnist-{split}.mat", data)
    assert_same(load(path), data, split)  # split inferred from the file name


@pytest.mark.parametrize("split", SPLIT_NAMES)
@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trip(tmp_path, split, compress):
    data = ol.make_split(split, seed=2)
    folder = ol.write_idx_folder(tmp_path / "gzip", split, data, compress)
    assert_same(load(folder, split), data, split)


@pytest.mark.parametrize("split", SPLIT_NAMES)
def test_official_archives_round_trip(tmp_path, split):
    data = ol.make_split(split, seed=3)
    members = {f"gzip/{name}": payload for name, payload in ol.idx_members(split, data).items()}
    assert_same(load(ol.write_zip(tmp_path / "gzip.zip", members), split), data, split)
    matlab = ol.write_zip(tmp_path / "matlab.zip", {f"matlab/emnist-{split}.mat": ol.mat_bytes(data)})
    assert_same(load(matlab, split), data, split)


def test_folder_with_several_splits_reads_the_requested_one(tmp_path):
    letters, digits = ol.make_split("letters", seed=4), ol.make_split("digits", seed=5)
    ol.write_idx_folder(tmp_path, "letters", letters)
    ol.write_idx_folder(tmp_path, "digits", digits)
    assert_same(load(tmp_path, "digits"), digits, "digits")
    assert_same(load(tmp_path, "letters"), letters, "letters")


# ---- orientation and mapping ------------------------------------------------------------------

def test_images_come_back_upright(tmp_path):
    # An upright 'F': full-height left stem, top bar to the right, shorter middle bar.
    glyph = np.zeros((28, 28), np.uint8)
    glyph[4:24, 6] = 255
    glyph[4, 6:20] = 255
    glyph[13, 6:15] = 255
    # The official layout stores the transpose, row by row: stored[p] = glyph[p % 28, p // 28].
    stored = np.array([glyph[p % 28, p // 28] for p in range(784)], np.uint8)
    data = ol.make_split("digits", n_train=10, n_test=10)
    data["train_images"][0] = glyph
    path = ol.write_mat(tmp_path / "emnist-digits.mat", data)
    assert np.array_equal(scipy.io.loadmat(path)["dataset"][0, 0]["train"][0, 0]["images"][0], stored)
    image = load(path).train_images[0]
    assert image[4:24, 6].all() and image[4, 6:20].all() and image[13, 6:15].all()
    assert image[5:24, 7:].sum() == 255 * len(range(7, 15))  # only the middle bar right of the stem
    assert not np.array_equal(image, image.T)


def test_letters_mapping_is_read_not_guessed(tmp_path):
    data = ol.make_split("letters", n_train=52, n_test=26)
    dataset = load(ol.write_mat(tmp_path / "emnist-letters.mat", data))
    assert dataset.classes[0] == "Aa" and dataset.classes[25] == "Zz"
    assert dataset.file_labels == tuple(range(1, 27))
    assert dataset.train_labels.min() == 0 and dataset.train_labels.max() == 25
    np.testing.assert_array_equal(dataset.train_labels + 1, data["train_labels"])


def test_a_custom_mapping_is_followed(tmp_path):
    data = ol.make_split("digits", n_train=10, n_test=10)
    data["mapping"] = [[i, ord("abcdefghij"[i])] for i in range(10)]  # not the official one
    assert load(ol.write_mat(tmp_path / "emnist-digits.mat", data)).classes == tuple("abcdefghij")


# ---- bad input: one test per case --------------------------------------------------------------

def assert_error(match, source, split=None):
    with pytest.raises(EmnistDataError, match=match) as info:
        load(source, split)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    assert str(tmp_path / "nope.mat") in assert_error("file not found", tmp_path / "nope.mat")


def test_wrong_extension(tmp_path):
    path = tmp_path / "emnist.csv"
    path.write_text("1,2,3")
    assert str(path) in assert_error("unsupported file type", path)


def test_unknown_split(tmp_path):
    assert_error("unknown split 'bogus'", tmp_path, "bogus")


def test_truncated_gzip(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"))
    path = folder / "emnist-mnist-train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    assert str(path) in assert_error("truncated", folder, "mnist")


def test_corrupt_gzip(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"))
    path = folder / "emnist-mnist-train-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 20)
    assert str(path) in assert_error("corrupt or truncated gzip", folder, "mnist")


def test_corrupt_zip(tmp_path):
    data = ol.make_split("mnist")
    path = ol.write_zip(tmp_path / "matlab.zip", {"matlab/emnist-mnist.mat": ol.mat_bytes(data)})
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert str(path) in assert_error("corrupt or truncated zip", path, "mnist")


def test_zip_member_with_bad_crc(tmp_path):
    data = ol.make_split("mnist")
    path = ol.write_zip(tmp_path / "gzip.zip", ol.idx_members("mnist", data, compress=True))
    raw = bytearray(path.read_bytes())
    offset = raw.find(b"\x1f\x8b")  # flip a byte inside the first stored gzip member
    raw[offset + 2000] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert str(path) in assert_error("corrupt", path, "mnist")


def test_corrupt_mat(tmp_path):
    path = tmp_path / "emnist-mnist.mat"
    path.write_bytes(ol.mat_bytes(ol.make_split("mnist"))[:300])
    assert str(path) in assert_error("not a readable MATLAB file", path)


def test_mat_without_dataset_struct(tmp_path):
    path = tmp_path / "emnist-mnist.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 784), np.uint8)})
    assert str(path) in assert_error("no 'dataset' struct", path)


def test_mat_struct_without_fields(tmp_path):
    path = tmp_path / "emnist-mnist.mat"
    scipy.io.savemat(path, {"dataset": {"train": {"images": np.zeros((2, 784), np.uint8)}}})
    assert_error("lacks train/test", path)


def test_wrong_idx_magic(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"), compress=False)
    path = folder / "emnist-mnist-test-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">i", 2050) + path.read_bytes()[4:])
    assert str(path) in assert_error("wrong IDX magic number 2050", folder, "mnist")


def test_idx_header_count_larger_than_payload(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"), compress=False)
    path = folder / "emnist-mnist-train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:4] + struct.pack(">i", 41) + raw[8:])
    assert str(path) in assert_error("header says 41 items but the payload ends after 40", folder, "mnist")


def test_idx_payload_longer_than_header(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"), compress=False)
    path = folder / "emnist-mnist-train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x01")
    assert str(path) in assert_error("payload is longer", folder, "mnist")


def test_image_and_label_counts_disagree(tmp_path):
    data = ol.make_split("mnist", n_train=40)
    data["train_labels"] = data["train_labels"][:39]
    folder = ol.write_idx_folder(tmp_path, "mnist", data)
    assert_error("40 images but 39 labels", folder, "mnist")


def test_labels_outside_the_mapping(tmp_path):
    data = ol.make_split("digits")
    data["test_labels"][3] = 12
    path = ol.write_mat(tmp_path / "emnist-digits.mat", data)
    assert str(path) in assert_error(r"1 labels are not in the mapping \(e.g. \[12\]", path)


def test_mapping_size_must_match_split(tmp_path):
    path = ol.write_mat(tmp_path / "data.mat", ol.make_split("digits"))
    assert_error("mapping has 10 classes but split 'byclass' has 62", path, "byclass")


def test_mat_name_and_split_disagree(tmp_path):
    path = ol.write_mat(tmp_path / "emnist-digits.mat", ol.make_split("digits"))
    assert_error("holds split 'digits', not 'letters'", path, "letters")


def test_folder_without_mapping_file(tmp_path):
    folder = ol.write_idx_folder(tmp_path, "mnist", ol.make_split("mnist"))
    (folder / "emnist-mnist-mapping.txt").unlink()
    assert_error("mapping.txt: file not found", folder, "mnist")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "emnist-mnist.mat"
    path.write_bytes(b"not a mat file at all" * 10)
    result = subprocess.run([sys.executable, "-m", "emnist_jax.data", "info", "--data", str(path)],
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_info_command_prints_counts_and_writes_both_figures(tmp_path, capsys):
    from emnist_jax.data.__main__ import main

    data = ol.make_split("digits", n_train=40, n_test=12)
    path = ol.write_mat(tmp_path / "emnist-digits.mat", data)
    assert main(["info", "--data", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"source : {path}  [EMNIST]" and out[1].startswith("split  : digits, 10 classes")
    assert out[2].startswith("train  : 40 images   test: 12 images")
    table = {int(line.split()[0]): line.split() for line in out if line[:5].strip().isdigit()}
    train, test = np.bincount(data["train_labels"], minlength=10), np.bincount(data["test_labels"], minlength=10)
    for label in range(10):
        assert table[label][1:] == [str(label), str(train[label]), str(test[label]),
                                    f"{100 * train[label] / 40:.2f}"]
    for name in ("samples.png", "class_distribution.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".emnist_jax_report", "class_distribution.png",
                                                                   "samples.png"]
    marker = json.loads((tmp_path / "out" / ".emnist_jax_report").read_text())
    assert marker["made_by"] == "python -m emnist_jax.data info" and marker["state"] == "complete"
    assert marker["files"] == ["class_distribution.png", "samples.png"]


def test_info_replaces_only_its_own_earlier_figures(tmp_path, capsys):
    from emnist_jax.data.__main__ import main
    from emnist_jax.report import output

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ol.write_mat(tmp_path / "a" / "emnist-digits.mat", ol.make_split("digits", seed=1))
    second = ol.write_mat(tmp_path / "b" / "emnist-digits.mat", ol.make_split("digits", seed=2))
    out = tmp_path / "out"
    assert main(["info", "--data", str(first), "--out", str(out)]) == 0
    grid = (out / "samples.png").read_bytes()
    assert main(["info", "--data", str(second), "--out", str(out)]) == 0
    assert (out / "samples.png").read_bytes() != grid  # replaced: the samples of the other file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no hidden folder left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 & ~umask  # readable as usual, writable by the user only
    with pytest.raises(output.OutputError, match="was made by python -m emnist_jax.data info, not by this command"):
        output.check_target(out)  # nor does the report replace a figure set


# ---- cache ------------------------------------------------------------------------------------

def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    data = ol.make_split("balanced")
    path = ol.write_mat(tmp_path / "emnist-balanced.mat", data)
    load(path)
    monkeypatch.setattr(loading, "_read_source", lambda *a: pytest.fail("re-read despite the cache"))
    assert_same(load(path), data, "balanced")


def test_cache_is_invalidated_when_the_file_changes(tmp_path):
    path = tmp_path / "emnist-mnist.mat"
    ol.write_mat(path, ol.make_split("mnist", seed=1))
    load(path)
    changed = ol.make_split("mnist", seed=2)
    ol.write_mat(path, changed)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert_same(load(path), changed, "mnist")


def test_corrupt_cache_entry_is_rebuilt_not_used(tmp_path):
    data = ol.make_split("mnist")
    path = ol.write_mat(tmp_path / "emnist-mnist.mat", data)
    load(path)
    (entry,) = data_cache.cache_dir().glob("arrays-*.npz")
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte inside the image array: the zip CRC catches it
    entry.write_bytes(bytes(raw))
    assert_same(load(path), data, "mnist")
    assert data_cache.read(data_cache.fingerprint([str(path)], "mnist")) is not None  # rebuilt


def test_cache_folders_and_entries_are_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("EMNIST_JAX_CACHE", str(tmp_path / "made" / "cache"))
    path = ol.write_mat(tmp_path / "emnist-mnist.mat", ol.make_split("mnist"))
    old = os.umask(0)
    try:
        load(path)
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "made" / "cache").glob("arrays-*.npz")
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "made", tmp_path / "made" / "cache", entry)]
    assert modes == [0o700, 0o700, 0o600]


def test_an_empty_cache_variable_means_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EMNIST_JAX_CACHE", "")
    assert data_cache.cache_dir() == tmp_path / ".cache" / "emnist_jax"


# ---- memory --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["idx", "mat"])
def test_loading_peak_is_about_two_copies_of_the_images(tmp_path, kind):
    data = ol.make_split("mnist", n_train=30_000, n_test=10)
    # EMNIST-like sparsity (2/3 zeros): a .mat is read whole while compressed, and real
    # EMNIST compresses to ~0.4 of its size; incompressible noise would measure something else.
    data["train_images"][data["train_images"] < 170] = 0
    source = (ol.write_idx_folder(tmp_path, "mnist", data) if kind == "idx"
              else ol.write_mat(tmp_path / "emnist-mnist.mat", data, level=1))
    image_bytes = data["train_images"].nbytes
    tracemalloc.start()
    load(source, "mnist", use_cache=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2.3 * image_bytes, f"peak {peak / image_bytes:.2f} copies"


# ---- the embedded default --------------------------------------------------------------------
# Generating the real 60,000 + 12,000 images takes ~20 s, so these tests prove its properties on a
# small size through the same code (default_file -> write_mat -> load), prove that load("default")
# takes that route with DEFAULT_SIZE, and check the full size's label balance without rendering.

SMALL = (620, 124)  # 10 and 2 images per class


def test_default_file_is_synthetic_byclass_read_through_the_mat_loader(capsys):
    path = default_file(seed=0, size=SMALL)
    assert path.parent == data_cache.cache_dir() and path.suffix == ".mat"
    assert f"620 + 124 images" in capsys.readouterr().err  # the one progress line, on stderr
    ds = load(path)
    assert ds.synthetic and ds.split == "byclass"
    assert ds.classes == tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert ds.train_images.shape == (620, 28, 28) and ds.test_images.shape == (124, 28, 28)
    assert set(ds.class_counts("train")) == {10} and set(ds.class_counts("test")) == {2}
    assert 0.5 < (ds.train_images == 0).mean() < 0.8  # black background, white strokes
    assert default_file(seed=0, size=SMALL) == path and capsys.readouterr().err == ""  # made once


def test_load_default_is_default_file_at_default_size(monkeypatch):
    assert loading.DEFAULT_SIZE == (60_000, 12_000)
    monkeypatch.setattr(loading, "DEFAULT_SIZE", SMALL)  # read when load("default") runs, not bound before
    ds = load("default")
    assert ds.source == "default" and ds.synthetic and ds.split == "byclass"
    direct = load(default_file(seed=0, size=SMALL))
    np.testing.assert_array_equal(ds.train_images, direct.train_images)
    np.testing.assert_array_equal(ds.test_labels, direct.test_labels)
    assert [p.name for p in data_cache.cache_dir().glob("synthetic-*.mat")] == ["synthetic-v1-seed0-620x124.mat"]


def test_default_size_gives_every_class_967_or_968_training_images():
    from emnist_jax import synthetic

    labels = synthetic.balanced_labels(loading.DEFAULT_SIZE[0], 62, np.random.default_rng(0))
    assert set(np.bincount(labels, minlength=62)) == {967, 968}


def test_default_refuses_other_splits():
    assert_error("only the byclass split", "default", "letters")


# ---- the writers never change a value ---------------------------------------------------------

@pytest.mark.parametrize("images, found", [
    (np.full((2, 28, 28), 300, np.int64), "int64 values 300..300"),
    (np.full((2, 28, 28), 0.5), "float64 values 0.5..0.5"),
    (np.full((2, 28, 28), 7.0), "float64 values 7..7"),  # whole numbers, but not the official type
])
def test_write_mat_and_file_rows_refuse_images_that_are_not_uint8(tmp_path, images, found):
    labels = np.zeros(2, np.uint8)
    with pytest.raises(EmnistDataError, match=found):
        write_mat(str(tmp_path / "x.mat"), images, labels, images, labels, [[0, 48]])
    with pytest.raises(EmnistDataError, match=found):
        file_rows(images)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, found", [(np.array([0, -1]), "whole numbers >= 0"),
                                           (np.array([0, 256]), "at most 255"),
                                           (np.array([0.0, 1.5]), "whole numbers >= 0")])
def test_write_mat_refuses_labels_it_cannot_store_unchanged(tmp_path, labels, found):
    images = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(EmnistDataError, match=found):
        write_mat(str(tmp_path / "x.mat"), images, labels, images, np.zeros(2, np.uint8), [[0, 48]])
    assert list(tmp_path.iterdir()) == []
