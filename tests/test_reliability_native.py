"""Faults at the edges of the C++ extensions' build and load (emnist_jax.cnn.native), tried as a
careless user and as a neighbour on a shared machine would.

One table per concern: the fault, the expected outcome (the library loaded or not, the exception,
the warning), a fragment of the expected message, and what must hold afterwards. The extensions
here are tiny sources compiled in a fraction of a second; the planted "library of another user" has
a constructor that writes a file, so loading it would show.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import time
import warnings
from pathlib import Path

import pytest

from emnist_jax.cnn import config as config_module
from emnist_jax.cnn import fused, native
from emnist_jax.cnn.config import TrainConfig
from fault_cases import as_neighbour, shared_folder, snapshot, unchanged_except

pytestmark = pytest.mark.skipif(native.shutil.which("g++") is None, reason="these cases compile with g++")

SOURCE = 'extern "C" int probe_answer() { return 42; }\n'
PLANTED = """#include <cstdio>
#include <cstdlib>
__attribute__((constructor)) static void planted() {
  if (const char* p = std::getenv("EMNIST_JAX_PLANTED_MARKER")) { std::FILE* f = std::fopen(p, "w"); std::fclose(f); }
}
extern "C" int probe_answer() { return 666; }
"""


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """A private HOME (the default cache's parent), the probe's source, and where a planted library
    would leave its mark."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("EMNIST_JAX_NATIVE_CACHE", "EMNIST_JAX_NATIVE_MARCH", "CXX"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "probe.cc"
    source.write_text(SOURCE)
    marker = tmp_path / "planted-library-ran"
    monkeypatch.setenv("EMNIST_JAX_PLANTED_MARKER", str(marker))
    return {"home": home, "source": str(source), "marker": marker, "tmp": tmp_path}


def build(env: dict, folder: str | os.PathLike | None = None) -> str:
    return native.build(env["source"], "probe", str(folder or native.cache_folder()), native.flags("native"), [], [])


def answer(path: str) -> int | str:
    """What the library at ``path`` answers, loaded as ``native.load`` loads it, or the refusal."""
    fd = native.verified_open(path)
    if fd is None:
        return "refused"
    os.close(fd)
    return ctypes.CDLL(path).probe_answer()


def planted_library(env: dict) -> Path:
    """A library with a constructor, built by root into a folder the neighbour can read."""
    drop = shared_folder(env["tmp"] / "drop")
    source = drop / "planted.cc"
    source.write_text(PLANTED)
    out = drop / "planted.so"
    assert native._run(["g++", "-shared", "-fPIC", str(source), "-o", str(out)], 60)[0] == 0
    os.chmod(out, 0o644)
    return out


def plant(env: dict, folder: Path, name: str) -> None:
    """The neighbour puts the planted library under ``name`` in ``folder``, with a record whose
    digest matches it (anyone can compute one)."""
    lib = planted_library(env)
    digest = native.hashlib.sha256(lib.read_bytes()).hexdigest()
    record = json.dumps({"sha256": digest})
    stem = name[:-len(".so")]
    as_neighbour('cp "$1" "$2/$3.so" && printf %s "$4" > "$2/$3.json" && chmod 644 "$2/$3.so" "$2/$3.json"',
                 str(lib), str(folder), stem, record)


def key_name(env: dict) -> str:
    """The library's file name this source, compiler and machine build (what an attacker can compute)."""
    return os.path.basename(build(env, env["tmp"] / "learn"))


# ---- security: nothing another user could have written is loaded -------------------------------

def shared_cache(env):
    return shared_folder(env["tmp"] / "shared-cache"), "writable by others"


def neighbours_cache(env):
    folder = shared_folder(env["tmp"] / "neighbourhood") / "theirs"
    as_neighbour('mkdir -m 755 "$1"', str(folder))
    return folder, "owned by another user"


@pytest.mark.parametrize("make", [shared_cache, neighbours_cache], ids=["world-writable cache", "another user's cache"])
def test_a_library_planted_in_an_untrusted_cache_is_never_loaded(env, monkeypatch, make):
    name = key_name(env)
    folder, why = make(env)
    plant(env, folder, name)
    monkeypatch.setenv("EMNIST_JAX_NATIVE_CACHE", str(folder))
    before = snapshot(folder)
    with pytest.warns(native.NativeWarning, match=f"native-code cache {folder}: .*{why}.*building in "):
        path = build(env)
    assert Path(path).parent == env["home"] / ".cache" / "emnist_jax" / "native"
    assert answer(path) == 42 and not env["marker"].exists()
    assert unchanged_except(before, snapshot(folder)) == []


def test_the_default_cache_and_its_new_parents_are_private_whatever_the_umask(env):
    old = os.umask(0)
    try:
        path = build(env)
    finally:
        os.umask(old)
    folders = [env["home"] / ".cache", env["home"] / ".cache" / "emnist_jax", Path(path).parent]
    assert [stat.S_IMODE(f.stat().st_mode) for f in folders] == [0o700] * 3


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def replaced(path: Path) -> None:
    path.write_bytes(b"\x7fELF not the library that was built")


def linked(path: Path) -> None:
    other = path.with_name("elsewhere.so")
    os.replace(path, other)
    path.symlink_to(other)


def record_lost(path: Path) -> None:
    path.with_suffix(".json").unlink()


def record_garbled(path: Path) -> None:
    path.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize("damage", [truncated, replaced, linked, record_lost, record_garbled])
def test_a_damaged_or_replaced_library_is_rebuilt_never_loaded(env, damage):
    path = Path(build(env))
    damage(path)
    assert answer(str(path)) == "refused"
    assert build(env) == str(path)
    assert answer(str(path)) == 42 and not path.is_symlink()


# ---- the compiler: bounded, named, and cleaned up after --------------------------------------

def script(env: dict, body: str) -> str:
    path = env["tmp"] / "cxx"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("body, fragment", [
    ("exit 1", r"compiling .*probe.cc failed: .*cxx --version exited with status 1: no output"),
    ("echo 'fatal error: broken' >&2; exit 3", r"exited with status 3: fatal error: broken"),
    ('[ "$1" = --version ] && { echo 1; exit 0; }; echo "probe.cc:1:1: error: nope" >&2; exit 1',
     r"compiling .*probe.cc failed: .*cxx exited with status 1: probe.cc:1:1: error: nope"),
], ids=["fails at once", "says why", "fails to compile"])
def test_a_failing_compiler_is_named_with_its_status_and_leaves_nothing(env, monkeypatch, body, fragment):
    monkeypatch.setenv("CXX", script(env, body))
    folder = env["tmp"] / "cache"
    with pytest.raises(native.BuildError, match=fragment):
        build(env, folder)
    assert not folder.exists() or list(folder.iterdir()) == []


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a killed child whose parent is gone may stay a zombie until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_a_hanging_compiler_is_stopped_with_its_children(env, monkeypatch):
    children = env["tmp"] / "children"
    monkeypatch.setenv("CXX", script(env, f'[ "$1" = --version ] && {{ echo 1; exit 0; }}\n'
                                         f'sleep 300 & echo $! > {children}\nwait'))
    monkeypatch.setattr(native, "COMPILE_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(native.BuildError, match=r"took over 1 s and was stopped"):
        build(env, env["tmp"] / "cache")
    assert time.monotonic() - start < 30
    pid = int(children.read_text())
    time.sleep(0.2)
    assert not running(pid)
    monkeypatch.setenv("CXX", script(env, "sleep 300"))
    monkeypatch.setattr(native, "VERSION_TIMEOUT_S", 1)
    with pytest.raises(native.BuildError, match=r"did not answer --version within 1 s"):
        build(env, env["tmp"] / "cache")


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(env):
    path = Path(build(env))
    stem = path.name[:-len(".so")]
    dead = path.with_name(f".{stem}.999999999.tmp.so")
    dead.write_bytes(b"half a library")
    path.unlink()
    build(env)
    assert not dead.exists() and path.exists()


# ---- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, outcome", [
    ("EMNIST_JAX_NATIVE_CACHE", "", "default folder"),
    ("EMNIST_JAX_NATIVE_MARCH", "", "native"),
    ("EMNIST_JAX_NATIVE_MARCH", "-O0 -fplugin=x", "EMNIST_JAX_NATIVE_MARCH='-O0 -fplugin=x' is not a target name"),
    ("EMNIST_JAX_NATIVE_MARCH", "no-such-cpu", "cannot compile for -march=no-such-cpu"),
    ("CXX", "'unbalanced", "CXX=\"'unbalanced\" cannot be read as a command"),
])
def test_each_setting_is_validated_with_one_line_naming_it(env, monkeypatch, name, value, outcome):
    monkeypatch.setenv(name, value)
    native.predefined_macros.cache_clear()
    if outcome == "default folder":
        assert native.cache_folder() == native.default_cache_folder()
    elif outcome == "native":
        assert native.march() == "native"
    else:
        with pytest.raises(native.BuildError, match=native.re.escape(outcome)) as error:
            native.predefined_macros(tuple(native.compiler()), native.march())
        assert "\n" not in str(error.value)


