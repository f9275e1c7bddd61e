"""Compiling one of the CNN's C++ extensions into a private cache folder, once per source and machine,
and loading only the library that was built.

Shared by :mod:`emnist_jax.cnn.fused` (no library) and :mod:`emnist_jax.cnn.onednn`. The file's name
carries a hash of the source, the compile command, the compiler's and JAX's versions and the
processor's model and instruction sets, so a changed source, compiler, target, JAX or machine builds
anew. The library is written under a temporary name and renamed, so a reader never sees half a
file, and its SHA-256 is recorded beside it: a library is loaded only when its digest matches (a
damaged or replaced file is rebuilt, never loaded), checked on a file opened without following links.

The cache folder, ``$EMNIST_JAX_NATIVE_CACHE`` (default ``~/.cache/emnist_jax/native``), is
created private (0700); one that another user owns or that others may write is not trusted: the
build goes to the default folder, or to a temporary private one, with a one-line warning.

``$EMNIST_JAX_NATIVE_MARCH`` sets the target (default ``native``: this machine's processor), e.g.
``x86-64-v3`` (AVX2 + FMA) or ``x86-64-v2`` (SSE4.2); ``$CXX`` the compiler (default ``g++``).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from typing import Callable

import jax

from emnist_jax.private import UntrustedPath, create_exclusive, open_trusted, private_folder, read_trusted

#: Seconds for the compiler to say its version, and to build one extension (g++ takes ~12 s here).
VERSION_TIMEOUT_S = 10
COMPILE_TIMEOUT_S = 180
_MARCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class BuildError(RuntimeError):
    """The extension cannot be built here; the message says why in one line."""


class NativeWarning(UserWarning):
    """A native-code cache or build could not be used as asked; the message is one line."""


def default_cache_folder() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "emnist_jax", "native")


def cache_folder() -> str:
    """Where the compiled extensions are kept (``$EMNIST_JAX_NATIVE_CACHE``; empty means the default)."""
    return os.environ.get("EMNIST_JAX_NATIVE_CACHE") or default_cache_folder()


def march() -> str:
    """The target processor, ``$EMNIST_JAX_NATIVE_MARCH`` (default ``native``); BuildError if malformed."""
    value = os.environ.get("EMNIST_JAX_NATIVE_MARCH") or "native"
    if not _MARCH.match(value):
        raise BuildError(f"EMNIST_JAX_NATIVE_MARCH={value!r} is not a target name such as native or x86-64-v3")
    return value


def compiler() -> list[str]:
    """The C++ compiler's command: ``$CXX`` (it may carry arguments) or g++; BuildError if there is none."""
    text = os.environ.get("CXX", "")
    try:
        command = shlex.split(text)
    except ValueError as error:
        raise BuildError(f"CXX={text!r} cannot be read as a command: {error}") from None
    if not command:
        found = shutil.which("g++")
        if found is None:
            raise BuildError("no C++ compiler: install g++ or set CXX")
        command = [found]
    return command


def target_flags(target: str) -> list[str]:
    """``-march``/``-mcpu`` for ``target`` on this processor: Arm compilers take ``-mcpu=native``."""
    if target == "native" and platform.machine().lower() in ("arm64", "aarch64"):
        return ["-mcpu=native"]
    return [f"-march={target}"]


def flags(target: str, openmp: bool = False, threads: bool = False) -> list[str]:
    """The compile command's flags, per OS: ``-fopenmp`` only where the source uses OpenMP."""
    shared = ["-dynamiclib"] if sys.platform == "darwin" else ["-shared"]
    # Warnings on, for our sources only: the headers of XLA and oneDNN come in as system headers.
    return ["-O3", *target_flags(target), "-std=c++17", *shared, "-fPIC", "-Wall", "-Wextra", "-Wno-psabi",
            *(["-fopenmp"] if openmp else []), *(["-pthread"] if threads and sys.platform != "darwin" else [])]


def _cpu() -> str:
    """The processor's model and instruction sets, on Linux and macOS: a VM may hide instruction sets
    of a model it names, so both go into the key."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        pass
    if sys.platform == "darwin":
        done = _run(["sysctl", "machdep.cpu", "hw.optional"], VERSION_TIMEOUT_S)
        if done is not None and done[0] == 0:
            return done[1]
    return f"{platform.machine()} {platform.processor()}"


def _run(command: list[str], timeout: float, stdin: str = "") -> tuple[int, str, str] | None:
    """(exit status, stdout, stderr) of ``command`` in a process group of its own, the whole group
    killed when it outlasts ``timeout`` (then None): a compiler's children must not outlive it."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(stdin, timeout=timeout)
    except BaseException:   # the timeout, or Ctrl-C: never leave the compiler running
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.communicate()
        if sys.exc_info()[0] is subprocess.TimeoutExpired:
            return None
        raise
    return process.returncode, out, err


