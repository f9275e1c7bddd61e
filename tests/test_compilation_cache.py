"""The persistent compilation cache: a second process with the same configuration compiles nothing
(on the CPU too, with the fused C++ kernels where they are the default), and the cache folder
follows the rules of the program's private folders."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from emnist_jax import compilation_cache
from fault_cases import as_neighbour, shared_folder

#: One training run on tiny random data in a fresh process; prints the cache's event counts.
RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from emnist_jax import compilation_cache
    from emnist_jax.cnn import TrainConfig, train_and_evaluate
    from emnist_jax.data import Dataset
    used = compilation_cache.enable()
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = lambda n: rng.integers(0, 62, n).astype(np.int32)
    data = Dataset(images(48), labels(48), images(16), labels(16), tuple(str(i) for i in range(62)), "byclass",
                   "random", True, tuple(range(62)))
    result = train_and_evaluate(data, TrainConfig(epochs=1, batch_size=16, eval_batch_size=32), progress=False)
    print(json.dumps({"folder": used, "conv_impl": result.config.conv_impl, **compilation_cache.EVENTS}))
""")


def run(cache: str, **env) -> dict:
    environment = {**os.environ, "EMNIST_JAX_COMPILATION_CACHE": cache, **env}
    done = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_with_the_same_configuration_compiles_nothing(tmp_path):
    cache = str(tmp_path / "cache")
    first, second = run(cache), run(cache)
    assert first["folder"] == second["folder"] == cache
    assert first.get("cache_misses", 0) > 0 and first.get("cache_hits", 0) == 0
    assert second.get("cache_misses", 0) == 0 and second.get("cache_hits", 0) == first["cache_misses"]
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


@pytest.mark.parametrize("value", ["0", "off", "OFF"])
def test_the_variable_turns_the_cache_off(monkeypatch, value):
    monkeypatch.setenv("EMNIST_JAX_COMPILATION_CACHE", value)
    assert compilation_cache.folder() is None and compilation_cache.enable() is None


def test_an_empty_variable_means_the_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("EMNIST_JAX_COMPILATION_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation_cache.folder() == str(tmp_path / ".cache" / "emnist_jax" / "jax")


def test_a_cache_another_user_could_write_is_not_used(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path / "shared")
    theirs = shared / "theirs"
    as_neighbour('mkdir -m 755 "$1"', str(theirs))
    for folder, why in ((shared, "writable by others"), (theirs, "owned by another user")):
        with pytest.warns(compilation_cache.CompilationCacheWarning, match=f"compilation cache {folder}: .*{why}"):
            assert compilation_cache.enable(str(folder)) is None


@pytest.mark.parametrize("flag, expected", [(True, "folder"), (False, "None")])
def test_every_command_line_turns_the_cache_on_unless_told_not_to(tmp_path, flag, expected):
    code = ("import jax\nfrom emnist_jax import devices\n"
            f"devices.setup(None, compilation_cache={flag})\nprint(jax.config.jax_compilation_cache_dir)")
    env = {**os.environ, "EMNIST_JAX_COMPILATION_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (str(tmp_path / "cache") if expected == "folder" else "None")
