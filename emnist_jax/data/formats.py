"""Readers (and the one writer) for the official EMNIST file formats.

Every reader raises :class:`EmnistDataError` with a one-line message that names the file and
the problem. Images come back in the file's own layout, one 784-byte row per image, which is
the upright character transposed; :func:`upright` turns such rows into upright 28x28 images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import scipy.io

SIDE = 28
PIXELS = SIDE * SIDE
IDX_LABELS_MAGIC = 2049
IDX_IMAGES_MAGIC = 2051


class EmnistDataError(ValueError):
    """Bad, missing or inconsistent EMNIST data; the message names the file and the problem."""


@dataclass(frozen=True)
class Mapping:
    """A split's label coding as the file states it: file label -> character(s)."""

    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def index_of(self, file_labels: np.ndarray, name: str) -> np.ndarray:
        """File labels -> class indices 0..K-1 (position in the mapping); unknown labels raise."""
        file_labels = np.asarray(file_labels).reshape(-1)
        known = np.asarray(self.labels, np.int64)
        position = np.searchsorted(known, file_labels)
        position = np.clip(position, 0, len(known) - 1)
        bad = known[position] != file_labels
        if bad.any():
            examples = sorted(set(np.asarray(file_labels[bad]).tolist()))[:5]
            raise EmnistDataError(f"{name}: {int(bad.sum())} labels are not in the mapping "
                                  f"(e.g. {examples}; mapping has {known.min()}..{known.max()})")
        return position.astype(np.int32)


def mapping_from_rows(rows: np.ndarray, name: str) -> Mapping:
    """Rows of ``label code [code]`` (letters has two codes: upper and lower case)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] < 2 or len(rows) == 0:
        raise EmnistDataError(f"{name}: mapping must have rows 'label code [code]', got shape {rows.shape}")
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order].astype(np.int64)
    if len(set(rows[:, 0].tolist())) != len(rows):
        raise EmnistDataError(f"{name}: mapping lists a label twice")
    try:
        classes = tuple("".join(chr(c) for c in row[1:]) for row in rows)
    except (ValueError, OverflowError) as error:
        raise EmnistDataError(f"{name}: mapping holds a code that is no character ({error})") from None
    return Mapping(tuple(rows[:, 0].tolist()), classes)


def read_mapping_text(text: str, name: str) -> Mapping:
    """Parse an ``emnist-<split>-mapping.txt`` file's text."""
    try:
        rows = [[int(v) for v in line.split()] for line in text.splitlines() if line.strip()]
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise ValueError("rows of different length")
    except ValueError as error:
        raise EmnistDataError(f"{name}: not a mapping file ({error})") from None
    return mapping_from_rows(np.array(rows), name)


def _read_exact(stream: BinaryIO, buffer: memoryview) -> int:
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def read_idx(stream: BinaryIO, name: str) -> np.ndarray:
    """An IDX file (plain or gzip stream) -> (N,) labels or (N, 784) image rows, uint8.

    The payload is read straight into its final array, so the file's data exists once in memory.
    """
    try:
        header = stream.read(8)
        if len(header) < 8:
            raise EmnistDataError(f"{name}: truncated IDX header ({len(header)} bytes)")
        magic, count = struct.unpack(">ii", header)
        if magic == IDX_LABELS_MAGIC:
            shape: tuple[int, ...] = (count,)
        elif magic == IDX_IMAGES_MAGIC:
            rows, cols = struct.unpack(">ii", stream.read(8).ljust(8, b"\xff"))
            if (rows, cols) != (SIDE, SIDE):
                raise EmnistDataError(f"{name}: images are {rows}x{cols}, expected {SIDE}x{SIDE}")
            shape = (count, PIXELS)
        else:
            raise EmnistDataError(f"{name}: wrong IDX magic number {magic} "
                                  f"(expected {IDX_LABELS_MAGIC} for labels or {IDX_IMAGES_MAGIC} for images)")
        if count < 0:
            raise EmnistDataError(f"{name}: negative item count {count} in the IDX header")
        data = np.empty(shape, np.uint8)
        filled = _read_exact(stream, memoryview(data.reshape(-1)))
        if filled < data.size:
            raise EmnistDataError(f"{name}: header says {count} items but the payload ends after "
                                  f"{filled // (data.size // max(count, 1))}")
        if stream.read(1):
            raise EmnistDataError(f"{name}: payload is longer than the {count} items the header says")
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise EmnistDataError(f"{name}: corrupt or truncated gzip data ({error or type(error).__name__})") from None
    return data


