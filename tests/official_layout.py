"""Writers of tiny files in the official EMNIST layouts, independent of emnist_jax's own code.

Images are given upright and written transposed, as NIST did; labels are written in the file's
coding (letters 1..26).
"""

from __future__ import annotations

import gzip
import io
import string
import struct
import zipfile
from pathlib import Path

import numpy as np
import scipy.io

LOWER_KEPT = "abdefghnqrt"  # the 11 lower-case letters bymerge/balanced keep


def mapping_rows(split: str) -> list[list[int]]:
    if split == "byclass":
        chars = string.digits + string.ascii_uppercase + string.ascii_lowercase
    elif split in ("bymerge", "balanced"):
        chars = string.digits + string.ascii_uppercase + LOWER_KEPT
    elif split == "letters":
        return [[i + 1, ord(u), ord(l)] for i, (u, l) in enumerate(zip(string.ascii_uppercase,
                                                                           string.ascii_lowercase))]
    else:
        chars = string.digits
    return [[i, ord(c)] for i, c in enumerate(chars)]


def make_split(split: str, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict:
    """Random upright images and file labels that cover every class of ``split`` at least once."""
    rng = np.random.default_rng(seed)
    file_labels = np.array([row[0] for row in mapping_rows(split)])
    def labels(n):
        return rng.permutation(np.resize(file_labels, max(n, len(file_labels)))[:n]).astype(np.uint8)
    return {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": labels(n_train),
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": labels(n_test), "mapping": mapping_rows(split)}


def transposed_rows(images: np.ndarray) -> np.ndarray:
    return np.stack([image.T.reshape(784) for image in images]) if len(images) else np.zeros((0, 784), np.uint8)


def mat_bytes(data: dict) -> bytes:
    def part(kind):
        labels = data[f"{kind}_labels"].reshape(-1, 1)
        return {"images": transposed_rows(data[f"{kind}_images"]), "labels": labels, "writers": labels * 0}
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"dataset": {"train": part("train"), "test": part("test"),
                                          "mapping": np.array(data["mapping"], float)}}, do_compression=True)
    return buffer.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    if array.ndim == 1:
        return struct.pack(">ii", 2049, len(array)) + array.astype(np.uint8).tobytes()
    return struct.pack(">iiii", 2051, len(array), 28, 28) + transposed_rows(array).tobytes()


def mapping_text(rows: list[list[int]]) -> str:
    return "".join(" ".join(str(v) for v in row) + "\r\n" for row in rows)


def idx_members(split: str, data: dict, compress: bool = True) -> dict[str, bytes]:
    members = {}
    for part in ("train", "test"):
        for kind, key in (("images-idx3", "images"), ("labels-idx1", "labels")):
            payload = idx_bytes(data[f"{part}_{key}"])
            name = f"emnist-{split}-{part}-{kind}-ubyte"
            members[name + (".gz" if compress else "")] = gzip.compress(payload) if compress else payload
    members[f"emnist-{split}-mapping.txt"] = mapping_text(data["mapping"]).encode()
    return members


def write_idx_folder(folder: Path, split: str, data: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in idx_members(split, data, compress).items():
        (folder / name).write_bytes(payload)
    return folder


def write_mat(path: Path, data: dict) -> Path:
    path.write_bytes(mat_bytes(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(write_zip_bytes(members))
    return path


def write_zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()
