"""The official ``emnist-<split>.mat`` files: the reader, and the one writer (atomic)."""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
import scipy.io

from emnist_jax.data.errors import EmnistDataError, describe_values
from emnist_jax.data.layout import RawSplit, check_images, check_labels, check_pair, file_rows
from emnist_jax.data.mapping import mapping_from_rows


def read_mat(source: str | BinaryIO, name: str) -> RawSplit:
    """An official ``emnist-<split>.mat`` file: struct ``dataset`` with train, test and mapping."""
    try:
        contents = scipy.io.loadmat(source, variable_names=("dataset", "emnist_jax_synthetic"))
    except OSError as error:
        if error.errno is not None:  # the system's error (permission, link loop ...): see reading()
            raise
        raise EmnistDataError(f"{name}: not a readable MATLAB file ({_first_line(error)})") from None
    except Exception as error:  # scipy raises many types for a damaged file
        raise EmnistDataError(f"{name}: not a readable MATLAB file ({_first_line(error)})") from None
    if "dataset" not in contents:
        raise EmnistDataError(f"{name}: no 'dataset' struct in this .mat file")
    try:
        dataset = _one_struct(contents["dataset"], name, "dataset")
        parts = {(part, field): np.asarray(_one_struct(dataset[part], name, f"dataset.{part}")[field])
                 for part in ("train", "test") for field in ("images", "labels")}
        mapping_rows = dataset["mapping"]
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise EmnistDataError(f"{name}: 'dataset' struct lacks train/test images, labels or mapping "
                              f"({error})") from None
    for part in ("train", "test"):
        check_images(parts[(part, "images")], f"{name}: dataset.{part}.images")
        check_labels(parts[(part, "labels")], f"{name}: dataset.{part}.labels")
        check_pair(parts[(part, "images")], parts[(part, "labels")].reshape(-1), f"{name} ({part})")
    return RawSplit(parts[("train", "images")], parts[("train", "labels")].reshape(-1),
                    parts[("test", "images")], parts[("test", "labels")].reshape(-1),
                    mapping_from_rows(mapping_rows, name),
                    synthetic=bool(np.asarray(contents.get("emnist_jax_synthetic", 0)).any()))


def _one_struct(value: np.ndarray, name: str, what: str):
    """The one struct of a MATLAB struct array; several would be ambiguous (only the first was read)."""
    if value.size != 1:
        raise EmnistDataError(f"{name}: '{what}' is an array of {value.size} structs, expected one")
    return value.reshape(-1)[0]


def _first_line(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def mat_contents(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, mapping_rows: np.ndarray, synthetic: bool = False) -> dict:
    """The variables of an official-layout ``.mat`` file (for ``scipy.io.savemat``), checked."""
    def part(kind: str, images: np.ndarray, labels: np.ndarray) -> dict:
        labels = np.asarray(labels).reshape(-1, 1)
        check_labels(labels, f"write_mat: {kind}_labels")
        if labels.size and labels.max() > 255:  # stored as uint8, as in the official files
            raise EmnistDataError(f"write_mat: {kind}_labels must be at most 255, found {describe_values(labels)}")
        labels = labels.astype(np.uint8)
        return {"images": file_rows(images), "labels": labels, "writers": np.zeros_like(labels)}

    mapping_from_rows(np.asarray(mapping_rows), "write_mat: mapping_rows")  # refuses a bad mapping
    contents = {"dataset": {"train": part("train", train_images, train_labels),
                            "test": part("test", test_images, test_labels),
                            "mapping": np.asarray(mapping_rows, np.float64)}}
    if synthetic:
        contents["emnist_jax_synthetic"] = np.uint8(1)
    return contents


def save_mat(file: BinaryIO, contents: dict) -> None:
    """Write ``contents`` (from :func:`mat_contents`) to an open binary file as a compressed ``.mat``."""
    scipy.io.savemat(file, contents, do_compression=True)


def mat_bytes(contents: dict) -> bytes:
    """``contents`` (from :func:`mat_contents`) as the bytes of a compressed ``.mat`` file."""
    buffer = io.BytesIO()
    save_mat(buffer, contents)
    return buffer.getvalue()


def write_mat(path: str, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
              test_labels: np.ndarray, mapping_rows: np.ndarray, synthetic: bool = False) -> None:
    """Write upright uint8 images and file labels in the official ``.mat`` layout, atomically.

    Raises EmnistDataError for arrays that the layout cannot hold unchanged; an OSError
    (unwritable folder, full disk) propagates, and no partial file is left.
    """
    contents = mat_contents(train_images, train_labels, test_images, test_labels, mapping_rows, synthetic)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            save_mat(f, contents)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
