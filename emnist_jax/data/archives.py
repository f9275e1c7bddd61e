"""The members of a zip archive (``matlab.zip``, ``gzip.zip``), refused where they are ambiguous."""

from __future__ import annotations

import re
import zipfile

from emnist_jax.data.errors import EmnistDataError

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
