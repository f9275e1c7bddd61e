"""Shared data and sizes for the asv benchmarks.

Data come from the embedded default (generated once into ``$EMNIST_JAX_CACHE``, outside any
timing, by the ``setup_cache`` of each benchmark file). Sizes keep ``asv run --quick`` of the
whole suite under 10 minutes on 2 cores.
"""

from __future__ import annotations

import numpy as np

#: rows used by the MI and logistic-regression benchmarks
N_ROWS = 10_000
SEED = 0


def backend() -> str:
    """The JAX backend the results were measured on (cpu/gpu/tpu), recorded as a parameter."""
    import jax

    return jax.default_backend()


def default_dataset():
    from emnist_jax.data import load

    return load("default")


def study_rows(n: int = N_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The first n training images in the files' pixel order, and labels, as the study used them."""
    from emnist_jax.data import file_rows

    ds = default_dataset()
    return file_rows(ds.train_images[:n]), ds.train_labels[:n].astype(np.int64)


def pca_features(n: int = N_ROWS, components: int = 29, test_size: float = 0.3):
    """Standardised PCA scores of the study split: the setting of the study's logistic regression."""
    from emnist_jax.classic.protocol import study_split
    from emnist_jax.classic.pca import standardized_pca

    X, y = study_rows(n)
    X_train, X_test, y_train, y_test = study_split(X, y, test_size, SEED)
    train, test = standardized_pca(X_train, X_test, components, SEED)
    return train, y_train, test, y_test
