"""PCA features of the study: PCA fitted on the training part, exact nested components, standardised scores.

Every PCA here uses one deterministic solver (:data:`PCA_SOLVER`), so PCA(n) is exactly the
leading n components of PCA(m > n), and runs its linear algebra on one BLAS thread
(:func:`one_blas_thread`), which gives the same bits on any core count.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from emnist_jax.classic.config import is_integer

#: sklearn PCA solver of every PCA here: deterministic, so PCA(n) is exactly the leading n
#: components of PCA(m > n) (sklearn's "auto" picks the randomized solver at the study's sizes),
#: and one eigendecomposition of the 784 x 784 covariance is fast for many more rows than pixels.
PCA_SOLVER = "covariance_eigh"
#: the solvers for which :func:`leading_components` is PCA(n) itself
EXACT_SOLVERS = ("covariance_eigh", "full")


def one_blas_thread():
    """Context: numpy/scipy BLAS and LAPACK, and OpenMP (sklearn's loss functions), on one thread.

    The studies' linear algebra (PCA's 784 x 784 eigendecomposition, lbfgs on <= 29 features)
    is small; on the 2-core machine shared with other work, OpenBLAS's second thread made a
    784 x 784 ``eigh`` 4-17x slower (0.8-3.5 s against 0.2 s; the PCA fit on 35,000 rows took
    12.3 s with two threads, 0.3 s with one), and the thread count changes the last bits of the
    results: one thread gives the same bits on any core count.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def standardized_pca(X_train: np.ndarray, X_test: np.ndarray, n_components: int, seed: int,
                     svd_solver: str = PCA_SOLVER) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) float32 scores of PCA(n_components) fitted on ``X_train``, standardised on ``X_train``."""
    X_train, X_test = np.asarray(X_train, np.float32), np.asarray(X_test, np.float32)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"X_train and X_test must be (samples, features) with the same features, "
                         f"got {X_train.shape} and {X_test.shape}")
    upper = min(X_train.shape)
    if not is_integer(n_components) or not 1 <= n_components <= upper:
        raise ValueError(f"n_components must be an integer in 1..{upper}, got {n_components!r}")
    with one_blas_thread():
        pca = PCA(int(n_components), svd_solver=svd_solver, random_state=seed).fit(X_train)
        train, test = pca.transform(X_train), pca.transform(X_test)
    scaler = StandardScaler().fit(train)
    return scaler.transform(train).astype(np.float32), scaler.transform(test).astype(np.float32)


def leading_components(pca: PCA, n: int) -> PCA:
    """The fitted ``pca`` cut to its first ``n`` components: PCA(n) itself for a deterministic solver.

    The arrays are copied in the memory layout sklearn gives PCA(n)'s own, so ``transform`` runs
    the same BLAS call and returns the same bits (checked in tests/test_baselines.py).
    """
    cut = copy.copy(pca)
    for name in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_"):
        setattr(cut, name, np.array(getattr(pca, name)[:n], copy=True, order="K"))
    cut.n_components = cut.n_components_ = n
    return cut


def check_exact_solver(svd_solver: str | None) -> str:
    """The solver (default :data:`PCA_SOLVER`); ``ValueError`` for one whose nested components are not exact."""
    svd_solver = PCA_SOLVER if svd_solver is None else svd_solver
    if svd_solver not in EXACT_SOLVERS:
        raise ValueError(f"svd_solver must be 'covariance_eigh' or 'full' (nested components are exact only "
                         f"for deterministic solvers), got {svd_solver!r}")
    return svd_solver


def nested_scores(X_train: np.ndarray, X_test: np.ndarray, n_components, svd_solver: str, seed: int
                  ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """n -> (train, test) raw PCA(n) scores for each n, from one PCA fitted at the largest n."""
    with one_blas_thread():
        pca = PCA(n_components=max(n_components), svd_solver=svd_solver, random_state=seed).fit(X_train)
        scores = {}
        for n in n_components:
            leading = leading_components(pca, n)
            scores[n] = leading.transform(X_train), leading.transform(X_test)
    return scores
