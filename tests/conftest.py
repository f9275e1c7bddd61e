import pytest

import official_layout as ol

from emnist_jax.data import Dataset, default_file, load


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty array cache of its own, never the user's, and no compilation cache."""
    monkeypatch.setenv("EMNIST_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    # The command lines turn JAX's persistent compilation cache on; tests compile afresh (and never
    # write the user's ~/.cache), except those of the cache itself, which name their own folder.
    monkeypatch.setenv("EMNIST_JAX_COMPILATION_CACHE", "0")


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory) -> Dataset:
    """The real embedded default (60,000 + 12,000 synthetic images), made once per session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMNIST_JAX_CACHE", str(tmp_path_factory.mktemp("default-cache")))
        return load("default")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Dataset:
    """A small synthetic byclass set (1,240 + 620 images) read through the .mat loader."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMNIST_JAX_CACHE", str(tmp_path_factory.mktemp("tiny-cache")))
        return load(default_file(seed=1, size=(1240, 620)))


@pytest.fixture(scope="module")
def module_server():
    """A local HTTP server on 127.0.0.1 serving official-layout archives (one per test module)."""
    s = ol.Server()
    yield s
    s.close()


@pytest.fixture
def server(module_server):
    module_server.reset()
    return module_server
