"""IDX files (plain or gzip): the official ``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``."""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import BinaryIO

import numpy as np

from emnist_jax.data.errors import EmnistDataError
from emnist_jax.data.layout import PIXELS, SIDE

IDX_LABELS_MAGIC = 2049
IDX_IMAGES_MAGIC = 2051


def _read_exact(stream: BinaryIO, buffer: memoryview) -> int:
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


#: the most deflate (gzip, zip) can expand its input: 258 bytes from 2 bits (RFC 1951), about 1032:1
MAX_DEFLATE_RATIO = 1032


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} bytes"


def read_idx(stream: BinaryIO, name: str, size: int | None = None, compressed: bool = False) -> np.ndarray:
    """An IDX file (plain or gzip stream) -> (N,) labels or (N, 784) image rows, uint8.

    The payload is read straight into its final array, so the file's data exists once in memory.
    ``size`` is the file's size in bytes (``compressed``: of its gzip form): a header that claims
    more than such a file can hold is refused before anything is allocated.
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
        _check_claim(name, shape, 8 if magic == IDX_LABELS_MAGIC else 16, size, compressed)
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


def _check_claim(name: str, shape: tuple[int, ...], header: int, size: int | None, compressed: bool) -> None:
    """Refuse an IDX header that claims more items than a file of ``size`` bytes can hold."""
    if size is None:
        return
    item, count = int(np.prod(shape[1:])), shape[0]
    if not compressed and count * item > size - header:
        raise EmnistDataError(f"{name}: header says {count:,} items but the payload ends after "
                              f"{max(size - header, 0) // item:,} (a file of {size:,} bytes)")
    if compressed and count * item > size * MAX_DEFLATE_RATIO:
        kind = "images" if len(shape) == 2 else "labels"
        raise EmnistDataError(f"{name}: header claims {count:,} {kind} ({_bytes(count * item)}), more than a "
                              f"{_bytes(size)} gzip file can hold (at most {_bytes(size * MAX_DEFLATE_RATIO)})")


def open_idx(path: str) -> BinaryIO:
    """Open an IDX file, decompressing on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
