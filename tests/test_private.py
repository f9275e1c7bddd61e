"""Private folders and trusted files (emnist_jax.private), tried as a neighbour on a shared machine would."""

from __future__ import annotations

import os
import stat

import pytest

from emnist_jax.private import (UntrustedPath, check_folder, create_exclusive, open_lock, private_folder,
                                read_trusted)
from fault_cases import as_neighbour, shared_folder


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_folder_is_0700_with_its_new_parents_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        made = private_folder(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    assert made == tmp_path / "a" / "b" / "c"


def test_private_folder_leaves_existing_parents_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    private_folder(tmp_path / "new")
    assert mode(tmp_path) == 0o755 and mode(tmp_path / "new") == 0o700


@pytest.mark.parametrize("bits, word", [(0o770, "its group"), (0o777, "others"), (0o1777, "others")])
def test_a_folder_others_may_write_is_not_trusted(tmp_path, bits, word):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, bits)
    with pytest.raises(UntrustedPath, match=f"writable by {word} .*not trusted"):
        private_folder(folder)


def test_a_link_is_not_followed(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UntrustedPath, match="symbolic link"):
        check_folder(tmp_path / "link")
    (tmp_path / "real" / "f").write_bytes(b"x")
    (tmp_path / "flink").symlink_to(tmp_path / "real" / "f")
    with pytest.raises(UntrustedPath, match="symbolic link"):
        read_trusted(tmp_path / "flink")
    with pytest.raises(UntrustedPath, match="symbolic link"):
        open_lock(tmp_path / "flink")
    with pytest.raises(FileExistsError):
        create_exclusive(tmp_path / "flink")
    assert (tmp_path / "real" / "f").read_bytes() == b"x"


def test_a_group_writable_file_is_not_read(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    os.chmod(tmp_path / "f", 0o620)
    with pytest.raises(UntrustedPath, match="writable by its group"):
        read_trusted(tmp_path / "f")


def test_a_folder_and_a_file_of_another_user_are_not_trusted(tmp_path):
    shared = shared_folder(tmp_path / "shared")
    as_neighbour('mkdir -m 700 "$1/theirs" && echo planted > "$1/file" && chmod 644 "$1/file"', str(shared))
    with pytest.raises(UntrustedPath, match=r"owned by another user \(uid 65534\)"):
        private_folder(shared / "theirs")
    with pytest.raises(UntrustedPath, match="owned by another user"):
        read_trusted(shared / "file")
    with pytest.raises(UntrustedPath, match="owned by another user"):
        open_lock(shared / "file")
    with pytest.raises(UntrustedPath, match="writable by others"):
        private_folder(shared)


def test_lock_file_is_created_private(tmp_path):
    old = os.umask(0)
    try:
        with open_lock(tmp_path / "lock") as f:
            f.write("1")
    finally:
        os.umask(old)
    assert mode(tmp_path / "lock") == 0o600
