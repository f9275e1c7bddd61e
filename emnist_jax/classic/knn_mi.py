"""scikit-learn's ``mutual_info_classif`` as the study called it (k-NN estimator, 3 neighbours), in less memory.

For non-negative pixels (the study's case) the k-NN call is sklearn's own preparation done in
place (:func:`_in_place`): one float64 copy of X, scaled, its noise drawn ``NOISE_ROWS`` rows at
a time from the same stream, then sklearn's per-pixel estimator. Bit for bit
``mutual_info_classif`` (tests/test_baselines.py); at most two float64 copies of X at a time (the
scaling's standard deviation makes one) where sklearn's holds four (1.2 GB at the study's
50,000 x 784). The per-pixel estimator is scikit-learn's private ``_compute_mi``, reached only
through :func:`_private_estimator`: where scikit-learn has moved or changed it, the public
function runs instead, with a warning.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable

import numpy as np
from sklearn.feature_selection import mutual_info_classif

from emnist_jax.classic.protocol import Progress

#: rows of sklearn's noise drawn at a time by :func:`_in_place`
NOISE_ROWS = 4096
#: the private estimator's parameters this module calls it with, in order
PRIVATE_PARAMETERS = ["x", "y", "x_discrete", "y_discrete", "n_neighbors"]


def sklearn_mutual_information(X: np.ndarray, y: np.ndarray, discrete: bool = False, seed: int = 0,
                               n_jobs: int | None = None, progress: Progress = None) -> np.ndarray:
    """``mutual_info_classif`` (nats). ``discrete=False`` is the study's call: k-NN estimator, 3 neighbours.

    ``n_jobs`` spreads the pixels over processes; the result does not depend on it (the noise
    sklearn adds to continuous features is drawn once, before the pixels are split).
    ``progress(j)`` is called as pixel j's estimate arrives (in pixel order on the in-place path;
    on the others once, for the last pixel, at the end).
    """
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_X_y

    X, y = check_X_y(X, y, dtype=None)  # sklearn's own checks and messages
    check_classification_targets(y)
    with np.errstate(invalid="ignore"):
        lean = not discrete and X.size and np.isfinite(X).all() and X.min() >= 0
    estimate = _private_estimator() if lean else None
    if estimate is not None:
        return _in_place(X, y, seed, n_jobs, progress, estimate)
    mi = mutual_info_classif(X, y, discrete_features=discrete, random_state=seed, n_jobs=n_jobs)
    if progress:
        progress(X.shape[1] - 1)
    return mi


def _private_estimator() -> Callable | None:
    """scikit-learn's per-feature k-NN estimator, or None (with a warning) where it has moved or changed."""
    try:
        from sklearn.feature_selection._mutual_info import _compute_mi

        if list(inspect.signature(_compute_mi).parameters) == PRIVATE_PARAMETERS:
            return _compute_mi
    except (ImportError, TypeError, ValueError):
        pass
    import sklearn

    warnings.warn(f"scikit-learn {sklearn.__version__} has no sklearn.feature_selection._mutual_info._compute_mi"
                  f"({', '.join(PRIVATE_PARAMETERS)}): the k-NN mutual information runs through the public "
                  f"mutual_info_classif, which holds four float64 copies of X", RuntimeWarning, stacklevel=3)
    return None


def _in_place(X: np.ndarray, y: np.ndarray, seed: int, n_jobs: int | None, progress: Progress,
              estimate: Callable) -> np.ndarray:
    """sklearn's preparation of non-negative X done in one float64 copy, then ``estimate`` per pixel."""
    from sklearn.preprocessing import scale
    from sklearn.utils import check_random_state
    from sklearn.utils.parallel import Parallel, delayed

    rng = check_random_state(seed)
    # Fortran order: sklearn scales and averages X[:, mask], which numpy lays out so (sums depend on it).
    X = scale(np.asfortranarray(X, dtype=np.float64), with_mean=False, copy=False)
    means = np.maximum(1, np.mean(X, axis=0))  # = sklearn's mean(|X|): X >= 0
    for start in range(0, len(X), NOISE_ROWS):  # the stream sklearn draws at once, in row order
        block = X[start:start + NOISE_ROWS]
        block += 1e-10 * means * rng.standard_normal(size=block.shape)
    estimates = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(estimate)(X[:, j], y, False, True, 3) for j in range(X.shape[1]))
    mi = np.empty(X.shape[1])
    try:
        for j, value in enumerate(estimates):
            mi[j] = value
            if progress:
                progress(j)
    finally:
        estimates.close()  # on an error or Ctrl-C: no more pixels dispatched
    return mi
