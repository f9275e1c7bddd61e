"""The original study's classic experiments (sections 3-4) with scikit-learn, seeded and fixed.

- :func:`sklearn_mutual_information`: ``mutual_info_classif`` as the study called it.
- :func:`rf_accuracy_vs_top_k`: RandomForest accuracy on the top-k MI pixels, k = 2..64.
- :func:`pca_sweep`: PCA(n) then sklearn ``LogisticRegression(max_iter=10000)`` (convergence
  recorded), a RandomForest (the study built one per n and never fitted it; we fit it), and our
  JAX logistic regression (``emnist_jax.logreg``) on standardised PCA scores.

Defects of the study fixed openly: every split and forest takes a seed; one split is drawn
once and shared by every k and n (the study re-drew both per point, mixing feature effects with
split noise); labels are flat. Pixels are in the files' (transposed) order, as in the study.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from emnist_jax import logreg


@dataclasses.dataclass(frozen=True)
class ClassicConfig:
    """The classic studies' parameters; the defaults are the original study's protocol."""

    n_rows: int = 50_000                 # the first 50,000 training rows
    test_size: float = 0.3               # 35,000 / 15,000
    ks: tuple[int, ...] = tuple(range(2, 65))
    rf_trees: int = 100                  # RandomForestClassifier() default
    pca_components: tuple[int, ...] = tuple(range(1, 30))
    logreg_max_iter: int = 10_000
    sklearn_mi: str = "default"          # "default" (k-NN estimator, the study), "discrete" or "none"
    mi_bins: int = 16                    # bins of our JAX MI
    seed: int = 0
    n_jobs: int | None = -1


def study_split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """One seeded train/test split, shared by every point of a sweep."""
    return train_test_split(X, y, test_size=test_size, random_state=seed)


def sklearn_mutual_information(X: np.ndarray, y: np.ndarray, discrete: bool = False, seed: int = 0) -> np.ndarray:
    """``mutual_info_classif`` (nats). ``discrete=False`` is the study's call: k-NN estimator, 3 neighbours."""
    return mutual_info_classif(X, np.ravel(y), discrete_features=discrete, random_state=seed)


@dataclasses.dataclass(frozen=True)
class TopKResult:
    k: np.ndarray
    accuracy: np.ndarray
    n_train: int
    n_test: int


def _check_range(values, upper: int, name: str) -> None:
    if len(values) == 0 or min(values) < 1 or max(values) > upper:
        raise ValueError(f"{name} must lie in 1..{upper}, got {list(values)}")


def rf_accuracy_vs_top_k(X: np.ndarray, y: np.ndarray, ranking: np.ndarray, ks, test_size: float = 0.3,
                         seed: int = 0, n_estimators: int = 100, n_jobs: int | None = -1,
                         progress=None) -> TopKResult:
    """RandomForest test accuracy using the top-k ranked pixels, for each k."""
    _check_range(ks, X.shape[1], "ks")
    if len(ranking) != X.shape[1]:
        raise ValueError(f"ranking must rank all {X.shape[1]} pixels, got {len(ranking)}")
    X_train, X_test, y_train, y_test = study_split(X, np.ravel(y), test_size, seed)
    accuracy = []
    for k in ks:
        columns = np.asarray(ranking[:k])
        forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
        forest.fit(X_train[:, columns], y_train)
        accuracy.append(forest.score(X_test[:, columns], y_test))
        if progress:
            progress(k)
    return TopKResult(np.asarray(ks), np.asarray(accuracy), len(y_train), len(y_test))


@dataclasses.dataclass(frozen=True)
class PCASweepResult:
    n_components: np.ndarray
    logreg: np.ndarray              # sklearn LogisticRegression on raw PCA scores (the study)
    logreg_converged: np.ndarray    # False where lbfgs hit max_iter (the study saw 6 of 29)
    rf: np.ndarray                  # RandomForest (built but never fitted in the study)
    jax: np.ndarray                 # emnist_jax.logreg.ovr_fit on standardised PCA scores
    n_train: int
    n_test: int


def pca_sweep(X: np.ndarray, y: np.ndarray, n_components, test_size: float = 0.3, seed: int = 0,
              rf_trees: int = 100, logreg_max_iter: int = 10_000, n_jobs: int | None = -1,
              progress=None) -> PCASweepResult:
    """For each n: PCA(n) fit on the train part, then three classifiers scored on the test part."""
    _check_range(n_components, min(X.shape), "n_components")
    X_train, X_test, y_train, y_test = study_split(X.astype(np.float32), np.ravel(y), test_size, seed)
    classes = np.unique(y_train)
    index = {c: i for i, c in enumerate(classes)}
    y_index = np.array([index[c] for c in y_train])
    rows = {"logreg": [], "converged": [], "rf": [], "jax": []}
    for n in n_components:
        pca = PCA(n_components=n, random_state=seed).fit(X_train)
        train, test = pca.transform(X_train), pca.transform(X_test)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(max_iter=logreg_max_iter).fit(train, y_train)
        rows["converged"].append(not any(issubclass(w.category, ConvergenceWarning) for w in caught))
        rows["logreg"].append(model.score(test, y_test))
        forest = RandomForestClassifier(n_estimators=rf_trees, random_state=seed, n_jobs=n_jobs)
        rows["rf"].append(forest.fit(train, y_train).score(test, y_test))
        scaler = StandardScaler().fit(train)
        params = logreg.ovr_fit(scaler.transform(train), y_index, len(classes))
        predicted = classes[np.asarray(logreg.ovr_predict(params, scaler.transform(test).astype(np.float32)))]
        rows["jax"].append(float((predicted == y_test).mean()))
        if progress:
            progress(n)
    return PCASweepResult(np.asarray(n_components), np.asarray(rows["logreg"]), np.asarray(rows["converged"]),
                          np.asarray(rows["rf"]), np.asarray(rows["jax"]), len(y_train), len(y_test))


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
