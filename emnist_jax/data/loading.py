"""``load(source, split) -> Dataset``: one entry point for every EMNIST format.

Sources: ``"default"`` (the embedded synthetic set), an official ``emnist-<split>.mat``, a folder
of the official gzip IDX files with their mapping file, or the official archives ``matlab.zip``
and ``gzip.zip`` (read member by member, never extracted to disk).

Every failure on a source is one :class:`EmnistDataError` line naming the path and the problem
(operating-system errors are worded by ``formats.reading``). The array cache and the cached
embedded default are an optimisation: when they cannot be read or written, the data are
loaded (or generated) without them and a :class:`~emnist_jax.data.cache.CacheWarning` says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import re
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emnist_jax import synthetic
from emnist_jax.data import cache
from emnist_jax.data.formats import (EmnistDataError, Mapping, RawSplit, check_pair, mat_bytes,
                                     mat_contents, open_idx, os_reason, read_idx, read_mapping_file, read_mat,
                                     reading, save_mat, upright, zip_members)
from emnist_jax.data.official import SPLITS
from emnist_jax.private import UntrustedPath, open_trusted


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
#: Images per second of the generator on the 2-core development machine (72,000 in ~16 s, as
#: measured in synthetic.py), for the estimate in the progress line.
_GENERATED_PER_S = 4_500
_IDX_PARTS = {(part, kind): f"{part}-{kind}" for part in ("train", "test")
              for kind in ("images-idx3", "labels-idx1")}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise EmnistDataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


# ---- the embedded default ------------------------------------------------------------------------

def _default_contents(seed: int, size: tuple[int, int], where: str) -> dict:
    """Generate the embedded default (one line and, on a terminal, a bar on stderr)."""
    from tqdm import tqdm

    total = size[0] + size[1]
    print(f"generating the embedded default data set ({size[0]:,} + {size[1]:,} images, "
          f"~{max(1, round(total / _GENERATED_PER_S))} s) {where}", file=sys.stderr, flush=True)
    with tqdm(total=total, unit="img", desc="embedded default", file=sys.stderr, disable=None,
              leave=False) as bar:
        train_x, train_y, test_x, test_y = synthetic.generate(*size, seed=seed, progress=bar.update)
    mapping = np.array([[label, ord(c)] for label, c in enumerate(synthetic.CHARACTERS)])
    return mat_contents(train_x, train_y, test_x, test_y, mapping, synthetic=True)


def default_file(seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """The embedded default data set as an official-layout ``.mat`` in the cache (made once).

    ``size`` is (train, test), :data:`DEFAULT_SIZE` when None. Raises EmnistDataError (one line)
    when the cache folder cannot hold it, or when the folder or a file already under that name
    cannot be trusted (another user's, writable by group or others, a link: see
    :mod:`emnist_jax.private`); ``load("default")`` then generates it in memory.
    """
    size = tuple(size or DEFAULT_SIZE)
    name = f"synthetic-v{synthetic.GENERATOR_VERSION}-seed{seed}-{size[0]}x{size[1]}.mat"
    try:
        folder = cache.trusted_folder(create=True)
    except cache.CacheUnusable as problem:
        raise EmnistDataError(f"cannot store the embedded default data set: {problem}") from None
    path = folder / name
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise EmnistDataError(f"cannot store the embedded default data set: {path}: is a folder, not a file")
        os.close(open_trusted(path))  # the folder is private: nobody else can swap the file afterwards
        return path
    except FileNotFoundError:
        pass
    except UntrustedPath as problem:
        raise EmnistDataError(f"cannot use the embedded default data set: {cache.untrusted(problem)}") from None
    except OSError as error:
        raise EmnistDataError(f"cannot use the embedded default data set: {path}: {os_reason(error)}") from None
    tmp = None
    try:
        # The temporary file first: an unwritable folder is found before ~20 s of generating.
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            save_mat(f, _default_contents(seed, size, f"once, into {path}"))
        os.replace(tmp, path)
    except OSError as error:
        where, reason = (path if os.path.lexists(path) else folder), os_reason(error)
        if path.is_dir():
            reason = "is a folder, not a file"
        raise EmnistDataError(f"cannot store the embedded default data set: {where}: {reason}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    return path


def _load_default(use_cache: bool) -> Dataset:
    """``load("default")``: from the cached file; remade once if damaged; in memory if the cache is unusable."""
    problem = None
    for attempt in (1, 2):
        try:
            path = default_file()
        except EmnistDataError as error:
            problem = error
            break
        try:
            return dataclasses.replace(load(path, "byclass", use_cache=use_cache), source="default")
        except EmnistDataError as error:  # a file this program generated: damaged, or unreadable
            problem = error
            try:
                path.unlink()
            except OSError:
                break
            if attempt == 1:
                _warn(f"{error}; generating the embedded default again")
    _warn(f"{problem}; the embedded default data set is generated in memory for this run")
    contents = _default_contents(0, tuple(DEFAULT_SIZE), "in memory")
    raw = read_mat(io.BytesIO(mat_bytes(contents)), "default (generated in memory)")
    return _dataset(_assemble(raw, "byclass", "default"), "byclass", "default")


# ---- sources ----------------------------------------------------------------------------------

def _stat(path: str) -> os.stat_result:
    """``os.stat``, telling a broken symbolic link apart from a missing file."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise EmnistDataError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)"
                                  ) from None
        raise


def _regular_file(path: str) -> str:
    mode = _stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise EmnistDataError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise EmnistDataError(f"{path}: is not a regular file")
    return path


