"""download() and ``python -m emnist_jax.data download`` against a local HTTP server on 127.0.0.1.

Every successful download is checked byte for byte: the archive under its final name is the
one served, and every extracted file is the archive's member (SHA-256), not just present.
"""

import hashlib

import numpy as np
import pytest

import official_layout as ol
from emnist_jax.data import EmnistDataError, download, load, official
from emnist_jax.data.__main__ import main


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def matlab_archive(splits=("mnist",), seed=0):
    """(archive bytes, member name -> bytes, file_hashes, data of the first split)."""
    data = {split: ol.make_split(split, seed=seed) for split in splits}
    members = {f"emnist-{split}.mat": ol.mat_bytes(data[split]) for split in splits}
    archive = ol.write_zip_bytes({f"matlab/{name}": payload for name, payload in members.items()})
    return archive, members, {name: (sha256(b), len(b)) for name, b in members.items()}, data[splits[0]]


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def assert_extracted(files, members):
    """Each returned file holds exactly its archive member's bytes."""
    assert sorted(f.name for f in files) == sorted(members)
    for f in files:
        assert sha256(f.read_bytes()) == sha256(members[f.name]), f.name


def fetch(server, dest, split="mnist", fmt="matlab", **kwargs):
    kwargs.setdefault("archive_hash", None)
    return download(split, dest, fmt, base_url=server.url, progressbar=False, **kwargs)


def test_official_registry_is_complete():
    assert len(official.FILES) == 36 and official.ARCHIVES["gzip"][1].startswith("md5:")
    assert official.ARCHIVES["matlab"][1] is None  # no published hash: the reason for the checks below


def test_matlab_download_is_verified_extracted_and_loadable(server, tmp_path):
    archive, members, hashes, data = matlab_archive()
    server.files["matlab.zip"] = archive
    files = fetch(server, tmp_path, archive_hash=f"sha256:{sha256(archive)}", file_hashes=hashes)
    assert_extracted(files, members)
    assert (tmp_path / "matlab.zip").read_bytes() == archive
    assert listing(tmp_path) == ["emnist-mnist.mat", "matlab.zip"]  # no temporary file left
    np.testing.assert_array_equal(load(files[0]).train_images, data["train_images"])


def test_gzip_download_extracts_the_idx_files_and_mapping(server, tmp_path):
    data = ol.make_split("digits")
    members = ol.idx_members("digits", data)
    archive = ol.write_zip_bytes({f"gzip/{n}": b for n, b in members.items()})
    server.files["gzip.zip"] = archive
    md5 = hashlib.md5(archive).hexdigest()
    files = fetch(server, tmp_path, "digits", "gzip", archive_hash=f"md5:{md5}",
                  file_hashes={name: (sha256(b), len(b)) for name, b in members.items()})
    assert_extracted(files, members)
    assert (tmp_path / "gzip.zip").read_bytes() == archive
    ds = load(tmp_path, "digits")
    np.testing.assert_array_equal(ds.test_images, data["test_images"])
    assert ds.classes == tuple("0123456789")


def test_split_all_extracts_every_split(server, tmp_path):
    archive, members, hashes, _ = matlab_archive(tuple(official.SPLITS))
    server.files["matlab.zip"] = archive
    assert_extracted(fetch(server, tmp_path, "all", file_hashes=hashes), members)


