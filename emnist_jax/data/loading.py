"""``load(source, split) -> Dataset``: one entry point for every EMNIST format.

Sources: ``"default"`` (the embedded synthetic set), an official ``emnist-<split>.mat``, a folder
of the official gzip IDX files with their mapping file, or the official archives ``matlab.zip``
and ``gzip.zip`` (read member by member, never extracted to disk).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from emnist_jax import synthetic
from emnist_jax.data import cache
from emnist_jax.data.formats import (EmnistDataError, Mapping, RawSplit, check_pair, open_idx, read_idx,
                                     read_mapping_text, read_mat, upright, write_mat)
from emnist_jax.data.official import SPLITS


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One EMNIST split, upright.

    Labels are class indices 0..K-1 into ``classes``; ``file_labels[i]`` is the label the file
    uses for class i (they differ only for letters, whose files count 1..26).
    """

    train_images: np.ndarray  # (N, 28, 28) uint8, upright, white ink on black
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]  # the character(s) of each class, from the file's own mapping
    split: str
    source: str
    synthetic: bool
    file_labels: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, part: str = "train") -> np.ndarray:
        """Images per class in ``part`` ("train" or "test")."""
        labels = self.train_labels if part == "train" else self.test_labels
        return np.bincount(labels, minlength=self.n_classes)