def _idx_files(folder: str, split: str) -> dict[tuple[str, str], str]:
    names = set(os.listdir(folder))  # an unreadable folder fails here, with its own name
    files = {}
    for key, part in _IDX_PARTS.items():
        base = f"emnist-{split}-{part}-ubyte"
        found = [name for name in (base + ".gz", base) if name in names]
        if not found:
            raise EmnistDataError(f"{os.path.join(folder, base)}[.gz]: file not found "
                                  f"(folder {folder} lacks split {split!r})")
        if len(found) > 1:
            raise EmnistDataError(f"{os.path.join(folder, base)}: both {base} and {base}.gz exist; which one is "
                                  "meant is ambiguous (move one away)")
        files[key] = _regular_file(os.path.join(folder, found[0]))
    mapping = os.path.join(folder, f"emnist-{split}-mapping.txt")
    if os.path.basename(mapping) not in names:
        raise EmnistDataError(f"{mapping}: file not found (the IDX files need their mapping file)")
    files[("mapping", "")] = _regular_file(mapping)
    return files


def _read_idx_folder(files: dict[tuple[str, str], str]) -> RawSplit:
    def idx(key: tuple[str, str]) -> np.ndarray:
        path = files[key]
        with open_idx(path) as stream:
            return read_idx(stream, path, os.fstat(stream.fileno()).st_size, path.endswith(".gz"))

    mapping_path = files[("mapping", "")]
    with open(mapping_path, "rb") as f:
        mapping = read_mapping_file(f, mapping_path)
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
            members = zip_members(archive, path)
            mat = f"emnist-{split}.mat"
            wanted = {key: f"emnist-{split}-{part}-ubyte.gz" for key, part in _IDX_PARTS.items()}
            mapping_name = f"emnist-{split}-mapping.txt"
            idx_names = [*wanted.values(), mapping_name]
            if mat in members:
                both = next((n for n in idx_names if n in members), None)
                if both:
                    raise EmnistDataError(f"{path}: archive holds split {split!r} twice, as {mat} and as IDX files "
                                          f"({both}); which one is meant is ambiguous")
                with archive.open(members[mat]) as stream:
                    return read_mat(stream, f"{path}:{members[mat].filename}")
            missing = [n for n in idx_names if n not in members]
            if missing:
                raise EmnistDataError(f"{path}: archive has neither {mat} nor {missing[0]}")

            def idx(key: tuple[str, str]) -> np.ndarray:
                member = members[wanted[key]]
                with archive.open(member) as raw, gzip.GzipFile(fileobj=raw) as stream:
                    return read_idx(stream, f"{path}:{member.filename}", member.file_size, compressed=True)

            with archive.open(members[mapping_name]) as stream:
                mapping = read_mapping_file(stream, f"{path}:{members[mapping_name].filename}")
            return _raw_from_idx(idx, mapping, path)
    except zipfile.BadZipFile as error:
        raise EmnistDataError(f"{path}: corrupt or truncated zip archive ({error})") from None


def _infer_split(path: str) -> str | None:
    match = re.fullmatch(r"emnist-(\w+)\.mat", os.path.basename(path))
    return match.group(1) if match and match.group(1) in SPLITS else None


def _read_source(path: str, split: str, is_folder: bool) -> RawSplit:
    if is_folder:
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
    # Every consumer divides by these counts (class shares, accuracies): refuse, never print nan.
    for part, images in (("training", raw.train_images), ("test", raw.test_images)):
        if len(images) == 0:
            raise EmnistDataError(f"{source}: no {part} images")
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


# ---- the cache around a source ---------------------------------------------------------------------

def _warn(message: str) -> None:
    warnings.warn(message, cache.CacheWarning, stacklevel=4)


def _through_cache(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The cached arrays for ``key``, else ``build()`` stored for next time; at most one warning."""
    try:
        arrays = cache.read(key)
    except cache.CacheUnusable as problem:
        arrays = build()
        _warn(f"array cache not used: {problem}; the data were read from the source")
        return arrays
    if arrays is None:
        arrays = build()
        try:
            cache.write(key, arrays)
        except cache.CacheUnusable as problem:
            _warn(f"array cache not written: {problem}; the next load reads the source again")
    return arrays


def _read_and_assemble(path: str, split: str, is_folder: bool) -> dict[str, np.ndarray]:
    return _assemble(_read_source(path, split, is_folder), split, path)


def load(source: str | os.PathLike = "default", split: str | None = None, *, use_cache: bool = True) -> Dataset:
    """Load one EMNIST split with upright images.

    ``split`` defaults to the one named by an ``emnist-<split>.mat`` file, else ``"byclass"``.
    Raises :class:`EmnistDataError` (one line naming the file and the problem) on bad input;
    a cache that cannot be used only gives a :class:`~emnist_jax.data.cache.CacheWarning`.
    """
    if split is not None:
        _check_split(split)
    if str(source) == "default":
        if split not in (None, "byclass"):
            raise EmnistDataError(f"the embedded default data set has only the byclass split, not {split!r}")
        return _load_default(use_cache)
    path = os.fspath(source)
    with reading(path):
        mode = _stat(path).st_mode
        is_folder = stat.S_ISDIR(mode)
        if not is_folder and not stat.S_ISREG(mode):
            raise EmnistDataError(f"{path}: is not a regular file or folder")
        split = split or _infer_split(path) or "byclass"
        if not is_folder and path.endswith(".mat") and _infer_split(path) not in (None, split):
            raise EmnistDataError(f"{path}: file holds split {_infer_split(path)!r}, not {split!r}")
        if not use_cache:
            return _dataset(_read_and_assemble(path, split, is_folder), split, path)
        files = list(_idx_files(path, split).values()) if is_folder else [path]
        key = cache.fingerprint(files, split)
        arrays = _through_cache(key, lambda: _read_and_assemble(path, split, is_folder))
    return _dataset(arrays, split, path)
