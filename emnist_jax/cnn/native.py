"""Compiling one of the CNN's C++ extensions with g++ into a cache folder, once per source and machine.

Shared by :mod:`emnist_jax.cnn.fused` (no library beyond OpenMP) and :mod:`emnist_jax.cnn.onednn`.
The file's name carries a hash of the source, the compile command, JAX's version and the processor
(``-march=native``), so a changed source, JAX or machine builds anew; the library is written under a
temporary name and renamed, so a reader never sees half a file. ``$EMNIST_JAX_NATIVE_CACHE`` moves
the folder (default ``~/.cache/emnist_jax/native``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

import jax

FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w"]


class BuildError(RuntimeError):
    """The extension cannot be built here; the message says why in one line."""


def cache_folder() -> str:
    return os.environ.get("EMNIST_JAX_NATIVE_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "emnist_jax", "native"))


def _cpu() -> str:
    """The processor's model line: the extension is compiled for this machine (-march=native)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


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
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        raise BuildError(f"no C++ compiler (g++ or $CXX) to build {os.path.basename(source)}")
    with open(source, "rb") as f:
        text = f.read()
    includes = [jax.ffi.include_dir(), *include]
    key = hashlib.sha256(text + salt + f"{jax.__version__} {_jaxlib()} {compiler} {flags} {includes} {link} {_cpu()}"
                         .encode())
    path = os.path.join(folder, f"{name}-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=folder)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cache folder {folder} not writable: {e.strerror}") from None
    command = [compiler, *flags, *(f"-I{d}" for d in includes), source, *link, "-o", tmp]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:   # e.g. $CXX names no program
        os.unlink(tmp)
        raise BuildError(f"compiling {source} failed: {compiler}: {e.strerror}") from None
    if done.returncode != 0:
        os.unlink(tmp)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"compiling {source} failed: {last[:300]}")
    os.replace(tmp, path)
    return path
