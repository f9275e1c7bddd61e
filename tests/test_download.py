"""download() against a local HTTP server on 127.0.0.1 that each test starts and stops."""

import hashlib
import http.server
import threading

import pytest

import official_layout as ol
from emnist_jax.data import EmnistDataError, download, load
from emnist_jax.data.official import ARCHIVES, FILES


class Server:
    """Serves ``files`` (name -> bytes); ``truncate`` names files sent short of their Content-Length."""

    def __init__(self):
        self.files, self.truncate = {}, set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in outer.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_matlab(server, split="mnist"):
    mat = ol.mat_bytes(ol.make_split(split))
    archive = ol.write_zip_bytes({f"matlab/emnist-{split}.mat": mat})
    server.files["matlab.zip"] = archive
    return archive, {f"emnist-{split}.mat": (sha256(mat), len(mat))}


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_official_registry_is_complete():
    assert len(FILES) == 36 and ARCHIVES["gzip"][1].startswith("md5:")


def test_matlab_download_is_verified_extracted_and_loadable(server, tmp_path):
    archive, hashes = serve_matlab(server)
    files = download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash=f"sha256:{sha256(archive)}",
                     file_hashes=hashes, progressbar=False)
    assert [f.name for f in files] == ["emnist-mnist.mat"]
    assert load(files[0]).n_classes == 10
    assert leftovers(tmp_path) == ["emnist-mnist.mat", "matlab.zip"]


def test_gzip_download_extracts_the_idx_files_and_mapping(server, tmp_path):
    members = ol.idx_members("digits", ol.make_split("digits"))
    server.files["gzip.zip"] = ol.write_zip_bytes({f"gzip/{n}": b for n, b in members.items()})
    hashes = {name: (sha256(data), len(data)) for name, data in members.items()}
    files = download("digits", tmp_path, "gzip", base_url=server.url, archive_hash=None, file_hashes=hashes,
                     progressbar=False)
    assert len(files) == 5
    assert load(tmp_path, "digits").classes == tuple("0123456789")


def test_archive_checksum_mismatch_leaves_nothing(server, tmp_path):
    _, hashes = serve_matlab(server)
    with pytest.raises(EmnistDataError, match="matlab.zip"):
        download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash="sha256:" + "0" * 64,
                 file_hashes=hashes, progressbar=False)
    assert leftovers(tmp_path) == []


def test_member_checksum_mismatch_leaves_no_member(server, tmp_path):
    serve_matlab(server)
    with pytest.raises(EmnistDataError, match="emnist-mnist.mat: SHA-256 .* does not match"):
        download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash=None,
                 file_hashes={"emnist-mnist.mat": ("f" * 64, 1)}, progressbar=False)
    assert leftovers(tmp_path) == ["matlab.zip"]  # verified archive kept, no member, no .part file


def test_truncated_transfer_leaves_nothing(server, tmp_path):
    archive, hashes = serve_matlab(server)
    server.truncate.add("matlab.zip")
    with pytest.raises(EmnistDataError, match="matlab.zip"):
        download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash=f"sha256:{sha256(archive)}",
                 file_hashes=hashes, progressbar=False)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_without_archive_hash_is_still_refused(server, tmp_path):
    _, hashes = serve_matlab(server)
    server.truncate.add("matlab.zip")
    with pytest.raises(EmnistDataError):
        download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash=None, file_hashes=hashes,
                 progressbar=False)
    assert "emnist-mnist.mat" not in leftovers(tmp_path)


def test_zip_slip_is_refused_before_anything_is_extracted(server, tmp_path):
    mat = ol.mat_bytes(ol.make_split("mnist"))
    server.files["matlab.zip"] = ol.write_zip_bytes({"matlab/emnist-mnist.mat": mat, "../../evil.txt": b"x"})
    dest = tmp_path / "dest"
    with pytest.raises(EmnistDataError, match="refusing archive entry '../../evil.txt'"):
        download("mnist", dest, "matlab", base_url=server.url, archive_hash=None,
                 file_hashes={"emnist-mnist.mat": (sha256(mat), len(mat))}, progressbar=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert leftovers(dest) == ["matlab.zip"]


def test_http_error_is_one_clear_line(server, tmp_path):
    with pytest.raises(EmnistDataError, match="download failed") as info:
        download("mnist", tmp_path, "matlab", base_url=server.url, archive_hash=None, progressbar=False)
    assert "\n" not in str(info.value)


def test_unknown_split_or_format():
    with pytest.raises(EmnistDataError, match="unknown split"):
        download("nope", "x")
    with pytest.raises(EmnistDataError, match="unknown archive format"):
        download("mnist", "x", "tar")