def open_idx(path: str) -> BinaryIO:
    """Open an IDX file, decompressing on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@dataclass(frozen=True)
class RawSplit:
    """A split exactly as stored: (N, 784) transposed image rows, file labels, the mapping."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mapping: Mapping
    synthetic: bool = False


def check_pair(images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Images and labels must pair one-to-one."""
    if images.ndim != 2 or images.shape[1] != PIXELS:
        raise EmnistDataError(f"{name}: images have shape {images.shape}, expected (N, {PIXELS})")
    if len(images) != len(labels):
        raise EmnistDataError(f"{name}: {len(images)} images but {len(labels)} labels")


def read_mat(source: str | BinaryIO, name: str) -> RawSplit:
    """An official ``emnist-<split>.mat`` file: struct ``dataset`` with train, test and mapping."""
    try:
        contents = scipy.io.loadmat(source, variable_names=("dataset", "emnist_jax_synthetic"))
    except FileNotFoundError:
        raise EmnistDataError(f"{name}: file not found") from None
    except Exception as error:  # scipy raises many types for a damaged file
        raise EmnistDataError(f"{name}: not a readable MATLAB file "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                              ) from None
    if "dataset" not in contents:
        raise EmnistDataError(f"{name}: no 'dataset' struct in this .mat file")
    try:
        dataset = contents["dataset"][0, 0]
        train, test = dataset["train"][0, 0], dataset["test"][0, 0]
        parts = [np.asarray(part[field]) for part in (train, test) for field in ("images", "labels")]
        mapping_rows = dataset["mapping"]
    except (ValueError, IndexError, KeyError, TypeError) as error:
        raise EmnistDataError(f"{name}: 'dataset' struct lacks train/test images, labels or mapping "
                              f"({error})") from None
    train_images, train_labels, test_images, test_labels = parts
    check_pair(train_images, train_labels.reshape(-1), f"{name} (train)")
    check_pair(test_images, test_labels.reshape(-1), f"{name} (test)")
    return RawSplit(train_images, train_labels.reshape(-1), test_images, test_labels.reshape(-1),
                    mapping_from_rows(mapping_rows, name),
                    synthetic=bool(np.asarray(contents.get("emnist_jax_synthetic", 0)).any()))


def upright(rows: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N, 784) rows in the file's transposed layout -> (N, 28, 28) upright uint8 images.

    Converted in chunks, so the peak is the input plus the output (two copies), whatever the
    input's memory order (scipy gives MATLAB's column-major arrays).
    """
    out = np.empty((len(rows), SIDE, SIDE), np.uint8)
    for start in range(0, len(rows), chunk):
        block = np.ascontiguousarray(rows[start:start + chunk], dtype=np.uint8)
        out[start:start + chunk] = block.reshape(-1, SIDE, SIDE).transpose(0, 2, 1)
    return out


def file_rows(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) upright images -> (N, 784) rows in the official transposed layout."""
    return np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 2, 1)).reshape(len(images), PIXELS)


def write_mat(path: str, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
              test_labels: np.ndarray, mapping_rows: np.ndarray, synthetic: bool = False) -> None:
    """Write upright images and file labels in the official ``.mat`` layout, atomically."""
    def part(images: np.ndarray, labels: np.ndarray) -> dict:
        labels = np.asarray(labels, np.uint8).reshape(-1, 1)
        return {"images": file_rows(images), "labels": labels, "writers": np.zeros_like(labels)}

    contents = {"dataset": {"train": part(train_images, train_labels), "test": part(test_images, test_labels),
                            "mapping": np.asarray(mapping_rows, np.float64)}}
    if synthetic:
        contents["emnist_jax_synthetic"] = np.uint8(1)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, contents, do_compression=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