DEFAULT_SIZE = (60_000, 12_000)
_IDX_PARTS = {(part, kind): f"{part}-{kind}" for part in ("train", "test")
              for kind in ("images-idx3", "labels-idx1")}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise EmnistDataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def default_file(seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """The embedded default data set as an official-layout ``.mat`` in the cache (made once)."""
    path = cache.cache_dir() / f"synthetic-v{synthetic.GENERATOR_VERSION}-seed{seed}-{size[0]}x{size[1]}.mat"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_x, train_y, test_x, test_y = synthetic.generate(*size, seed=seed)
        mapping = np.array([[label, ord(c)] for label, c in enumerate(synthetic.CHARACTERS)])
        write_mat(str(path), train_x, train_y, test_x, test_y, mapping, synthetic=True)
    return path


def _idx_files(folder: str, split: str) -> dict[tuple[str, str], str]:
    files = {}
    for key, part in _IDX_PARTS.items():
        base = os.path.join(folder, f"emnist-{split}-{part}-ubyte")
        found = [p for p in (base + ".gz", base) if os.path.isfile(p)]
        if not found:
            raise EmnistDataError(f"{base}[.gz]: file not found (folder {folder} lacks split {split!r})")
        files[key] = found[0]
    mapping = os.path.join(folder, f"emnist-{split}-mapping.txt")
    if not os.path.isfile(mapping):
        raise EmnistDataError(f"{mapping}: file not found (the IDX files need their mapping file)")
    files[("mapping", "")] = mapping
    return files


def _read_idx_folder(files: dict[tuple[str, str], str]) -> RawSplit:
    def idx(key: tuple[str, str]) -> np.ndarray:
        with open_idx(files[key]) as stream:
            return read_idx(stream, files[key])

    mapping_path = files[("mapping", "")]
    with open(mapping_path, encoding="ascii", errors="replace") as f:
        mapping = read_mapping_text(f.read(), mapping_path)
    return _raw_from_idx(idx, mapping, os.path.dirname(mapping_path))


def _raw_from_idx(read, mapping: Mapping, name: str) -> RawSplit:
    arrays = {key: read(key) for key in _IDX_PARTS}
    for part in ("train", "test"):
        images, labels = arrays[(part, "images-idx3")], arrays[(part, "labels-idx1")]
        if images.ndim != 2 or labels.ndim != 1:
            raise EmnistDataError(f"{name}: the {part} image and label files are swapped or of the wrong kind")
        check_pair(images, labels, f"{name} ({part})")
    return RawSplit(arrays[("train", "images-idx3")], arrays[("train", "labels-idx1")],
                    arrays[("test", "images-idx3")], arrays[("test", "labels-idx1")], mapping)


def _read_zip(path: str, split: str) -> RawSplit:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {os.path.basename(m): m for m in archive.namelist()}
            mat = f"emnist-{split}.mat"
            if mat in members:
                with archive.open(members[mat]) as stream:
                    return read_mat(stream, f"{path}:{members[mat]}")
            wanted = {key: f"emnist-{split}-{part}-ubyte.gz" for key, part in _IDX_PARTS.items()}
            mapping_name = f"emnist-{split}-mapping.txt"
            missing = [n for n in [*wanted.values(), mapping_name] if n not in members]
            if missing:
                raise EmnistDataError(f"{path}: archive has neither {mat} nor {missing[0]}")

            def idx(key: tuple[str, str]) -> np.ndarray:
                member = members[wanted[key]]
                with archive.open(member) as raw, gzip.GzipFile(fileobj=raw) as stream:
                    return read_idx(stream, f"{path}:{member}")

            text = archive.read(members[mapping_name]).decode("ascii", errors="replace")
            return _raw_from_idx(idx, read_mapping_text(text, f"{path}:{members[mapping_name]}"), path)
    except zipfile.BadZipFile as error:
        raise EmnistDataError(f"{path}: corrupt or truncated zip archive ({error})") from None


def _infer_split(path: str) -> str | None:
    match = re.fullmatch(r"emnist-(\w+)\.mat", os.path.basename(path))
    return match.group(1) if match and match.group(1) in SPLITS else None


def _read_source(path: str, split: str) -> RawSplit:
    if os.path.isdir(path):
        return _read_idx_folder(_idx_files(path, split))
    if path.endswith(".mat"):
        return read_mat(path, path)
    if path.endswith(".zip"):
        return _read_zip(path, split)
    raise EmnistDataError(f"{path}: unsupported file type; expected emnist-<split>.mat, a folder of "
                          "IDX files, matlab.zip or gzip.zip")


def _assemble(raw: RawSplit, split: str, source: str) -> dict[str, np.ndarray]:
    expected = SPLITS[split][0]
    if len(raw.mapping.classes) != expected:
        raise EmnistDataError(f"{source}: mapping has {len(raw.mapping.classes)} classes but split "
                              f"{split!r} has {expected}")
    return {
        "train_labels": raw.mapping.index_of(raw.train_labels, f"{source} (train labels)"),
        "test_labels": raw.mapping.index_of(raw.test_labels, f"{source} (test labels)"),
        "train_images": upright(raw.train_images),
        "test_images": upright(raw.test_images),
        "classes": np.array(raw.mapping.classes),
        "file_labels": np.array(raw.mapping.labels),
        "synthetic": np.array(raw.synthetic),
    }


def _dataset(arrays: dict[str, np.ndarray], split: str, source: str) -> Dataset:
    return Dataset(train_images=arrays["train_images"], train_labels=arrays["train_labels"],
                   test_images=arrays["test_images"], test_labels=arrays["test_labels"],
                   classes=tuple(str(c) for c in arrays["classes"]), split=split, source=source,
                   synthetic=bool(arrays["synthetic"]), file_labels=tuple(int(v) for v in arrays["file_labels"]))


def load(source: str | os.PathLike = "default", split: str | None = None, *, use_cache: bool = True) -> Dataset:
    """Load one EMNIST split with upright images.

    ``split`` defaults to the one named by an ``emnist-<split>.mat`` file, else ``"byclass"``.
    Raises :class:`EmnistDataError` (one line naming the file and the problem) on bad input.
    """
    if split is not None:
        _check_split(split)
    if str(source) == "default":
        if split not in (None, "byclass"):
            raise EmnistDataError(f"the embedded default data set has only the byclass split, not {split!r}")
        return dataclasses.replace(load(default_file(), "byclass", use_cache=use_cache), source="default")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise EmnistDataError(f"{path}: file not found")
    split = split or _infer_split(path) or "byclass"
    if path.endswith(".mat") and _infer_split(path) not in (None, split):
        raise EmnistDataError(f"{path}: file holds split {_infer_split(path)!r}, not {split!r}")
    files = list(_idx_files(path, split).values()) if os.path.isdir(path) else [path]
    key = cache.fingerprint(files, split)
    arrays = cache.read(key) if use_cache else None
    if arrays is None:
        raw = _read_source(path, split)
        arrays = _assemble(raw, split, path)
        del raw
        if use_cache:
            cache.write(key, arrays)
    return _dataset(arrays, split, path)