def _version(command: list[str]) -> str:
    try:
        done = _run([*command, "--version"], VERSION_TIMEOUT_S)
    except OSError as error:   # e.g. $CXX names no program
        raise BuildError(f"cannot run the C++ compiler {command[0]}: {error.strerror}") from None
    if done is None:
        raise BuildError(f"the C++ compiler {command[0]} did not answer --version within {VERSION_TIMEOUT_S} s")
    status, out, err = done
    if status != 0:
        raise BuildError(f"the C++ compiler {command[0]} --version {_failure(status, err)}")
    return out


@functools.lru_cache(maxsize=8)
def predefined_macros(command: tuple[str, ...], target: str) -> frozenset[str]:
    """The macros the compiler defines for ``target`` (``__AVX512F__``, ``__ARM_NEON``, ...): which
    instruction sets the build will use, known without building."""
    try:
        done = _run([*command, *target_flags(target), "-dM", "-E", "-x", "c++", "-"], VERSION_TIMEOUT_S)
    except OSError as error:
        raise BuildError(f"cannot run the C++ compiler {command[0]}: {error.strerror}") from None
    if done is None:
        raise BuildError(f"the C++ compiler {command[0]} did not answer within {VERSION_TIMEOUT_S} s")
    if done[0] != 0:
        raise BuildError(f"the C++ compiler {command[0]} cannot compile for {target_flags(target)[0]}: "
                         f"{_failure(done[0], done[2])}")
    return frozenset(line.split()[1] for line in done[1].splitlines() if line.startswith("#define "))


def _failure(status: int, stderr: str) -> str:
    return f"exited with status {status}: {_first_error(stderr) if stderr.strip() else 'no output'}"


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


def _trusted_folder(folder: str) -> str:
    """``folder`` created private, or, where it cannot be trusted, the default folder or a new
    temporary private one, with a one-line warning (a library there could be anyone's)."""
    try:
        return str(private_folder(folder))
    except UntrustedPath as error:
        problem = f"the native-code cache {error}"
    except OSError as error:
        problem = f"the native-code cache {folder} cannot be created: {error.strerror or error}"
    fallback = default_cache_folder()
    try:
        if os.path.abspath(fallback) != os.path.abspath(folder):
            where = str(private_folder(fallback))
        else:
            raise OSError
    except (UntrustedPath, OSError):
        where = tempfile.mkdtemp(prefix="emnist_jax-native-")   # 0700; rebuilt by every process
        atexit.register(shutil.rmtree, where, ignore_errors=True)  # a loaded library outlives its file
    warnings.warn(f"{problem}; building in {where} instead", NativeWarning, stacklevel=3)
    return where


