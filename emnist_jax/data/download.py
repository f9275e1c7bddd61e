"""Verified download of the official archives with pooch, and safe extraction of one split.

The archive is fetched by ``pooch`` (temporary file, hash check, then rename: a failed or
truncated transfer never leaves a file under the final name). The split's members are then
extracted one by one, each through a temporary file that is renamed only once its SHA-256
matches ``official.FILES``. An archive holding any entry that would land outside ``dest``
(zip slip) is refused before anything is extracted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pooch

from emnist_jax.data import official
from emnist_jax.data.formats import EmnistDataError


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_members(archive: zipfile.ZipFile, dest: Path, name: str) -> None:
    root = dest.resolve()
    for member in archive.namelist():
        target = (root / member).resolve()
        if os.path.isabs(member) or not target.is_relative_to(root):
            raise EmnistDataError(f"{name}: refusing archive entry {member!r}, it would land outside {dest}")


def extract(archive_path: Path, members: list[str], dest: Path, file_hashes: dict[str, tuple[str, int]]) -> list[Path]:
    """Extract ``members`` (matched by base name) into ``dest``, verifying each SHA-256."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            _check_members(archive, dest, str(archive_path))
            by_name = {os.path.basename(m): m for m in archive.namelist()}
            written = []
            for name in members:
                if name not in by_name:
                    raise EmnistDataError(f"{archive_path}: archive has no member {name}")
                final = dest / name
                handle, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
                try:
                    with archive.open(by_name[name]) as src, os.fdopen(handle, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    expected = file_hashes.get(name, (None, 0))[0]
                    actual = _sha256(Path(tmp))
                    if expected is not None and actual != expected:
                        raise EmnistDataError(f"{archive_path}:{name}: SHA-256 {actual} does not match "
                                              f"the official {expected}")
                    os.replace(tmp, final)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                written.append(final)
    except zipfile.BadZipFile as error:
        raise EmnistDataError(f"{archive_path}: corrupt or truncated zip archive ({error})") from None
    return written


def download(split: str = "byclass", dest: str | os.PathLike = "emnist", archive_format: str = "matlab", *,
             base_url: str = official.BASE_URL, archive_hash: str | None | bool = True,
             file_hashes: dict[str, tuple[str, int]] | None = None, progressbar: bool = True) -> list[Path]:
    """Fetch the official archive into ``dest`` and extract ``split`` (or ``"all"``); returns the files.

    ``archive_hash=True`` uses the official checksum (where one is published); ``base_url``,
    ``archive_hash`` and ``file_hashes`` exist so tests can serve their own archive locally.
    """
    if archive_format not in official.ARCHIVES:
        raise EmnistDataError(f"unknown archive format {archive_format!r}; expected one of "
                              f"{', '.join(official.ARCHIVES)}")
    splits = list(official.SPLITS) if split == "all" else [split]
    if any(s not in official.SPLITS for s in splits):
        raise EmnistDataError(f"unknown split {split!r}; expected 'all' or one of {', '.join(official.SPLITS)}")
    archive_name, official_hash = official.ARCHIVES[archive_format]
    known_hash = official_hash if archive_hash is True else (archive_hash or None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + archive_name
    try:
        archive = pooch.retrieve(url, known_hash=known_hash, fname=archive_name, path=dest,
                                 progressbar=progressbar)
    except ValueError as error:  # pooch's hash mismatch
        raise EmnistDataError(f"{url}: {str(error).splitlines()[0]}") from None
    except Exception as error:  # requests' connection, protocol and HTTP errors
        raise EmnistDataError(f"{url}: download failed ({type(error).__name__}: {error})") from None
    members = [m for s in splits for m in official.split_files(s, archive_format)]
    return extract(Path(archive), members, dest, official.FILES if file_hashes is None else file_hashes)
