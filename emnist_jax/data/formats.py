"""Readers (and the one writer) for the official EMNIST file formats.

Every reader raises :class:`EmnistDataError` with a one-line message that names the file and
the problem; :func:`reading` is the one place that turns an operating-system error on a path
(permission denied, symlink loop, a folder where a file belongs ...) into such a line. Images
come back in the file's own layout, one 784-byte row per image, which is the upright character
transposed; :func:`upright` turns such rows into upright 28x28 images. Image arrays must be
uint8, as in the official files: nothing is ever cast, so no value is silently changed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import re
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
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


_OS_REASONS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symbolic link loop (too many levels of symbolic links)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (failing disk or network file system?)",
    errno.EEXIST: "already exists",
}


def os_reason(error: OSError) -> str:
    """A few words for an operating-system error, by errno (the path is not included)."""
    return _OS_REASONS.get(error.errno, error.strerror or type(error).__name__)


def os_error_line(error: OSError, path: str | os.PathLike | None = None) -> str:
    """``PATH: reason``, naming the path the system call failed on when it says which."""
    return f"{error.filename if error.filename is not None else path}: {os_reason(error)}"


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn an operating-system error while reading ``path`` into a one-line EmnistDataError.

    Only errors with an errno are translated: an OSError without one (gzip's BadGzipFile,
    requests' errors) is a content or protocol problem that its reader words itself.
    """
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise EmnistDataError(os_error_line(error, path)) from None


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


#: the largest Unicode code point
MAX_CODE = 0x10FFFF
#: the largest mapping file read (the official ones have 60..447 bytes)
MAX_MAPPING_BYTES = 1 << 20


def mapping_from_rows(rows: np.ndarray, name: str) -> Mapping:
    """Rows of ``label code [code]`` (letters has two codes: upper and lower case).

    Refused, as ambiguous: a label listed twice, labels that are not consecutive, a code that is
    no visible character (a control or format character, white space, a surrogate, an unassigned
    code point), and a character given to two classes.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] < 2 or len(rows) == 0:
        raise EmnistDataError(f"{name}: mapping must have rows 'label code [code]', got shape {rows.shape}")
    if not _whole_non_negative(rows):
        raise EmnistDataError(f"{name}: mapping must hold whole numbers >= 0, found {describe_values(rows)}")
    top = rows.max()
    if top > MAX_CODE:  # checked before the cast: a larger float would not survive it
        shown = _number(top) if top < 1e15 else f"{float(top):g}"
        raise EmnistDataError(f"{name}: mapping holds {shown}, more than any label or character code "
                              f"(at most {MAX_CODE})")
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order].astype(np.int64)
    labels = rows[:, 0].tolist()
    if len(set(labels)) != len(rows):
        raise EmnistDataError(f"{name}: mapping lists a label twice")
    gap = next((i for i in range(1, len(labels)) if labels[i] != labels[i - 1] + 1), None)
    if gap is not None:
        raise EmnistDataError(f"{name}: mapping's labels are not consecutive ({labels[gap - 1]} is followed by "
                              f"{labels[gap]})")
    owner: dict[str, int] = {}
    for label, *codes in rows.tolist():
        for code in codes:
            char = chr(code)
            kind = unicodedata.category(char)
            if kind[0] in "CZ":
                raise EmnistDataError(f"{name}: mapping gives label {label} the code U+{code:04X} "
                                      f"({_CATEGORIES.get(kind, kind)}), which is no visible character")
            if char in owner:
                raise EmnistDataError(f"{name}: mapping gives the character {char!r} twice (labels {owner[char]} "
                                      f"and {label}); which class it names is ambiguous")
            owner[char] = label
    return Mapping(tuple(labels), tuple("".join(chr(c) for c in row[1:]) for row in rows.tolist()))


_CATEGORIES = {"Cc": "a control character", "Cf": "a format character", "Cs": "a surrogate",
               "Co": "a private-use code point", "Cn": "an unassigned code point", "Zs": "a space",
               "Zl": "a line separator", "Zp": "a paragraph separator"}


def read_mapping_text(text: str, name: str) -> Mapping:
    """Parse an ``emnist-<split>-mapping.txt`` file's text: rows of decimal numbers."""
    try:
        rows = []
        for line in text.splitlines():
            fields = line.split()
            bad = next((f for f in fields if not re.fullmatch(r"[0-9]{1,9}", f)), None)
            if bad is not None:
                raise ValueError(f"{bad[:20]!r} is not a number 0..999999999")
            if fields:
                rows.append([int(f) for f in fields])
        if len({len(r) for r in rows}) > 1:
            raise ValueError("rows of different length")
    except ValueError as error:
        raise EmnistDataError(f"{name}: not a mapping file ({error})") from None
    return mapping_from_rows(np.array(rows, np.int64).reshape(len(rows), -1) if rows else np.zeros((0,)), name)


def read_mapping_file(stream: BinaryIO, name: str) -> Mapping:
    """A mapping file from an open binary stream (read up to :data:`MAX_MAPPING_BYTES`)."""
    data = stream.read(MAX_MAPPING_BYTES + 1)
    if len(data) > MAX_MAPPING_BYTES:
        raise EmnistDataError(f"{name}: more than {MAX_MAPPING_BYTES:,} bytes; not a mapping file")
    return read_mapping_text(data.decode("ascii", errors="replace"), name)


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


#: compression methods zipfile reads: stored, deflate, bzip2, lzma
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}


def zip_members(archive: zipfile.ZipFile, label: str) -> dict[str, zipfile.ZipInfo]:
    """The files of an archive by base name, or EmnistDataError (one line) for an archive that is
    ambiguous or cannot be read whole: a name that is absolute or climbs with '..', two files of
    one base name, an encrypted file, one compressed with a method zipfile cannot read."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", info.filename) or ".." in parts:
            raise EmnistDataError(f"{label}: refusing archive entry {info.filename!r}: an absolute path or one "
                                  "with '..'")
        if info.is_dir():
            continue
        base = parts[-1]
        if base in members:
            raise EmnistDataError(f"{label}: archive holds {base} twice ({members[base].filename!r} and "
                                  f"{info.filename!r}); which one is meant is ambiguous")
        if info.flag_bits & 0x1:
            raise EmnistDataError(f"{label}:{info.filename}: is encrypted; the official archives are not "
                                  "(extract it yourself and give the file)")
        if info.compress_type not in _ZIP_METHODS:
            raise EmnistDataError(f"{label}:{info.filename}: compressed with method {info.compress_type}, which "
                                  f"cannot be read (only {', '.join(_ZIP_METHODS.values())})")
        members[base] = info
    return members


@dataclass(frozen=True)
class RawSplit:
    """A split exactly as stored: (N, 784) transposed image rows, file labels, the mapping."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mapping: Mapping
    synthetic: bool = False


def _number(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def describe_values(values: np.ndarray) -> str:
    """``float64 values 0..434`` (and how many are NaN/inf): what an array holds, for messages."""
    values = np.asarray(values)
    if values.size == 0:
        return f"an empty {values.dtype} array"
    if values.dtype.kind not in "biuf":
        return f"{values.dtype} values"
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    text = f"{values.dtype} values"
    if finite.size:
        text += f" {_number(finite.min())}..{_number(finite.max())}"
    if finite.size < values.size:
        text += f" ({values.size - finite.size:,} NaN or infinite)"
    return text


def _whole_non_negative(values: np.ndarray) -> bool:
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
    if not _whole_non_negative(labels):
        raise EmnistDataError(f"{where} must be whole numbers >= 0, found {describe_values(labels)}")


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