def _digest(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _recorded_digest(record: str) -> str | None:
    try:
        value = json.loads(read_trusted(record)).get("sha256")
    except (OSError, UntrustedPath, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _record(path: str) -> str:
    """Where the digest of the library ``path`` is recorded."""
    return path[:-len(".so")] + ".json" if path.endswith(".so") else path + ".json"


def verified_open(path: str) -> int | None:
    """An open descriptor of the library ``path`` if it is our own file and its digest is the one
    recorded when it was built; None where it must be built (anew)."""
    try:
        fd = open_trusted(path)
    except (OSError, UntrustedPath):
        return None
    expected = _recorded_digest(_record(path))
    if expected is not None and _digest(fd) == expected:
        return fd
    os.close(fd)
    return None


def _remove_dead_temporaries(folder: str, name: str) -> None:
    """Our temporary files whose build was killed (``.<name>-<key>.<pid>.tmp*``, that pid gone)."""
    pattern = re.compile(rf"^\.{re.escape(name)}-[0-9a-f]+\.(\d+)\.tmp")
    for entry in os.listdir(folder):
        match = pattern.match(entry)
        if match and not _alive(int(match[1])):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build(source: str, name: str, folder: str, flags: list[str], include: list[str], link: list[str],
          salt: bytes = b"") -> str:
    """Path of the compiled ``source`` whose digest matches its record, compiling it into ``folder``
    first where no such build of this source, command and machine is there. ``salt``: more bytes
    that should start a new build."""
    command = compiler()
    folder = _trusted_folder(folder)
    with open(source, "rb") as f:
        text = f.read()
    includes = [jax.ffi.include_dir(), *include]
    try:
        version = _version(command)
    except BuildError as error:
        raise BuildError(f"compiling {source} failed: {error}") from None
    key = hashlib.sha256(text + salt + f"{jax.__version__} {_jaxlib()} {command} {version} {flags} "
                                       f"{includes} {link} {_cpu()}".encode()).hexdigest()[:16]
    path = os.path.join(folder, f"{name}-{key}.so")
    record = _record(path)
    fd = verified_open(path)
    if fd is not None:
        os.close(fd)
        return path
    _remove_dead_temporaries(folder, name)
    tmp = os.path.join(folder, f".{name}-{key}.{os.getpid()}.tmp.so")
    tmp_record = os.path.join(folder, f".{name}-{key}.{os.getpid()}.tmp.json")
    print(f"building {os.path.basename(source)} with {os.path.basename(command[0])} "
          f"({' '.join(f for f in flags if f.startswith(('-march', '-mcpu')))}; once, about 10-60 s) ...",
          file=sys.stderr, flush=True)
    try:
        done = _run([*command, *flags, *(f for d in includes for f in ("-isystem", d)), source, *link, "-o", tmp], COMPILE_TIMEOUT_S)
        if done is None:
            raise BuildError(f"compiling {source} failed: {command[0]} took over "
                             f"{COMPILE_TIMEOUT_S} s and was stopped")
        status, _, err = done
        if status != 0:
            raise BuildError(f"compiling {source} failed: {command[0]} {_failure(status, err)}")
        os.chmod(tmp, 0o700)   # the compiler's file follows the umask, which may let others write it
        fd = open_trusted(tmp)
        try:
            digest = _digest(fd)
        finally:
            os.close(fd)
        record_fd = create_exclusive(tmp_record)
        with os.fdopen(record_fd, "w") as f:
            json.dump({"sha256": digest, "source": os.path.basename(source), "flags": flags}, f)
        os.replace(tmp_record, record)
        os.replace(tmp, path)
        return path
    except (OSError, UntrustedPath) as error:
        raise BuildError(f"cannot write the build of {os.path.basename(source)} in {folder}: "
                         f"{getattr(error, 'strerror', None) or error}") from None
    finally:
        for leftover in (tmp, tmp_record):
            if os.path.lexists(leftover):
                os.unlink(leftover)


def load(build: Callable[[], str], targets: dict[str, str], unavailable: type[Exception], what: str) -> str | None:
    """Build the extension, load it (only if its digest is the recorded one) and register its FFI
    targets (CPU); None on success, else why not in one line. ``unavailable``: the error ``build``
    raises to say the extension cannot be had."""
    try:
        path = build()
    except unavailable as e:
        return str(e)
    except Exception as e:  # any surprise in building: fall back, never break training
        return f"building {what} failed: {type(e).__name__}: {e}"
    # Verified, then loaded by name: the folder is this user's own and no one else can write it, so
    # the file cannot be swapped in between (/proc/self/fd/N would not do: the loader takes a name it
    # has loaded before for the same library).
    fd = verified_open(path)
    if fd is None:
        return f"loading {what} from {path} refused: it is not the library that was built there"
    os.close(fd)
    try:
        library = ctypes.CDLL(path)
        capsules = {target: jax.ffi.pycapsule(getattr(library, symbol)) for target, symbol in targets.items()}
        for target, capsule in capsules.items():
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except Exception as e:   # not the library we build (a missing symbol), or one that cannot load here
        return f"loading {what} from {path} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


class Extension:
    """One C++ extension, built, loaded and registered on first use, once per process: ``build`` gives
    the library's path or raises ``unavailable`` (the extension's own error, one line)."""

    def __init__(self, build: Callable[[], str], targets: dict[str, str], unavailable: type[Exception], what: str):
        self._args = (build, targets, unavailable, what)
        self.unavailable = unavailable
        self._loaded = False
        self._reason: str | None = None

    def reason(self) -> str | None:
        """Why the extension cannot run here, in one line; None where it can (loading it first)."""
        if not self._loaded:
            self._reason = load(*self._args)
            self._loaded = True
        return self._reason

    def available(self) -> bool:
        return self.reason() is None

    def interface(self) -> tuple[Callable[[], bool], Callable[[], str | None], Callable[[], None]]:
        """The module-level ``available``, ``unavailable_reason`` and ``require`` of the extension's
        module (each looks :meth:`reason` up when called, so a test may replace it)."""
        return (lambda: self.available()), (lambda: self.reason()), (lambda: self.require())

    def require(self) -> None:
        """Raise the extension's own error, saying why, where it cannot run."""
        reason = self.reason()
        if reason is not None:
            raise self.unavailable(reason)