def test_retry_after_a_truncated_archive_downloads_again_and_succeeds(server, tmp_path):
    # The matlab archive has no published hash: a truncated zip served as complete (status 200,
    # matching Content-Length) used to stay as matlab.zip and poison every retry.
    archive, members, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = archive[: len(archive) // 2]
    with pytest.raises(EmnistDataError, match="matlab.zip: not a zip archive"):
        fetch(server, tmp_path, file_hashes=hashes)
    assert listing(tmp_path) == []
    server.files["matlab.zip"] = archive
    assert_extracted(fetch(server, tmp_path, file_hashes=hashes), members)
    assert server.requests == ["matlab.zip", "matlab.zip"]


def test_retry_after_a_web_page_served_as_the_archive_succeeds(server, tmp_path):
    archive, members, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = b"<!DOCTYPE html><html><body>Service unavailable</body></html>"
    with pytest.raises(EmnistDataError, match="received a web page"):
        fetch(server, tmp_path, file_hashes=hashes)
    assert listing(tmp_path) == []
    server.files["matlab.zip"] = archive
    assert_extracted(fetch(server, tmp_path, file_hashes=hashes), members)


def test_member_checksum_mismatch_keeps_neither_member_nor_archive(server, tmp_path):
    archive, _, _, _ = matlab_archive()
    server.files["matlab.zip"] = archive
    with pytest.raises(EmnistDataError, match="emnist-mnist.mat: SHA-256 .* does not match"):
        fetch(server, tmp_path, file_hashes={"emnist-mnist.mat": ("f" * 64, 1)})
    assert listing(tmp_path) == []


def test_verified_archive_is_reused_without_downloading_again(server, tmp_path):
    archive, members, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = archive
    fetch(server, tmp_path, file_hashes=hashes)
    (tmp_path / "emnist-mnist.mat").unlink()
    assert_extracted(fetch(server, tmp_path, file_hashes=hashes), members)
    assert server.requests == ["matlab.zip"]


def test_an_archive_put_there_by_hand_is_checked_used_and_left_untouched(server, tmp_path):
    archive, members, hashes, _ = matlab_archive()
    (tmp_path / "matlab.zip").write_bytes(archive)
    assert_extracted(fetch(server, tmp_path, file_hashes=hashes), members)
    assert server.requests == [] and (tmp_path / "matlab.zip").read_bytes() == archive


def test_truncated_transfer_leaves_nothing(server, tmp_path):
    archive, _, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = archive
    server.cut["matlab.zip"] = len(archive) // 2
    with pytest.raises(EmnistDataError, match="matlab.zip: download failed"):
        fetch(server, tmp_path, archive_hash=f"sha256:{sha256(archive)}", file_hashes=hashes)
    assert listing(tmp_path) == []


def test_archive_checksum_mismatch_leaves_nothing(server, tmp_path):
    archive, _, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = archive
    with pytest.raises(EmnistDataError, match="matlab.zip: SHA256 .* does not match the published 000"):
        fetch(server, tmp_path, archive_hash="sha256:" + "0" * 64, file_hashes=hashes)
    assert listing(tmp_path) == []


def test_zip_slip_is_refused_before_anything_is_extracted(server, tmp_path):
    mat = ol.mat_bytes(ol.make_split("mnist"))
    server.files["matlab.zip"] = ol.write_zip_bytes({"matlab/emnist-mnist.mat": mat, "../../evil.txt": b"x"})
    dest = tmp_path / "dest"
    with pytest.raises(EmnistDataError, match="refusing archive entry '../../evil.txt'"):
        fetch(server, dest, file_hashes={"emnist-mnist.mat": (sha256(mat), len(mat))})
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert listing(tmp_path) == []  # not even the dest folder the download made


def test_http_error_is_one_clear_line(server, tmp_path):
    with pytest.raises(EmnistDataError, match="download failed") as info:
        fetch(server, tmp_path)
    assert "\n" not in str(info.value) and "404" in str(info.value)


def test_unknown_split_or_format():
    with pytest.raises(EmnistDataError, match="unknown split"):
        download("nope", "x")
    with pytest.raises(EmnistDataError, match="unknown archive format"):
        download("mnist", "x", "tar")


# ---- the command line ------------------------------------------------------------------------

@pytest.fixture
def official_is_local(server, monkeypatch):
    """Point the command line's official address and checksums at the local server's archive."""
    archive, members, hashes, _ = matlab_archive()
    server.files["matlab.zip"] = archive
    monkeypatch.setattr(official, "BASE_URL", server.url)
    for name, value in hashes.items():
        monkeypatch.setitem(official.FILES, name, value)
    return archive, members


def test_download_command_fetches_verifies_and_lists_the_files(official_is_local, tmp_path, capsys):
    archive, members = official_is_local
    assert main(["download", "--split", "mnist", "--dest", str(tmp_path / "emnist")]) == 0
    assert capsys.readouterr().out == f"verified {tmp_path / 'emnist' / 'emnist-mnist.mat'}\n"
    assert_extracted([tmp_path / "emnist" / "emnist-mnist.mat"], members)


def test_download_command_refuses_a_bad_archive_with_one_line_and_exit_2(official_is_local, server, tmp_path,
                                                                         capsys):
    server.files["matlab.zip"] = b"<html>maintenance</html>"
    assert main(["download", "--split", "mnist", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "web page" in err
    assert listing(tmp_path) == []
