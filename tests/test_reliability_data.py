"""Reliability of the data layer: one table of faults per entry point.

Entry points: ``data.load`` (sources), ``data.load`` through the cache (and the cached embedded
default), ``data.download`` (a local HTTP server on 127.0.0.1) and ``python -m emnist_jax.data``.
Each case: the fault, the expected exception, warning or exit code, a fragment of the one-line
message, and a check with tests/fault_cases.py that nothing partial was left and nothing that
existed before changed.

Permission errors: tests run as root here, and root ignores file modes, so a permission fault
is made by having ``open``/``os.open``/``os.listdir``/``os.mkdir``/``os.unlink`` raise the
error for that one path (these cases always run); the two cases that chmod for real are
skipped when running as root. Disk-full and Ctrl-C faults wrap the file we write into.

A shared machine: the cache cases with another user's files plant them as that user (uid 65534,
``fault_cases.as_neighbour``) or give them to that user with ``chown``; both need root and skip
otherwise. A forged entry shifts every label, so reading it would show in the loaded data.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import official_layout as ol
from emnist_jax import synthetic
from emnist_jax.data import CacheWarning, EmnistDataError, cache, download, load, loading, official
from emnist_jax.data.__main__ import main
from fault_cases import NEIGHBOUR, as_neighbour, shared_folder, snapshot, unchanged_except

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
DATA = ol.make_split("mnist")  # 40 + 12 images, every class present
ROWS = ol.transposed_rows(DATA["train_images"])
SMALL_DEFAULT = (124, 62)


# ---- fault injection --------------------------------------------------------------------------

class Faults:
    """Make system calls on chosen paths fail, and files we write into fail part-way."""

    _CALLS = {"open": ((builtins, "open"), (io, "open"), (os, "open")), "listdir": ((os, "listdir"), (os, "scandir")),
              "mkdir": ((os, "mkdir"),), "unlink": ((os, "unlink"), (os, "remove"))}

    def __init__(self, monkeypatch):
        self.monkeypatch, self.rules, self.patched = monkeypatch, [], set()

    def deny(self, path, calls=("open",), code=errno.EACCES) -> None:
        """Calls in ``calls`` on ``path`` or anything under it raise OSError(code), as the system would."""
        target = os.path.abspath(path)
        for call in calls:
            self.rules.append((call, target, code))
            for module, name in self._CALLS[call]:
                if (module, name) not in self.patched:
                    self.patched.add((module, name))
                    self.monkeypatch.setattr(module, name, self._guard(call, getattr(module, name)))

    def _guard(self, call, real):
        def guarded(path, *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                full = os.path.abspath(os.fsdecode(path))
                for rule_call, target, code in self.rules:
                    if rule_call == call and (full == target or full.startswith(target + os.sep)):
                        raise OSError(code, os.strerror(code), os.fsdecode(path))
            return real(path, *args, **kwargs)
        return guarded

    def read_only(self, folder) -> None:
        """Nothing new can be made in ``folder`` and nothing in it deleted; reading still works."""
        target = os.path.abspath(folder)

        def inside(path):
            return isinstance(path, (str, bytes, os.PathLike)) and \
                os.path.abspath(os.fsdecode(path)).startswith(target + os.sep)

        def refuse(path):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        real_open, real_os_open, real_unlink = builtins.open, os.open, os.unlink

        def open_(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def unlink(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real_unlink(path, *args, **kwargs)
        for module, name, fake in ((builtins, "open", open_), (io, "open", open_), (os, "open", os_open),
                                   (os, "unlink", unlink), (os, "remove", unlink)):
            self.monkeypatch.setattr(module, name, fake)

    def setenv(self, name: str, value) -> None:
        self.monkeypatch.setenv(name, str(value))

    def break_writes(self, name_prefix: str, error: BaseException) -> None:
        """Files we open with os.fdopen whose name starts with ``name_prefix`` raise ``error`` on write."""
        real = os.fdopen

        def fdopen(fd, *args, **kwargs):
            f = real(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            return _FailingWrites(f, error) if name.startswith(name_prefix) else f
        self.monkeypatch.setattr(os, "fdopen", fdopen)


class _FailingWrites:
    def __init__(self, f, error):
        self._f, self._error = f, error

    def write(self, data):
        raise self._error

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def faults(monkeypatch):
    return Faults(monkeypatch)


def one_line(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message


# ---- data.load: sources ------------------------------------------------------------------------

def mat(src, **stored):
    return ol.write_mat(src / "emnist-mnist.mat", DATA, stored)


def idx_folder(src, data=DATA):
    return ol.write_idx_folder(src / "idx", "mnist", data)


def no_test_images():
    data = dict(DATA)
    data["test_images"], data["test_labels"] = DATA["test_images"][:0], DATA["test_labels"][:0]
    return data


def with_value(rows, index, value, dtype):
    rows = rows.astype(dtype)
    rows.flat[index] = value
    return rows


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def symlink(src, name, target):
    os.symlink(target, src / name)
    return src / name


def loop(src, name="emnist-mnist.mat"):
    os.symlink(name + ".other", src / name)
    os.symlink(name, src / (name + ".other"))
    return src / name


def fifo(src):
    # Beside src, not in it: fault_cases.snapshot would block reading a FIFO.
    (src.parent / "special").mkdir()
    os.mkfifo(src.parent / "special" / "emnist-mnist.mat")
    return src.parent / "special" / "emnist-mnist.mat"


def idx_with(src, member, make):
    folder = idx_folder(src)
    path = folder / member
    path.unlink()
    make(path)
    return folder


def chmod(path, mode):
    os.chmod(path, mode)
    return path


def idx_claiming(src, count, compress=True):
    """An IDX folder whose training images' header claims ``count`` images."""
    folder = ol.write_idx_folder(src / "idx", "mnist", DATA, compress=False)
    path = folder / "emnist-mnist-train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:4] + struct.pack(">i", count) + path.read_bytes()[8:])
    for plain in folder.glob("*-ubyte") if compress else ():
        (folder / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
        plain.unlink()
    return folder


def gzip_zip(src, members=None):
    """gzip.zip as NIST packs it: the members in a folder gzip/."""
    members = ol.idx_members("mnist", DATA) if members is None else members
    return ol.write_zip(src / "gzip.zip", {f"gzip/{n}": b for n, b in members.items()})


def claiming_member(count):
    raw = ol.idx_bytes(DATA["train_images"])
    members = ol.idx_members("mnist", DATA)
    members["emnist-mnist-train-images-idx3-ubyte.gz"] = gzip.compress(raw[:4] + struct.pack(">i", count) + raw[8:])
    return members


def matlab_zip(src, members, **headers):
    data = ol.write_zip_bytes(members)
    return written(src / "matlab.zip", ol.zip_with_headers(data, **headers) if headers else data)


def mapping_of(*rows, size=10):
    """The digits mapping with ``rows`` replacing its last rows."""
    mapping = [list(r) for r in ol.mapping_rows("mnist")][:size - len(rows)] + [list(r) for r in rows]
    return {"mapping": np.array(mapping, float)}


def idx_mapping_text(src, text: bytes):
    folder = idx_folder(src)
    (folder / "emnist-mnist-mapping.txt").write_bytes(text)
    return folder


def both_gz_and_plain(src):
    folder = idx_folder(src)
    plain = ol.idx_members("mnist", DATA, compress=False)["emnist-mnist-test-labels-idx1-ubyte"]
    (folder / "emnist-mnist-test-labels-idx1-ubyte").write_bytes(plain)
    return folder


def two_dataset_structs(src):
    one = {"train": {"images": ROWS, "labels": DATA["train_labels"].reshape(-1, 1)},
           "test": {"images": ol.transposed_rows(DATA["test_images"]), "labels": DATA["test_labels"].reshape(-1, 1)},
           "mapping": np.array(DATA["mapping"], float)}
    structs = np.empty((1, 2), dtype=[("train", "O"), ("test", "O"), ("mapping", "O")])
    for i in range(2):
        structs[0, i] = (one["train"], one["test"], one["mapping"])
    scipy.io.savemat(src / "emnist-mnist.mat", {"dataset": structs})
    return src / "emnist-mnist.mat"


MAT_MEMBER = {"matlab/emnist-mnist.mat": ol.mat_bytes(DATA)}

LOAD_CASES = [
    # id, make the source (src folder, faults) -> path, message fragment ({src}: the source folder)
    ("images-float64-to-434", lambda s, f: mat(s, **{"train.images": with_value(ROWS, 5, 434, float)}),
     "{src}/emnist-mnist.mat: dataset.train.images holds float64 values 0..434; images must be uint8"),
    ("images-floats-in-0-1", lambda s, f: mat(s, **{"train.images": ROWS / 255.0}),
     "dataset.train.images holds float64 values 0..1;"),
    ("images-negative-int16",
     lambda s, f: mat(s, **{"test.images": ol.transposed_rows(DATA["test_images"]).astype(np.int16) - 128}),
     "dataset.test.images holds int16 values -128..127"),
    ("images-whole-float64-0-255 (refused: not the official type)",
     lambda s, f: mat(s, **{"train.images": ROWS.astype(np.float64)}), "holds float64 values 0..255"),
    ("images-uint16", lambda s, f: mat(s, **{"train.images": ROWS.astype(np.uint16)}), "holds uint16 values"),
    ("images-with-nan", lambda s, f: mat(s, **{"train.images": with_value(ROWS, 0, np.nan, np.float32)}),
     "float32 values 0..255 (1 NaN or infinite)"),
    ("labels-negative",
     lambda s, f: mat(s, **{"test.labels": with_value(DATA["test_labels"].reshape(-1, 1), 0, -1, np.int16)}),
     "dataset.test.labels must be whole numbers >= 0, found int16 values -1.."),
    ("labels-fractional", lambda s, f: mat(s, **{"train.labels": DATA["train_labels"].reshape(-1, 1) + 0.5}),
     "dataset.train.labels must be whole numbers >= 0, found float64 values 0.5..9.5"),
    ("labels-nan", lambda s, f: mat(s, **{"train.labels": with_value(DATA["train_labels"].reshape(-1, 1), 3,
                                                                      np.nan, float)}),
     "dataset.train.labels must be whole numbers"),
    ("mapping-fractional-code", lambda s, f: mat(s, mapping=np.array(DATA["mapping"], float) + [0, 0.5]),
     "mapping must hold whole numbers >= 0"),
    ("no-training-images",
     lambda s, f: mat(s, **{"train.images": ROWS[:0], "train.labels": np.zeros((0, 1), np.uint8)}),
     "{src}/emnist-mnist.mat: no training images"),
    ("no-test-images", lambda s, f: ol.write_idx_folder(s / "idx", "mnist", no_test_images()),
     "{src}/idx: no test images"),
    ("html-page-named-matlab.zip", lambda s, f: written(s / "matlab.zip", b"<html>x</html>"),
     "{src}/matlab.zip: corrupt or truncated zip archive"),
    ("source-symlink-loop", lambda s, f: loop(s), "{src}/emnist-mnist.mat: symbolic link loop"),
    ("source-broken-symlink", lambda s, f: symlink(s, "emnist-mnist.mat", "gone.mat"),
     "{src}/emnist-mnist.mat: broken symbolic link (its target gone.mat does not exist)"),
    ("source-is-a-fifo", lambda s, f: fifo(s), "special/emnist-mnist.mat: is not a regular file or folder"),
    ("source-below-a-file", lambda s, f: mat(s) / "emnist-mnist.mat",
     "{src}/emnist-mnist.mat/emnist-mnist.mat: a part of the path is a file, not a folder"),
    ("idx-member-symlink-loop",
     lambda s, f: idx_with(s, "emnist-mnist-train-images-idx3-ubyte.gz", lambda p: loop(p.parent, p.name)),
     "{src}/idx/emnist-mnist-train-images-idx3-ubyte.gz: symbolic link loop"),
    ("idx-mapping-is-a-folder", lambda s, f: idx_with(s, "emnist-mnist-mapping.txt", os.mkdir),
     "{src}/idx/emnist-mnist-mapping.txt: is a folder, not a file"),
    ("mat-permission-denied", lambda s, f: f.deny(mat(s)) or s / "emnist-mnist.mat",
     "{src}/emnist-mnist.mat: permission denied"),
    ("idx-images-permission-denied",
     lambda s, f: f.deny(idx_folder(s) / "emnist-mnist-test-images-idx3-ubyte.gz") or s / "idx",
     "{src}/idx/emnist-mnist-test-images-idx3-ubyte.gz: permission denied"),
    ("idx-mapping-permission-denied",
     lambda s, f: f.deny(idx_folder(s) / "emnist-mnist-mapping.txt") or s / "idx",
     "{src}/idx/emnist-mnist-mapping.txt: permission denied"),
    ("zip-permission-denied",
     lambda s, f: f.deny(ol.write_zip(s / "gzip.zip", ol.idx_members("mnist", DATA))) or s / "gzip.zip",
     "{src}/gzip.zip: permission denied"),
    ("folder-unreadable", lambda s, f: f.deny(idx_folder(s), calls=("listdir", "open")) or s / "idx",
     "{src}/idx: permission denied"),
    ("mat-input-output-error", lambda s, f: f.deny(mat(s), code=errno.EIO) or s / "emnist-mnist.mat",
     "{src}/emnist-mnist.mat: input/output error"),
    # headers that claim more than the file holds: refused before anything is allocated
    ("idx-header-claims-2**31-1-images", lambda s, f: idx_claiming(s, 2**31 - 1, compress=False),
     "{src}/idx/emnist-mnist-train-images-idx3-ubyte: header says 2,147,483,647 items but the payload ends after 40 "
     "(a file of 31,376 bytes)"),
    ("idx-gz-header-claims-2**31-1-images", lambda s, f: idx_claiming(s, 2**31 - 1),
     "{src}/idx/emnist-mnist-train-images-idx3-ubyte.gz: header claims 2,147,483,647 images (1.5 TiB), more than a"),
    ("gzip-zip-member-claims-2**31-1-images", lambda s, f: gzip_zip(s, claiming_member(2**31 - 1)),
     "{src}/gzip.zip:gzip/emnist-mnist-train-images-idx3-ubyte.gz: header claims 2,147,483,647 images (1.5 TiB)"),
    # archives that cannot be read whole, or are ambiguous
    ("matlab-zip-encrypted", lambda s, f: matlab_zip(s, MAT_MEMBER, flags=1),
     "{src}/matlab.zip:matlab/emnist-mnist.mat: is encrypted; the official archives are not"),
    ("gzip-zip-encrypted", lambda s, f: written(s / "gzip.zip", ol.zip_with_headers(
        gzip_zip(s).read_bytes(), flags=1)),
     "{src}/gzip.zip:gzip/emnist-mnist-train-images-idx3-ubyte.gz: is encrypted"),
    ("zip-unreadable-compression-method", lambda s, f: matlab_zip(s, MAT_MEMBER, method=9),
     "matlab.zip:matlab/emnist-mnist.mat: compressed with method 9, which cannot be read"),
    ("zip-same-file-in-two-folders", lambda s, f: matlab_zip(s, {**MAT_MEMBER, "other/emnist-mnist.mat": MAT}),
     "{src}/matlab.zip: archive holds emnist-mnist.mat twice ('matlab/emnist-mnist.mat' and 'other/emnist-mnist.mat')"),
    ("zip-same-name-twice", lambda s, f: matlab_zip(s, [*MAT_MEMBER.items(), *MAT_MEMBER.items()]),
     "archive holds emnist-mnist.mat twice ('matlab/emnist-mnist.mat' and 'matlab/emnist-mnist.mat')"),
    ("zip-member-climbs-with-dotdot", lambda s, f: matlab_zip(s, {"../emnist-mnist.mat": MAT}),
     "{src}/matlab.zip: refusing archive entry '../emnist-mnist.mat': an absolute path or one with '..'"),
    ("zip-member-absolute", lambda s, f: matlab_zip(s, {"/matlab/emnist-mnist.mat": MAT}),
     "refusing archive entry '/matlab/emnist-mnist.mat'"),
    ("zip-split-as-mat-and-as-idx",
     lambda s, f: gzip_zip(s, {**ol.idx_members("mnist", DATA), "emnist-mnist.mat": MAT}),
     "{src}/gzip.zip: archive holds split 'mnist' twice, as emnist-mnist.mat and as IDX files"),
    ("idx-folder-with-gz-and-plain-file", lambda s, f: both_gz_and_plain(s),
     "{src}/idx/emnist-mnist-test-labels-idx1-ubyte: both emnist-mnist-test-labels-idx1-ubyte and "
     "emnist-mnist-test-labels-idx1-ubyte.gz exist"),
    ("mat-two-dataset-structs", lambda s, f: two_dataset_structs(s),
     "{src}/emnist-mnist.mat: 'dataset' is an array of 2 structs, expected one"),
    # mappings that are ambiguous: each refused, naming the file
    ("mapping-two-classes-named-8", lambda s, f: mat(s, **mapping_of([8, 56], [9, 56])),
     "{src}/emnist-mnist.mat: mapping gives the character '8' twice (labels 8 and 9)"),
    ("mapping-newline-as-a-class", lambda s, f: mat(s, **mapping_of([9, 10])),
     "mapping gives label 9 the code U+000A (a control character), which is no visible character"),
    ("mapping-space-as-a-class", lambda s, f: mat(s, **mapping_of([9, 32])), "label 9 the code U+0020 (a space)"),
    ("mapping-no-break-space", lambda s, f: mat(s, **mapping_of([9, 0xA0])), "label 9 the code U+00A0 (a space)"),
    ("mapping-zero-width-space", lambda s, f: mat(s, **mapping_of([9, 0x200B])),
     "label 9 the code U+200B (a format character)"),
    ("mapping-surrogate", lambda s, f: mat(s, **mapping_of([9, 0xD800])), "label 9 the code U+D800 (a surrogate)"),
    ("mapping-unassigned-code-point", lambda s, f: mat(s, **mapping_of([9, 0x0378])),
     "label 9 the code U+0378 (an unassigned code point)"),
    ("mapping-code-beyond-unicode", lambda s, f: mat(s, **mapping_of([9, 0x110000])),
     "mapping holds 1114112, more than any label or character code (at most 1114111)"),
    ("mapping-huge-float", lambda s, f: mat(s, **mapping_of([9, 1e300])), "mapping holds 1e+300, more than any"),
    ("mapping-labels-not-consecutive", lambda s, f: mat(s, **mapping_of([10, 57])),
     "mapping's labels are not consecutive (8 is followed by 10)"),
    ("mapping-row-names-a-character-twice", lambda s, f: mat(s, mapping=np.array(
        [[i, 48 + i, 48 + i] for i in range(10)], float)), "mapping gives the character '0' twice (labels 0 and 0)"),
    ("mapping-text-number-with-underscore", lambda s, f: idx_mapping_text(s, b"0 4_8\n" + b"".join(
        f"{i} {48 + i}\n".encode() for i in range(1, 10))),
     "{src}/idx/emnist-mnist-mapping.txt: not a mapping file ('4_8' is not a number 0..999999999)"),
    ("mapping-text-negative", lambda s, f: idx_mapping_text(s, b"-1 48\n"), "'-1' is not a number"),
    ("mapping-text-of-2-mib", lambda s, f: idx_mapping_text(s, b"0 48\n" * (2 << 18)),
     "emnist-mnist-mapping.txt: more than 1,048,576 bytes; not a mapping file"),
    pytest.param("mat-chmod-000 (real permissions)", lambda s, f: chmod(mat(s), 0),
                 "{src}/emnist-mnist.mat: permission denied",
                 marks=pytest.mark.skipif(ROOT, reason="root reads any file; the simulated case above runs")),
    pytest.param("folder-chmod-000 (real permissions)", lambda s, f: chmod(idx_folder(s), 0),
                 "{src}/idx: permission denied",
                 marks=pytest.mark.skipif(ROOT, reason="root reads any folder; the simulated case above runs")),
]


def table(cases):
    """Table rows (tuples or pytest.param) -> pytest.param with the row's first field as its id."""
    return [pytest.param(*c.values, id=c.values[0], marks=c.marks) if hasattr(c, "values")
            else pytest.param(*c, id=c[0]) for c in cases]


@pytest.mark.parametrize("name, make, fragment", table(LOAD_CASES))
def test_load_fault(tmp_path, faults, name, make, fragment):
    src = tmp_path / "src"
    src.mkdir()
    source = make(src, faults)
    before, cache_before = snapshot(src), snapshot(cache.cache_dir())
    try:
        with pytest.raises(EmnistDataError) as info:
            load(source, "mnist")
    finally:
        for path in (src / "emnist-mnist.mat", src / "idx"):  # let pytest clean up after chmod
            if path.exists() and not path.is_symlink():
                os.chmod(path, 0o755)
    message = str(info.value)
    one_line(message)
    assert fragment.format(src=src) in message
    assert unchanged_except(before, snapshot(src)) == []  # loading never writes beside the source
    assert unchanged_except(cache_before, snapshot(cache.cache_dir())) == []  # nothing cached from a failure


# ---- data.load through the cache ---------------------------------------------------------------

def entry_path(source):
    return cache._entry(cache.fingerprint([str(source)], "mnist"))


def corrupt_entry(tmp, source, f):
    load(source)
    entry = entry_path(source)
    entry.write_bytes(entry.read_bytes()[:200])


def read_only_with_corrupt_entry(tmp, source, f):
    corrupt_entry(tmp, source, f)
    f.read_only(cache.cache_dir())


def read_only_cache(tmp, source, f):
    cache.cache_dir().mkdir(parents=True, exist_ok=True)
    f.read_only(cache.cache_dir())


def unreadable_entry(tmp, source, f):
    load(source)
    f.deny(entry_path(source))


def tampered_entry(tmp, source, f):
    load(source)
    with np.load(entry_path(source)) as entry:
        arrays = {k: entry[k] for k in entry.files}
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    np.savez(entry_path(source), **arrays)


def stale_temporaries(tmp, source, f):
    folder = cache.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    old, fresh = folder / ".arrays-old.npz.x.tmp", folder / ".arrays-fresh.npz.y.tmp"
    old.write_bytes(b"left by a killed run")
    fresh.write_bytes(b"being written by another process")
    os.utime(old, (time.time() - 2 * cache.STALE_TEMPORARY_S,) * 2)


def cache_variable(path_in_tmp, make=None):
    def fault(tmp, source, f):
        if make:
            make(tmp)
        f.setenv("EMNIST_JAX_CACHE", tmp / path_in_tmp)
    return fault


def entry_loop(tmp, source, f):
    cache.cache_dir().mkdir(parents=True, exist_ok=True)
    loop(cache.cache_dir(), entry_path(source).name)


def forged_entry(source, path):
    """A well-formed entry for ``source`` whose every label is shifted by one class: read, it would
    silently change the data."""
    load(source)  # a true entry in the test's own cache, to copy from
    with np.load(entry_path(source)) as entry:
        arrays = {k: entry[k] for k in entry.files}
    for part in ("train", "test"):
        arrays[f"{part}_labels"] = (arrays[f"{part}_labels"] + 1) % len(arrays["classes"])
    np.savez(path, **arrays)
    os.chmod(path, 0o644)
    return path


def neighbour_plants_entry(tmp, source, f):
    """Another user plants a forged entry under the expected name in a shared cache folder."""
    forged = forged_entry(source, tmp / "forged.npz")
    f.setenv("EMNIST_JAX_CACHE", shared_folder(tmp / "shared-cache"))
    as_neighbour('cp "$1" "$2"', str(forged), str(entry_path(source)))
    assert entry_path(source).stat().st_uid == NEIGHBOUR


def entry_of_another_user(tmp, source, f):
    if not ROOT:
        pytest.skip("giving a file to another user needs root")
    forged_entry(source, entry_path(source))
    os.chown(entry_path(source), NEIGHBOUR, NEIGHBOUR)


def entry_linked_to_a_forgery(tmp, source, f):
    forged = forged_entry(source, tmp / "forged.npz")
    entry_path(source).unlink()
    os.symlink(forged, entry_path(source))


def group_writable_folder_with_forgery(tmp, source, f):
    forged_entry(source, entry_path(source))
    os.chmod(cache.cache_dir(), 0o775)


CACHE_CASES = [
    # id, make the fault (tmp, source, faults), warning fragment (None: no warning), names that may change
    ("entry-is-a-folder", lambda t, s, f: entry_path(s).mkdir(parents=True),
     "arrays-{key}.npz: is a folder, not a cache file", ()),
    ("cache-variable-names-a-file", cache_variable("file", lambda t: (t / "file").write_text("x")),
     "{tmp}/file: is a file, not a folder", ()),
    ("cache-variable-below-a-file", cache_variable("file/cache", lambda t: (t / "file").write_text("x")),
     "a part of the path is a file, not a folder", ()),
    ("cache-folder-symlink-loop", cache_variable("cache-loop", lambda t: loop(t, "cache-loop")),
     "symbolic link loop", ()),
    ("entry-symlink-loop", entry_loop, "arrays-{key}.npz: symbolic link loop", ()),
    ("read-only-with-corrupt-entry", read_only_with_corrupt_entry,
     "arrays-{key}.npz: corrupt entry (", ()),
    ("read-only-cache-miss", read_only_cache, "{cache}: permission denied", ()),
    ("entry-unreadable", unreadable_entry, "arrays-{key}.npz: permission denied", ()),
    ("disk-full-writing-entry", lambda t, s, f: f.break_writes(".arrays-", OSError(errno.ENOSPC, "full")),
     "arrays-{key}.npz: no space left on device", ()),
    ("entry-truncated (rebuilt)", corrupt_entry, None, ("arrays-",)),
    ("entry-with-float-images (rebuilt, not used)", tampered_entry, None, ("arrays-",)),
    ("stale-temporary-of-a-killed-run (removed)", stale_temporaries, None, (".arrays-old", "arrays-")),
    # a shared machine: an entry anyone could have written is never read, and never deleted
    ("shared-cache-folder-with-an-entry-planted-by-another-user", neighbour_plants_entry,
     "{tmp}/shared-cache: is writable by others (mode 1777); not trusted", ()),
    ("entry-owned-by-another-user", entry_of_another_user,
     "arrays-{key}.npz: is owned by another user (uid 65534); not trusted", ()),
    ("entry-is-a-link-to-a-forged-file", entry_linked_to_a_forgery, "arrays-{key}.npz: is a symbolic link; not followed",
     ()),
    ("own-cache-folder-group-writable", group_writable_folder_with_forgery,
     "{cache}: is writable by its group (mode 0775); not trusted", ()),
]


@pytest.mark.parametrize("name, make, fragment, may_change", table(CACHE_CASES))
def test_cache_fault_never_fails_load(tmp_path, faults, name, make, fragment, may_change):
    (tmp_path / "src").mkdir()
    source = mat(tmp_path / "src")
    make(tmp_path, source, faults)
    folder = cache.cache_dir()
    before = {root: snapshot(root) for root in (tmp_path, folder)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load(source)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    np.testing.assert_array_equal(dataset.train_images, DATA["train_images"])
    np.testing.assert_array_equal(np.asarray(dataset.file_labels)[dataset.train_labels], DATA["train_labels"])
    np.testing.assert_array_equal(np.asarray(dataset.file_labels)[dataset.test_labels], DATA["test_labels"])
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    if fragment is None:
        assert messages == []
    else:  # said once, in one line naming the cache path and the reason
        key = cache.fingerprint([str(source)], "mnist")
        assert len(messages) == 1 and fragment.format(tmp=tmp_path, key=key, cache=folder) in messages[0], messages
        assert messages[0].startswith("array cache not") and "\n" not in messages[0]
    for root, old in before.items():
        new = snapshot(root)
        if may_change:  # our own entries and temporaries: rebuilt, written or cleaned up
            old, new = ({p: v for p, v in d.items() if not Path(p).name.startswith(may_change)} for d in (old, new))
        assert unchanged_except(old, new) == []
    if name.startswith("stale"):
        names = [p.name for p in folder.iterdir()]
        assert ".arrays-old.npz.x.tmp" not in names and ".arrays-fresh.npz.y.tmp" in names


# The embedded default lives in the cache folder too.

@pytest.fixture
def small_default(monkeypatch):
    monkeypatch.setattr(loading, "DEFAULT_SIZE", SMALL_DEFAULT)
    calls = []
    real = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def default_cache_is_a_file(tmp, f):
    (tmp / "cache-file").write_text("x")
    f.setenv("EMNIST_JAX_CACHE", tmp / "cache-file")


def default_read_only(tmp, f):
    cache.cache_dir().mkdir(parents=True, exist_ok=True)
    f.read_only(cache.cache_dir())


def default_file_corrupt(tmp, f):
    path = loading.default_file()
    path.write_bytes(path.read_bytes()[:1000])


def default_name():
    return f"synthetic-v{synthetic.GENERATOR_VERSION}-seed0-{SMALL_DEFAULT[0]}x{SMALL_DEFAULT[1]}.mat"


def forged_default(path):
    """A valid .mat under the default's name whose labels are all 0: read, it would change the data."""
    data = ol.make_split("byclass", *SMALL_DEFAULT)
    data["train_labels"][:], data["test_labels"][:] = 0, 0
    ol.write_mat(path, data)
    os.chmod(path, 0o644)
    return path


def default_planted_by_another_user(tmp, f):
    forged = forged_default(tmp / "forged.mat")
    folder = shared_folder(tmp / "cache")
    as_neighbour('cp "$1" "$2"', str(forged), str(folder / default_name()))


def default_of_another_user(tmp, f):
    if not ROOT:
        pytest.skip("giving a file to another user needs root")
    cache.cache_dir().mkdir(mode=0o700)
    os.chown(forged_default(cache.cache_dir() / default_name()), NEIGHBOUR, NEIGHBOUR)


def default_linked_to_a_forgery(tmp, f):
    cache.cache_dir().mkdir(mode=0o700)
    os.symlink(forged_default(tmp / "forged.mat"), cache.cache_dir() / default_name())


DEFAULT_CASES = [
    # id, fault (tmp, faults), warning fragment, times generated, whether the cached file ends up good
    ("cache-is-a-file", default_cache_is_a_file,
     "cache-file: is a file, not a folder; the embedded default data set is generated in memory", 1, False),
    ("read-only-cache", default_read_only, "cache: permission denied; the embedded "
     "default data set is generated in memory", 1, False),
    ("cached-file-damaged", default_file_corrupt, "generating the embedded default again", 2, True),
    ("shared-cache-folder-with-a-file-planted-by-another-user", default_planted_by_another_user,
     "cache: is writable by others (mode 1777); not trusted", 1, False),
    ("cached-file-owned-by-another-user", default_of_another_user,
     "cannot use the embedded default data set: {cache}/{name}: is owned by another user (uid 65534)", 1, False),
    ("cached-file-is-a-link-to-a-forged-file", default_linked_to_a_forgery,
     "cannot use the embedded default data set: {cache}/{name}: is a symbolic link; not followed", 1, False),
]


@pytest.mark.parametrize("name, make, fragment, generated, cached", [pytest.param(*c, id=c[0]) for c in DEFAULT_CASES])
def test_default_with_a_cache_fault_still_loads(tmp_path, faults, monkeypatch, small_default, capsys,
                                                name, make, fragment, generated, cached):
    monkeypatch.setenv("EMNIST_JAX_CACHE", str(tmp_path / "cache"))
    make(tmp_path, faults)
    before = snapshot(tmp_path)
    with pytest.warns(CacheWarning) as caught:
        dataset = load("default")
    assert dataset.source == "default" and dataset.synthetic and dataset.train_images.shape == (124, 28, 28)
    assert set(dataset.class_counts("train")) == {2}
    assert len(caught) == 1 and fragment.format(cache=cache.cache_dir(), name=default_name()) in str(caught[0].message)
    assert len(small_default) == generated
    assert "generating the embedded default data set (124 + 62 images" in capsys.readouterr().err
    problems = unchanged_except(before, snapshot(tmp_path), allowed_new=("cache/arrays-",))
    synthetic_file = f"cache/synthetic-v{synthetic.GENERATOR_VERSION}-seed0-124x62.mat"
    assert problems == ([f"changed or removed: {synthetic_file}"] if cached else [])
    if cached:
        assert load(tmp_path / synthetic_file).train_images.shape == (124, 28, 28)


def test_cache_faults_do_not_matter_without_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMNIST_JAX_CACHE", str(mat(tmp_path)))  # a file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(tmp_path / "emnist-mnist.mat", use_cache=False)


# ---- data.download --------------------------------------------------------------------------------

def archive(members):
    return ol.write_zip_bytes({f"matlab/{n}": b for n, b in members.items()})


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED = f"http://127.0.0.1:{unused_port()}/"  # nothing listens there


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAT = ol.mat_bytes(DATA)
GOOD = archive({"emnist-mnist.mat": MAT})
HASHES = {"emnist-mnist.mat": (sha(MAT), len(MAT))}
DIGITS = ol.mat_bytes(ol.make_split("digits"))


def flip_member_byte(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[raw.find(b"MATLAB") + 300] ^= 0xFF  # inside the stored member, past the local header
    return bytes(raw)


def serve(body, cut=None):
    def make(server, dest, f):
        server.files["matlab.zip"] = body
        if cut is not None:
            server.cut["matlab.zip"] = cut
        return {}
    return make


def preexisting(name, data, **kwargs):
    def make(server, dest, f):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
        server.files["matlab.zip"] = GOOD
        return kwargs
    return make


def with_faults(action, **kwargs):
    def make(server, dest, f):
        server.files["matlab.zip"] = GOOD
        action(dest, f)
        return kwargs
    return make


def dest_exists(dest):
    dest.mkdir(parents=True, exist_ok=True)
    return dest


DOWNLOAD_CASES = [
    # id, make the fault (server, dest, faults) -> download kwargs, expected, fragment, retry succeeds
    ("truncated-zip-served-complete", serve(GOOD[: len(GOOD) // 2]), EmnistDataError,
     "matlab.zip: not a zip archive", True),
    ("html-page-with-status-200", serve(b"<!DOCTYPE html><p>Maintenance</p>"),
     EmnistDataError, "received a web page (33 bytes of HTML), not the zip archive", True),
    ("empty-body", serve(b""), EmnistDataError, "not a zip archive (0 bytes", True),
    ("transfer-cut-short", serve(GOOD, cut=100), EmnistDataError, "download failed (ChunkedEncodingError", True),
    ("http-404", lambda s, d, f: {}, EmnistDataError, "download failed (HTTPError: 404", True),
    ("server-unreachable", lambda s, d, f: {"base_url": CLOSED}, EmnistDataError,
     f"{CLOSED}matlab.zip: download failed (ConnectionError", True),
    ("archive-hash-mismatch", lambda s, d, f: serve(GOOD)(s, d, f) or {"archive_hash": "md5:" + "0" * 32},
     EmnistDataError, "MD5 ", True),
    ("member-sha256-mismatch", lambda s, d, f: serve(GOOD)(s, d, f) or
     {"file_hashes": {"emnist-mnist.mat": ("0" * 64, 1)}}, EmnistDataError,
     "emnist-mnist.mat: SHA-256 ", True),
    ("member-missing", serve(archive({"emnist-digits.mat": MAT})), EmnistDataError,
     "archive has no member emnist-mnist.mat", True),
    ("member-crc-bad", lambda s, d, f: serve(flip_member_byte(GOOD))(s, d, f) or {"file_hashes": {}},
     EmnistDataError, "corrupt or truncated zip archive (Bad CRC-32", True),
    ("other-member-damaged", lambda s, d, f: serve(archive(
        {"emnist-mnist.mat": MAT, "emnist-digits.mat": DIGITS[:-1] + b"x"}))(s, d, f) or
     {"file_hashes": {**HASHES, "emnist-digits.mat": (sha(DIGITS), len(DIGITS))}}, EmnistDataError,
     "emnist-digits.mat: SHA-256 ", True),
    ("zip-slip", serve(ol.write_zip_bytes({"matlab/emnist-mnist.mat": MAT, "../evil.txt": b"x"})),
     EmnistDataError, "refusing archive entry '../evil.txt'", True),
    ("user-archive-corrupt (left alone)", preexisting("matlab.zip", b"PK\x03\x04 half an archive"),
     EmnistDataError, "this file was already there and is left alone", False),
    ("user-archive-wrong-md5",
     preexisting("matlab.zip", GOOD, archive_hash="md5:" + "1" * 32), EmnistDataError,
     "does not match the published 1111", False),
    ("user-file-differs-from-member", preexisting("emnist-mnist.mat", b"my own file"), EmnistDataError,
     "emnist-mnist.mat: already exists and differs from the verified archive member; left alone", False),
    ("dest-is-a-file", with_faults(lambda d, f: d.write_bytes(b"a file")), EmnistDataError,
     "emnist: is a file, not a folder", False),
    ("dest-read-only", with_faults(lambda d, f: f.read_only(dest_exists(d))),
     EmnistDataError, "cannot write the download there: permission denied", False),
    ("dest-cannot-be-created", with_faults(lambda d, f: f.deny(d, calls=("mkdir",))),
     EmnistDataError, "permission denied", False),
    ("disk-full-downloading",
     with_faults(lambda d, f: f.break_writes(".matlab.zip.", OSError(errno.ENOSPC, "full"))),
     EmnistDataError, "cannot write the download there: no space left on device", False),
    ("disk-full-extracting",
     with_faults(lambda d, f: f.break_writes(".emnist-mnist.mat.", OSError(errno.ENOSPC, "full"))),
     EmnistDataError, "cannot write the download there: no space left on device", False),
    ("member-encrypted", serve(ol.zip_with_headers(GOOD, flags=1)), EmnistDataError,
     "matlab.zip:matlab/emnist-mnist.mat: is encrypted", True),
    ("member-twice-in-two-folders",
     serve(ol.write_zip_bytes({"matlab/emnist-mnist.mat": MAT, "other/emnist-mnist.mat": MAT})),
     EmnistDataError, "archive holds emnist-mnist.mat twice", True),
    ("interrupted-downloading", with_faults(lambda d, f: f.break_writes(".matlab.zip.", KeyboardInterrupt())),
     KeyboardInterrupt, "", False),
    ("interrupted-extracting", with_faults(lambda d, f: f.break_writes(".emnist-mnist.mat.", KeyboardInterrupt())),
     KeyboardInterrupt, "", False),
]


@pytest.mark.parametrize("name, make, expected, fragment, retry", [pytest.param(*c, id=c[0]) for c in DOWNLOAD_CASES])
def test_download_fault(tmp_path, server, faults, name, make, expected, fragment, retry):
    dest = tmp_path / "emnist"
    kwargs = {"archive_hash": None, "file_hashes": HASHES, "base_url": server.url, **make(server, dest, faults)}
    before = snapshot(tmp_path)
    with pytest.raises(expected) as info:
        download("mnist", dest, "matlab", progressbar=False, **kwargs)
    one_line(str(info.value))
    assert fragment in str(info.value)
    after = snapshot(tmp_path)
    assert unchanged_except(before, after) == []  # not even a temporary file or the folder it made
    if retry:  # the fault is gone: the next plain call downloads and verifies, nobody deletes anything
        server.reset()
        server.files["matlab.zip"] = GOOD
        files = download("mnist", dest, "matlab", archive_hash=None, file_hashes=HASHES, base_url=server.url,
                         progressbar=False)
        assert [sha(p.read_bytes()) for p in files] == [sha(MAT)] and (dest / "matlab.zip").read_bytes() == GOOD


# ---- python -m emnist_jax.data -----------------------------------------------------------------

def cli_mat(tmp, f, **stored):
    return ["info", "--data", str(mat(tmp, **stored)), "--out", str(tmp / "out")]


def without_class_3(tmp, f):
    data = dict(DATA)
    keep = DATA["train_labels"] != 3
    data["train_images"], data["train_labels"] = DATA["train_images"][keep], DATA["train_labels"][keep]
    return ["info", "--data", str(ol.write_mat(tmp / "emnist-mnist.mat", data)), "--out", str(tmp / "out")]


def denied_source(tmp, f):
    argv = cli_mat(tmp, f)
    f.deny(tmp / "emnist-mnist.mat")
    return argv


def out_is_a_file(tmp, f):
    (tmp / "out").write_text("my notes")
    return cli_mat(tmp, f)


def out_disk_full(tmp, f, monkeypatch):
    import matplotlib.figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    return cli_mat(tmp, f)


def users_pictures(tmp, f, *extra):
    """--out names a folder of the user's own: their samples.png, and ``extra`` entries."""
    pictures = tmp / "Pictures"
    pictures.mkdir()
    (pictures / "samples.png").write_bytes(b"my holiday photo")
    for name in extra:
        (pictures / name).mkdir()
    return ["info", "--data", str(mat(tmp)), "--out", str(pictures)]


def marker_text(made_by="python -m emnist_jax.data info", files=("class_distribution.png", "samples.png")):
    """A finished output's marker, as ``made_by`` writes it."""
    return json.dumps({"schema": "emnist_jax.report/1", "state": "complete", "made_by": made_by, "host": "h",
                       "pid": 1, "files": list(files)})


def earlier_output(tmp, made_by="python -m emnist_jax.data info"):
    """An --out folder as an earlier run of ``made_by`` left it."""
    out = tmp / "out"
    out.mkdir()
    for name in ("samples.png", "class_distribution.png"):
        (out / name).write_bytes(b"an earlier figure")
    (out / ".emnist_jax_report").write_text(marker_text(made_by))
    return out


def second_figure_fails(tmp, f, monkeypatch):
    earlier_output(tmp)
    from emnist_jax import plots

    real, calls = plots.save, []

    def save(fig, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fig, path)
    monkeypatch.setattr(plots, "save", save)
    return cli_mat(tmp, f)


def out_of_another_user(tmp, f):
    """In a shared folder, another user prepares --out with a marker that claims this command made it."""
    shared = shared_folder(tmp / "shared")
    marker = marker_text(files=["samples.png"])
    as_neighbour('mkdir "$1/out" && printf %s "$2" > "$1/out/.emnist_jax_report" && echo theirs > "$1/out/samples.png"',
                 str(shared), marker)
    return ["info", "--data", str(mat(tmp)), "--out", str(shared / "out")]


def marker_is_a_link(tmp, f):
    out = tmp / "out"
    out.mkdir()
    (out / "samples.png").write_bytes(b"my own file")
    (tmp / ".emnist_jax_report").write_text(marker_text(files=["samples.png"]))  # a marker elsewhere, linked in
    os.symlink(tmp / ".emnist_jax_report", out / ".emnist_jax_report")
    return cli_mat(tmp, f)


def interrupted(tmp, f, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("emnist_jax.data.__main__.load", stop)
    return cli_mat(tmp, f)


def download_local(server, monkeypatch, body=GOOD):
    server.files["matlab.zip"] = body
    monkeypatch.setattr(official, "BASE_URL", server.url)
    monkeypatch.setitem(official.FILES, "emnist-mnist.mat", HASHES["emnist-mnist.mat"])


CLI_CASES = [
    # id, argv maker (tmp, faults, monkeypatch, server), exit code, stderr fragment, stdout must not hold
    ("info-missing-file", lambda t, f, m, s: ["info", "--data", str(t / "nope.mat")], 2, "nope.mat: file not found"),
    ("info-float-images", lambda t, f, m, s: cli_mat(t, f, **{"train.images": ROWS / 255.0}), 2,
     "dataset.train.images holds float64 values 0..1"),
    ("info-no-training-images", lambda t, f, m, s: cli_mat(
        t, f, **{"train.images": ROWS[:0], "train.labels": np.zeros((0, 1), np.uint8)}), 2, "no training images"),
    ("info-symlink-loop", lambda t, f, m, s: ["info", "--data", str(loop(t))], 2,
     "symbolic link loop"),
    ("info-permission-denied", lambda t, f, m, s: denied_source(t, f), 2,
     "emnist-mnist.mat: permission denied"),
    ("info-out-is-a-file", lambda t, f, m, s: out_is_a_file(t, f), 2,
     "out: is a file, not a figure set folder; choose another name"),
    ("info-out-unwritable", lambda t, f, m, s: f.deny(t, calls=("mkdir",)) or cli_mat(t, f),
     2, "out: cannot write in {tmp}: Permission denied"),
    ("info-out-disk-full", lambda t, f, m, s: out_disk_full(t, f, m), 2,
     "cannot write the figures: no space left on device"),
    ("info-out-folder-of-user-files", lambda t, f, m, s: users_pictures(t, f), 2,
     "Pictures: exists and is not a figure set made by this command (it holds 'samples.png'); the figure set "
     "replaces only a folder it made itself"),
    ("info-out-user-file-and-a-folder-named-like-a-figure", lambda t, f, m, s: users_pictures(
        t, f, "class_distribution.png"), 2, "exists and is not a figure set made by this command (it holds "
     "'class_distribution.png' and 1 more)"),
    ("info-out-made-by-the-report", lambda t, f, m, s: earlier_output(t, "python -m emnist_jax.report") and
     cli_mat(t, f), 2, "out: was made by python -m emnist_jax.report, not by this command"),
    ("info-out-own-output-plus-a-user-file", lambda t, f, m, s: (earlier_output(t) / "notes.txt").write_text("x") and
     cli_mat(t, f), 2, "out: holds 'notes.txt', which the figure set did not write"),
    ("info-out-second-figure-fails-earlier-output-kept", lambda t, f, m, s: second_figure_fails(t, f, m), 2,
     "out: cannot write the figures: no space left on device"),
    ("info-out-is-the-current-folder", lambda t, f, m, s: ["info", "--data", str(mat(t)), "--out", "."], 2,
     "--out .: is the current folder or contains it"),
    ("info-out-folder-of-another-user-with-a-forged-marker", lambda t, f, m, s: out_of_another_user(t, f), 2,
     "shared/out: is owned by another user (uid 65534); the figure set replaces only a folder it made itself"),
    ("info-out-marker-is-a-link", lambda t, f, m, s: marker_is_a_link(t, f), 2,
     "out: .emnist_jax_report is a symbolic link; not followed"),
    ("info-unknown-split", lambda t, f, m, s: ["info", "--split", "bogus"], 2, "invalid choice: 'bogus'"),
    ("info-idx-header-claims-2**31-1-images", lambda t, f, m, s: ["info", "--data", str(idx_claiming(t, 2**31 - 1)),
     "--split", "mnist", "--out", str(t / "out")], 2, "header claims 2,147,483,647 images (1.5 TiB), more than a"),
    ("info-encrypted-zip", lambda t, f, m, s: ["info", "--data", str(matlab_zip(t, MAT_MEMBER, flags=1)), "--split",
     "mnist", "--out", str(t / "out")], 2, "matlab.zip:matlab/emnist-mnist.mat: is encrypted"),
    ("info-mapping-two-classes-named-8", lambda t, f, m, s: cli_mat(t, f, **mapping_of([8, 56], [9, 56])), 2,
     "mapping gives the character '8' twice (labels 8 and 9)"),
    ("info-interrupted", lambda t, f, m, s: interrupted(t, f, m), 130, "interrupted"),
    ("info-class-missing-in-train", lambda t, f, m, s: without_class_3(t, f), 0, ""),
    ("info-cache-unusable", lambda t, f, m, s: m.setenv(
        "EMNIST_JAX_CACHE", str(mat(t))) or cli_mat(t, f), 0, "warning: array cache not used: "),
    ("download-dest-is-a-file", lambda t, f, m, s: (t / "d").write_text("x") and
     ["download", "--split", "mnist", "--dest", str(t / "d")], 2, "d: is a file, not a folder"),
    ("download-dest-read-only", lambda t, f, m, s: download_local(s, m) or
     f.read_only(dest_exists(t / "d")) or ["download", "--split", "mnist", "--dest", str(t / "d")], 2,
     "cannot write the download there: permission denied"),
    ("download-unknown-split", lambda t, f, m, s: ["download", "--split", "bogus"], 2, "invalid choice: 'bogus'"),
    ("download-web-page", lambda t, f, m, s: download_local(s, m, b"<html>busy</html>") or
     ["download", "--split", "mnist", "--dest", str(t / "d")], 2, "received a web page"),
    ("download-unreachable", lambda t, f, m, s: m.setattr(official, "BASE_URL", CLOSED) or
     ["download", "--split", "mnist", "--dest", str(t / "d")], 2, "download failed (ConnectionError"),
    ("download-interrupted", lambda t, f, m, s: download_local(s, m) or f.break_writes(
        ".matlab.zip.", KeyboardInterrupt()) or ["download", "--split", "mnist", "--dest", str(t / "d")], 130,
     "interrupted"),
    ("download-ok", lambda t, f, m, s: download_local(s, m) or
     ["download", "--split", "mnist", "--dest", str(t / "d")], 0, ""),
]


@pytest.mark.parametrize("name, make, code, fragment", [pytest.param(*c, id=c[0]) for c in CLI_CASES])
def test_command_line_fault(tmp_path, faults, monkeypatch, server, capsys, name, make, code, fragment):
    monkeypatch.chdir(tmp_path)  # the default --out and --dest land here, never in the repository
    argv = make(tmp_path, faults, monkeypatch, server)
    before = snapshot(tmp_path)
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse
        status = stop.code
    out, err = capsys.readouterr()
    assert status == code, err
    assert fragment.format(tmp=tmp_path) in err
    if code == 0:
        assert "nan" not in out and (err == "" or err.startswith("warning: ")) and err.count("\n") <= 1
    elif fragment.startswith("invalid choice"):  # argparse: its usage, then one error line
        assert "Traceback" not in err and err.splitlines()[-1].startswith("python -m emnist_jax.data")
    else:
        assert err.startswith(("error: ", "interrupted")) and err.count("\n") == 1, err
    new_allowed = {"info": ("out",), "download": ("d",)}[argv[0]] if code == 0 else ()
    assert unchanged_except(before, snapshot(tmp_path), allowed_new=new_allowed) == []
    if name == "download-ok":
        assert out == f"verified {tmp_path / 'd' / 'emnist-mnist.mat'}\n"
        assert sha((tmp_path / "d" / "emnist-mnist.mat").read_bytes()) == sha(MAT)
    if name.startswith("info-class-missing"):
        assert "    3    3        0       1   0.00" in out.splitlines()


def test_info_into_a_closed_pipe_exits_141_quietly(tmp_path):
    # `python -m emnist_jax.data info | head -1`, made deterministic: the reader is gone before
    # the first line is written; no BrokenPipeError traceback.
    source = mat(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run([sys.executable, "-m", "emnist_jax.data", "info", "--data", str(source), "--out",
                             str(tmp_path / "out")], stdout=write_end, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMNIST_JAX_CACHE": str(tmp_path / "cache")})
    os.close(write_end)
    assert result.returncode == 141 and result.stderr == ""
    assert not (tmp_path / "out").exists()  # stopped at the lost line, before the figures
