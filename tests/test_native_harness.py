"""The fused kernels' C++ harness (tests/native/harness.cc): every kernel of fused_conv.cc against a
plain direct convolution, forward and gradients, built without JAX for the targets users have.

By default the suite builds three configurations, at -O1 to keep it quick: this machine's compiler
(``$CXX`` or g++) for AVX2 (``-march=x86-64-v3``; ``native`` off x86-64 or without AVX2), clang++ for
SSE4.2 (``-march=x86-64-v2``, on x86-64), and g++ for aarch64, run under qemu-user where the cross
tools are installed.
``EMNIST_JAX_TEST_NATIVE=all`` builds every one at -O2: g++ and clang++ for native, x86-64-v3 (AVX2)
and x86-64-v2 (SSE4.2), and g++ and clang++ for aarch64 under qemu. A configuration whose compiler or
emulator is missing is skipped with its reason.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "harness.cc")
AARCH64_ROOT = "/usr/aarch64-linux-gnu"
#: Seconds for one build (g++ -O2 takes ~12 s alone on the 2-core development machine) and one run.
BUILD_TIMEOUT_S = 240
RUN_TIMEOUT_S = 120


def _mode() -> str:
    value = os.environ.get("EMNIST_JAX_TEST_NATIVE") or "quick"
    if value not in ("quick", "all"):
        raise pytest.UsageError(f"EMNIST_JAX_TEST_NATIVE={value!r} is not quick or all")
    return value


def _host_compiler() -> str:
    return os.environ.get("CXX") or "g++"


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def configurations(mode: str) -> list[tuple[str, list[str], list[str], str]]:
    """(id, compiler command, target flags, runner prefix) of each build."""
    native = ["-mcpu=native"] if platform.machine().lower() in ("arm64", "aarch64") else ["-march=native"]
    qemu = ["qemu-aarch64", "-L", AARCH64_ROOT]
    if mode == "quick":
        host = ["-march=x86-64-v3"] if _x86() and _has_avx2() else native
        return [(f"{os.path.basename(_host_compiler())}-{host[0].split('=')[1]}", shlex.split(_host_compiler()), host, []),
                *([("clang++-x86-64-v2", ["clang++"], ["-march=x86-64-v2"], [])] if _x86() else []),
                ("aarch64-g++-qemu", ["aarch64-linux-gnu-g++"], [], qemu)]
    found = []
    for cxx in ("g++", "clang++"):
        found.append((f"{cxx}-native", [cxx], native, []))
        if _x86():
            found += [(f"{cxx}-x86-64-v3", [cxx], ["-march=x86-64-v3"], []),
                      (f"{cxx}-x86-64-v2", [cxx], ["-march=x86-64-v2"], [])]
    found += [("aarch64-g++-qemu", ["aarch64-linux-gnu-g++"], [], qemu),
              ("aarch64-clang++-qemu", ["clang++", "--target=aarch64-linux-gnu"], [], qemu)]
    return found


MODE = _mode()
CONFIGURATIONS = configurations(MODE)


def _missing(compiler: list[str], runner: list[str]) -> str | None:
    for tool in (compiler[0], *runner[:1]):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if runner and not os.path.isdir(AARCH64_ROOT):
        return f"no aarch64 C library under {AARCH64_ROOT} (apt-get install g++-aarch64-linux-gnu)"
    return None


def _build(folder: str, name: str, compiler: list[str], target: list[str], runner: list[str]) -> dict:
    missing = _missing(compiler, runner)
    if missing:
        return {"skip": missing}
    if "native" in " ".join(target) and not sys.platform.startswith(("linux", "darwin")):
        return {"skip": "native builds are checked on Linux and macOS only"}
    binary = os.path.join(folder, name)
    command = [*compiler, "-std=c++17", "-O2" if MODE == "all" else "-O1", "-Wall", "-Wextra", *target,
               "-pthread", HARNESS, "-o", binary]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"{' '.join(command)} took over {BUILD_TIMEOUT_S} s"}
    if done.returncode != 0:
        return {"error": f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"}
    return {"run": [*runner, binary]}


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> dict:
    """Every configuration built once per session, the builds side by side."""
    folder = str(tmp_path_factory.mktemp("native-harness"))
    with ThreadPoolExecutor(max_workers=max(1, min(len(CONFIGURATIONS), os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(_build, folder, name, compiler, target, runner)
                   for name, compiler, target, runner in CONFIGURATIONS}
        return {name: future.result() for name, future in futures.items()}


def _built(builds: dict, name: str) -> list[str]:
    build = builds[name]
    if "skip" in build:
        pytest.skip(build["skip"])
    assert "error" not in build, build.get("error")
    return build["run"]


@pytest.mark.parametrize("name", [c[0] for c in CONFIGURATIONS])
def test_every_kernel_computes_the_plain_convolution_and_its_gradients(builds, name):
    done = subprocess.run(_built(builds, name), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    cases = [line for line in lines if line.startswith(("ok", "FAIL"))]
    assert lines[-1] == f"passed: 0 of {len(cases)} cases failed"
    assert len(cases) >= 16 and all(line.startswith("ok") for line in cases)
    for form in ("direct", "winograd2", "winograd4"):
        assert any(line.split()[1] == form for line in cases), form
    # tied maxima were exercised, in the forms whose gradients are checked on them
    for form in ("direct", "winograd2"):
        ties = [int(m[1]) for line in cases if line.split()[1] == form for m in [re.search(r"(\d+) ties", line)]]
        assert max(ties) > 0, form


def test_the_timing_mode_times_every_layer_and_refuses_what_it_cannot_read(builds):
    run = _built(builds, CONFIGURATIONS[0][0])
    done = subprocess.run([*run, "--time", "2", "1"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == ["conv1", "conv2", "conv3", "all"]
    for bad in (["--time", "0"], ["--fast"]):
        done = subprocess.run([*run, *bad], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("harness: ")