def test_a_library_without_the_expected_symbols_falls_back_with_one_line(env):
    path = build(env)
    reason = native.load(lambda: path, {"emnist_jax_probe": "no_such_symbol"}, native.BuildError, "the probe")
    assert reason.startswith(f"loading the probe from {path} failed: AttributeError") and "\n" not in reason


# ---- the default: never the fused kernels where they were not measured fast ----------------------

def test_auto_takes_the_fused_kernels_only_for_a_target_they_were_measured_fast_on(env, monkeypatch):
    monkeypatch.setenv("EMNIST_JAX_NATIVE_MARCH", "x86-64-v2")
    native.predefined_macros.cache_clear()
    if "__x86_64__" not in native.predefined_macros(tuple(native.compiler()), "x86-64-v2"):
        pytest.skip("an x86-64 target")
    monkeypatch.setattr(fused.EXTENSION, "reason", lambda: pytest.fail("an unmeasured target must not be built by default"))
    assert "has no AVX-512" in fused.not_default_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a target choice is not a loss: no warning
        assert TrainConfig().resolved("cpu").conv_impl != "fused"


def test_where_the_fused_kernels_cannot_be_built_the_default_says_so_once(monkeypatch):
    monkeypatch.setattr(config_module, "fused_not_default_reason", lambda: "no C++ compiler: install g++ or set CXX")
    monkeypatch.setattr(config_module, "onednn_available", lambda: False)
    monkeypatch.setattr(config_module, "_SAID", set())
    with pytest.warns(RuntimeWarning) as said:
        TrainConfig().resolved("cpu")
        TrainConfig(seed=1).resolved("cpu")
    assert len(said) == 1
    assert str(said[0].message) == ("the fused CPU kernels cannot be used (no C++ compiler: install g++ or set CXX); "
                                    "the CNN trains with the slices form instead, about 2-3x slower on a CPU where "
                                    "they build (install g++, or set CXX)")
