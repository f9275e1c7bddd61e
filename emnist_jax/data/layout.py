"""The official layout: 28x28 uint8 images stored as 784-byte rows of the transposed character.

Images come back from every reader in the file's own layout, one 784-byte row per image, which is
the upright character transposed; :func:`upright` turns such rows into upright 28x28 images and
:func:`file_rows` back. Image arrays must be uint8, as in the official files: nothing is ever
cast, so no value is silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emnist_jax.data.errors import EmnistDataError, describe_values

if TYPE_CHECKING:
    from emnist_jax.data.mapping import Mapping


SIDE = 28
PIXELS = SIDE * SIDE


@dataclass(frozen=True)
class RawSplit:
    """A split exactly as stored: (N, 784) transposed image rows, file labels, the mapping."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mapping: Mapping
    synthetic: bool = False


def whole_non_negative(values: np.ndarray) -> bool:
    """Every value a whole number >= 0 (integer dtypes, or floats holding whole numbers)."""
    if values.size == 0:
        return values.dtype.kind in "iuf"
    if values.dtype.kind in "iu":
        return bool(values.min() >= 0)
    if values.dtype.kind == "f":
        return bool(np.isfinite(values).all() and (np.floor(values) == values).all() and values.min() >= 0)
    return False


def check_images(images: np.ndarray, where: str) -> None:
    """Image arrays must be uint8, the official files' type: nothing is ever cast.

    Not even an array whose values are whole numbers in 0..255: such a file was made by some
    other tool, and its scale cannot be known (0/1 binarised images are whole numbers too, and
    would load as nearly black characters).
    """
    if images.dtype != np.uint8:
        raise EmnistDataError(f"{where} holds {describe_values(images)}; images must be uint8 (0..255) as in "
                              "the official files, and nothing is converted")


def check_labels(labels: np.ndarray, where: str) -> None:
    """Labels must be whole numbers >= 0 (any integer type, or floats holding whole numbers)."""
    if not whole_non_negative(labels):
        raise EmnistDataError(f"{where} must be whole numbers >= 0, found {describe_values(labels)}")


def check_pair(images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Images and labels must pair one-to-one."""
    if images.ndim != 2 or images.shape[1] != PIXELS:
        raise EmnistDataError(f"{name}: images have shape {images.shape}, expected (N, {PIXELS})")
    if len(images) != len(labels):
        raise EmnistDataError(f"{name}: {len(images)} images but {len(labels)} labels")


#: where images start in memory: JAX on a CPU uses a host array aligned so as its device array
#: without a copy (the CNN's training images: 547 MB at ByClass size)
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts at a multiple of :data:`ALIGNMENT` bytes."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset:offset + size].view(dtype).reshape(shape)


def upright(rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N, 784) rows in the file's transposed layout -> (N, 28, 28) upright uint8 images.

    Converted in chunks, so the peak is the input plus the output (two copies), whatever the
    input's memory order (scipy gives MATLAB's column-major arrays); the output is aligned
    (:func:`aligned_empty`).
    """
    out = aligned_empty((len(rows), SIDE, SIDE), np.uint8)
    for start in range(0, len(rows), chunk):
        block = np.ascontiguousarray(rows[start:start + chunk], dtype=np.uint8)
        out[start:start + chunk] = block.reshape(-1, SIDE, SIDE).transpose(0, 2, 1)
    return out


def file_rows(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) upright uint8 images -> (N, 784) rows in the official transposed layout."""
    images = np.asarray(images)
    check_images(images, "file_rows: images")
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise EmnistDataError(f"file_rows: images have shape {images.shape}, expected (N, {SIDE}, {SIDE})")
    return np.ascontiguousarray(images.transpose(0, 2, 1)).reshape(len(images), PIXELS)
