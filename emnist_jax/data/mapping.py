"""A split's label coding: the ``emnist-<split>-mapping.txt`` rows, refused where they are ambiguous."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from emnist_jax.data.errors import EmnistDataError, describe_values, number
from emnist_jax.data.layout import whole_non_negative


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
    if not whole_non_negative(rows):
        raise EmnistDataError(f"{name}: mapping must hold whole numbers >= 0, found {describe_values(rows)}")
    top = rows.max()
    if top > MAX_CODE:  # checked before the cast: a larger float would not survive it
        shown = number(top) if top < 1e15 else f"{float(top):g}"
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
