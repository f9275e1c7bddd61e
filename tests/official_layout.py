"""Writers of tiny files in the official EMNIST layouts, independent of emnist_jax's own code,
and a local HTTP server on 127.0.0.1 that serves them (tests never download).

Images are given upright and written transposed, as NIST did; labels are written in the file's
coding (letters 1..26).
"""

from __future__ import annotations

import gzip
import http.server
import io
import string
import struct
import threading
import warnings
import zipfile
import zlib
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


def mat_bytes(data: dict, stored: dict | None = None, level: int | None = None) -> bytes:
    """The .mat file of ``data``; ``stored`` replaces arrays exactly as written, by field name
    ("train.images" (N, 784) rows, "test.labels", "mapping" ...), for files with faults.

    ``level`` recompresses each variable with zlib at that level instead of scipy's default
    (level 1 is ~10x faster on large inputs; readers see no difference).
    """
    stored = stored or {}

    def part(kind):
        labels = stored.get(f"{kind}.labels", data[f"{kind}_labels"].reshape(-1, 1))
        images = stored.get(f"{kind}.images", transposed_rows(data[f"{kind}_images"]))
        return {"images": images, "labels": labels, "writers": np.zeros((len(labels), 1), np.uint8)}
    buffer = io.BytesIO()
    mapping = stored.get("mapping", np.array(data["mapping"], float))
    scipy.io.savemat(buffer, {"dataset": {"train": part("train"), "test": part("test"), "mapping": mapping}},
                     do_compression=level is None)
    return buffer.getvalue() if level is None else _compress_elements(buffer.getvalue(), level)


MI_COMPRESSED = 15  # MAT v5 data type of a zlib-compressed data element


def _compress_elements(raw: bytes, level: int) -> bytes:
    """Wrap each top-level data element of an uncompressed MAT v5 file in a compressed element."""
    out, offset = [raw[:128]], 128  # the 128-byte header stays as it is
    while offset < len(raw):
        _, size = struct.unpack_from("<II", raw, offset)
        end = offset + 8 + size + (-size % 8)  # elements are padded to 8 bytes
        packed = zlib.compress(raw[offset:end], level)
        out.append(struct.pack("<II", MI_COMPRESSED, len(packed)) + packed)
        offset = end
    return b"".join(out)


def idx_bytes(array: np.ndarray) -> bytes:
    if array.ndim == 1:
        return struct.pack(">ii", 2049, len(array)) + array.astype(np.uint8).tobytes()
    return struct.pack(">iiii", 2051, len(array), 28, 28) + transposed_rows(array).tobytes()


def mapping_text(rows: list[list[int]]) -> str:
    return "".join(" ".join(str(v) for v in row) + "\r\n" for row in rows)


def idx_members(split: str, data: dict, compress: bool = True) -> dict[str, bytes]:
    # gzip level 1: level 9 took 30 s for the 30,000 images of the memory test, and a reader
    # sees no difference between levels.
    members = {}
    for part in ("train", "test"):
        for kind, key in (("images-idx3", "images"), ("labels-idx1", "labels")):
            payload = idx_bytes(data[f"{part}_{key}"])
            name = f"emnist-{split}-{part}-{kind}-ubyte"
            members[name + (".gz" if compress else "")] = (gzip.compress(payload, compresslevel=1)
                                                          if compress else payload)
    members[f"emnist-{split}-mapping.txt"] = mapping_text(data["mapping"]).encode()
    return members


def write_idx_folder(folder: Path, split: str, data: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in idx_members(split, data, compress).items():
        (folder / name).write_bytes(payload)
    return folder


def write_mat(path: Path, data: dict, stored: dict | None = None, level: int | None = None) -> Path:
    path.write_bytes(mat_bytes(data, stored, level))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(write_zip_bytes(members))
    return path


def write_zip_bytes(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    """A stored zip archive of ``members`` (a list may name a member twice)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, which a test may want
        for name, payload in (members.items() if isinstance(members, dict) else members):
            archive.writestr(name, payload)
    return buffer.getvalue()


def zip_with_headers(data: bytes, flags: int = 0, method: int | None = None) -> bytes:
    """The zip archive ``data`` with ``flags`` set (1: encrypted) and, where given, the compression
    ``method`` stated in every member's local and central header (the content stays as it is)."""
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        locals_ = [info.header_offset for info in archive.infolist()]
        central, count = archive.start_dir, len(locals_)
    headers = [(offset, 6) for offset in locals_]  # local header: flags at +6, method at +8
    for _ in range(count):  # central header: flags at +8, method at +10; 46 bytes and three names
        headers.append((central, 8))
        n, m, k = struct.unpack_from("<HHH", raw, central + 28)
        central += 46 + n + m + k
    for offset, at in headers:
        struct.pack_into("<H", raw, offset + at, struct.unpack_from("<H", raw, offset + at)[0] | flags)
        if method is not None:
            struct.pack_into("<H", raw, offset + at + 2, method)
    return bytes(raw)


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with status 200; other names get 404.

    ``cut[name] = n`` sends only the first n bytes of a file while announcing its full
    Content-Length (a transfer cut short); ``requests`` lists the names asked for.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append(name)
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: outer.cut[name]] if name in outer.cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        # A short poll interval: shutdown() waits for it, and tests start and stop servers often.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.files.clear()
        self.cut.clear()
        self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
