"""Verified download of the official archives, and safe extraction of one split.

Guarantees (each one tested in tests/test_download.py and tests/test_reliability_data.py):

- The archive is fetched (by pooch's HTTP downloader) into a hidden temporary file in ``dest``
  and only renamed to its final name (``matlab.zip``, ``gzip.zip``) after it passed every
  check: the published checksum where there is one (gzip.zip's MD5), a readable zip whose
  every member's CRC matches, every member with an official SHA-256 (``official.FILES``)
  matching it, no entry that would land outside ``dest`` (zip slip), no file name twice and no
  encrypted member (:func:`~emnist_jax.data.formats.zip_members`). A failed, truncated
  or interrupted download, or an HTML page served instead of the archive, leaves nothing
  behind, so a retry downloads again.
- The split's files are extracted through temporary files and renamed only when all of them
  are verified: either all of them appear under their final names, or none.
- Nothing the program did not make is replaced or deleted: an archive already under the final
  name (say, fetched by hand) is used only if it passes the same checks, and otherwise refused
  with one line; an existing extracted file is kept if it is identical, and refused otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import pooch

from emnist_jax.data import official
from emnist_jax.data.formats import EmnistDataError, os_reason, zip_members

_BLOCK = 1 << 20


def _file_hash(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _not_a_zip(path: Path, label: str) -> str:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    size = path.stat().st_size
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return f"{label}: received a web page ({size:,} bytes of HTML), not the zip archive"
    return f"{label}: not a zip archive ({size:,} bytes, corrupt or truncated)"


def _check_members(archive: zipfile.ZipFile, dest: Path, label: str) -> None:
    root = dest.resolve()
    for member in archive.namelist():
        target = (root / member).resolve()
        if os.path.isabs(member) or not target.is_relative_to(root):
            raise EmnistDataError(f"{label}: refusing archive entry {member!r}, it would land outside {dest}")


def verify_archive(archive_path: Path, label: str, known_hash: str | None, members: list[str], dest: Path,
                   file_hashes: dict[str, tuple[str, int]]) -> dict[str, Path]:
    """Check the whole archive and extract ``members`` (by base name) into temporary files in ``dest``.

    Returns member name -> temporary file; the caller renames or removes them. Raises
    EmnistDataError (after removing the temporary files) when any check fails.
    """
    if known_hash:
        algorithm, expected = known_hash.split(":", 1) if ":" in known_hash else ("sha256", known_hash)
        actual = _file_hash(archive_path, algorithm)
        if actual != expected.lower():
            raise EmnistDataError(f"{label}: {algorithm.upper()} {actual} does not match the published {expected}")
    extracted: dict[str, Path] = {}
    try:
        try:
            archive = zipfile.ZipFile(archive_path)
        except zipfile.BadZipFile:
            raise EmnistDataError(_not_a_zip(archive_path, label)) from None
        with archive:
            by_name = zip_members(archive, label)  # no '..', no name twice, nothing encrypted
            _check_members(archive, dest, label)
            missing = [name for name in members if name not in by_name]
            if missing:
                raise EmnistDataError(f"{label}: archive has no member {missing[0]}")
            for name, member in by_name.items():  # every member: a damaged archive is never kept
                digest, out = hashlib.sha256(), None
                if name in members:
                    handle, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
                    extracted[name] = Path(tmp)
                    out = os.fdopen(handle, "wb")
                with archive.open(member) as src, (out or contextlib.nullcontext()):
                    for block in iter(lambda: src.read(_BLOCK), b""):  # zipfile checks the CRC at the end
                        digest.update(block)
                        if out is not None:
                            out.write(block)
                expected = file_hashes.get(name, (None, 0))[0]
                if expected is not None and digest.hexdigest() != expected:
                    raise EmnistDataError(f"{label}:{name}: SHA-256 {digest.hexdigest()} does not match "
                                          f"the official {expected}")
    except zipfile.BadZipFile as error:
        _remove(extracted.values())
        raise EmnistDataError(f"{label}: corrupt or truncated zip archive ({error})") from None
    except BaseException:
        _remove(extracted.values())
        raise
    return extracted


def _remove(paths) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _place(extracted: dict[str, Path], dest: Path) -> list[Path]:
    """Rename verified temporary files to their final names, all or none; never replace a different file."""
    finals = []
    try:
        for name, tmp in extracted.items():
            final = dest / name
            if os.path.lexists(final):
                if final.is_file() and _file_hash(final, "sha256") == _file_hash(tmp, "sha256"):
                    continue  # the same file is already there
                raise EmnistDataError(f"{final}: already exists and differs from the verified archive member; "
                                      "left alone (move it away to extract it again)")
        for name, tmp in extracted.items():
            final = dest / name
            if not os.path.lexists(final):
                os.replace(tmp, final)
            finals.append(final)
    finally:
        _remove(extracted.values())
    return finals


def _fetch(url: str, dest: Path, archive_name: str, progressbar: bool) -> Path:
    """Download ``url`` into a new hidden temporary file in ``dest``; removed again on any failure."""
    handle, tmp = tempfile.mkstemp(dir=dest, prefix=f".{archive_name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w+b") as f:
            pooch.HTTPDownloader(progressbar=progressbar)(url, f, None)
    except BaseException:
        _remove([tmp])
        raise
    return Path(tmp)


def download(split: str = "byclass", dest: str | os.PathLike = "emnist", archive_format: str = "matlab", *,
             base_url: str | None = None, archive_hash: str | None | bool = True,
             file_hashes: dict[str, tuple[str, int]] | None = None, progressbar: bool = True) -> list[Path]:
    """Fetch the official archive into ``dest`` and extract ``split`` (or ``"all"``); returns the files.

    ``base_url`` defaults to NIST's (``official.BASE_URL``); ``archive_hash=True`` uses the official
    checksum (where one is published); ``base_url``, ``archive_hash`` and ``file_hashes`` exist so
    tests can serve their own archive locally.
    Raises EmnistDataError (one line) on any failure, leaving no partial file under a final name.
    """
    if archive_format not in official.ARCHIVES:
        raise EmnistDataError(f"unknown archive format {archive_format!r}; expected one of "
                              f"{', '.join(official.ARCHIVES)}")
    splits = list(official.SPLITS) if split == "all" else [split]
    if any(s not in official.SPLITS for s in splits):
        raise EmnistDataError(f"unknown split {split!r}; expected 'all' or one of {', '.join(official.SPLITS)}")
    archive_name, official_hash = official.ARCHIVES[archive_format]
    known_hash = official_hash if archive_hash is True else (archive_hash or None)
    hashes = official.FILES if file_hashes is None else file_hashes
    members = [m for s in splits for m in official.split_files(s, archive_format)]
    dest = Path(dest)
    final = dest / archive_name
    url = (base_url or official.BASE_URL).rstrip("/") + "/" + archive_name
    if dest.exists() and not dest.is_dir():
        raise EmnistDataError(f"{dest}: is a file, not a folder")
    made = [folder for folder in [dest, *dest.parents] if not os.path.lexists(folder)]
    try:
        return _download(url, dest, final, archive_name, members, known_hash, hashes, progressbar)
    except BaseException:
        for folder in made:  # a failed download leaves no trace, not even the empty folders it made
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def _download(url: str, dest: Path, final: Path, archive_name: str, members: list[str], known_hash: str | None,
              hashes: dict[str, tuple[str, int]], progressbar: bool) -> list[Path]:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(final):
            # Ours from an earlier run (verified before it got this name) or the user's own copy:
            # used only if it passes every check, never replaced or deleted.
            try:
                extracted = verify_archive(final, str(final), known_hash, members, dest, hashes)
            except EmnistDataError as error:
                raise EmnistDataError(f"{error}; this file was already there and is left alone "
                                      "(move it away to download again)") from None
            return _place(extracted, dest)
        try:
            tmp = _fetch(url, dest, archive_name, progressbar)
        except OSError as error:
            if error.errno is None:  # requests' connection, protocol and HTTP errors
                raise EmnistDataError(f"{url}: download failed ({type(error).__name__}: "
                                      f"{str(error).splitlines()[0] if str(error) else ''})") from None
            raise
        try:
            extracted = verify_archive(tmp, url, known_hash, members, dest, hashes)
            placed = _place(extracted, dest)
            if not os.path.lexists(final):
                os.replace(tmp, final)
        finally:
            _remove([tmp])
        return placed
    except OSError as error:  # the destination: unwritable, full, read-only ...
        named = error.filename and not os.path.basename(error.filename).startswith(".")  # not our temporaries
        if named and Path(error.filename) != dest:
            raise EmnistDataError(f"{error.filename}: {os_reason(error)}") from None
        raise EmnistDataError(f"{dest}: cannot write the download there: {os_reason(error)}") from None
