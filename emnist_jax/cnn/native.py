"""Compiling one of the CNN's C++ extensions with g++ into a cache folder, once per source and machine.

Shared by :mod:`emnist_jax.cnn.fused` (no library) and :mod:`emnist_jax.cnn.onednn`. The file's name
carries a hash of the source, the compile command, the compiler's and JAX's versions and the
processor's model and instruction sets (``-march=native``), so a changed source, compiler, JAX or
machine builds anew; the library is written under a temporary name and renamed, so a reader never
sees half a file. ``$EMNIST_JAX_NATIVE_CACHE`` moves the folder (default ``~/.cache/emnist_jax/native``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Callable

import jax

FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w"]


class BuildError(RuntimeError):
    """The extension cannot be built here; the message says why in one line."""


def cache_folder() -> str:
    """Where the compiled extensions are kept."""
    return os.environ.get("EMNIST_JAX_NATIVE_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "emnist_jax", "native"))


def _cpu() -> str:
    """The processor's model and instruction-set lines: the extension is compiled for this machine
    (-march=native), and a VM may hide instruction sets of a model it names."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        return ""


def _version(compiler: list[str]) -> str:
    try:
        return subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its last line is mostly a caret or "compilation terminated")."""
    lines = stderr.strip().splitlines() or ["no output"]
    return next((line for line in lines if "error" in line), lines[-1]).strip()[:300]


def _jaxlib() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return "?"


def build(source: str, name: str, folder: str, flags: list[str], include: list[str], link: list[str],
          salt: bytes = b"") -> str:
    """Path of the compiled ``source``, compiling it into ``folder`` first where no build of this
    source, command and machine is there. ``salt``: more bytes that should start a new build."""
    compiler = shlex.split(os.environ.get("CXX", "")) or [c for c in [shutil.which("g++")] if c]
    if not compiler:
        raise BuildError(f"no C++ compiler (g++ or $CXX) to build {os.path.basename(source)}")
    with open(source, "rb") as f:
        text = f.read()
    includes = [jax.ffi.include_dir(), *include]
    key = hashlib.sha256(text + salt + f"{jax.__version__} {_jaxlib()} {compiler} {_version(compiler)} {flags} "
                                       f"{includes} {link} {_cpu()}".encode())
    path = os.path.join(folder, f"{name}-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=folder)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cache folder {folder} not writable: {e.strerror}") from None
    command = [*compiler, *flags, *(f"-I{d}" for d in includes), source, *link, "-o", tmp]
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except OSError as e:   # e.g. $CXX names no program
            raise BuildError(f"compiling {source} failed: {compiler[0]}: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise BuildError(f"compiling {source} failed: {compiler[0]} took over 600 s") from None
        if done.returncode != 0:
            raise BuildError(f"compiling {source} failed: {_first_error(done.stderr)}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(build: Callable[[], str], targets: dict[str, str], unavailable: type[Exception], what: str) -> str | None:
    """Build the extension, load it and register its FFI targets (CPU); None on success, else why
    not in one line. ``unavailable``: the error ``build`` raises to say the extension cannot be had."""
    try:
        path = build()
    except unavailable as e:
        return str(e)
    except Exception as e:  # any surprise in building: fall back, never break training
        return f"building {what} failed: {type(e).__name__}: {e}"
    try:
        library = ctypes.CDLL(path)
    except OSError as e:
        return f"loading {path} failed: {e}"
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return None
