"""The four classic studies the report runs (the original study's sections 3-5), seeded and fixed, as result objects.

- :func:`mi_study`: the JAX mutual information beside ``mutual_info_classif`` as the study called
  it (k-NN estimator, :mod:`emnist_jax.classic.knn_mi`), with their rank agreement.
- :func:`rf_study` (:func:`rf_accuracy_vs_top_k`): RandomForest accuracy on the top-k MI pixels,
  k = 2..64, pixels ranked on the training part only (:func:`train_only_ranking`).
- :func:`pca_study` (:func:`emnist_jax.classic.pca_sweep.pca_sweep`): PCA(n), then three classifiers.
- :func:`logreg_study`: the study's gradient ascent, the JAX Newton solver and sklearn on 29
  standardised PCA components.

Each result has ``to_json()``: the ``metrics.json`` keys documented in the README. Pixels are in
the files' (transposed) order, as in the study.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from sklearn.linear_model import LogisticRegression

from emnist_jax.classic import logreg
from emnist_jax.classic.config import ClassicConfig, check_counts
from emnist_jax.classic.forests import forest_accuracy, grow_forests
from emnist_jax.classic.knn_mi import sklearn_mutual_information
from emnist_jax.classic.mutual_info import file_to_upright, mutual_information, rank_pixels
from emnist_jax.classic.pca import standardized_pca
from emnist_jax.classic.pca_sweep import PCASweepResult, pca_sweep
from emnist_jax.classic.protocol import MIN_ROWS_FOR_PROCESSES, Progress, study_split, timed

#: the study's logistic regression ran on 29 PCA components (its PCA loop's largest n)
LOGREG_PCA_COMPONENTS = 29
#: step of the study's hand-written gradient ascent (docs/original-study.md, section 5)
STUDY_GD_ALPHA = 0.1
#: how many top pixels the MI comparison keeps and compares (the RandomForest's largest k)
TOP_PIXELS = 64
PIXEL_ORDER = "file (transposed); upright row = p % 28, column = p // 28"


# ---- mutual information -------------------------------------------------------------------------

def train_only_ranking(X: np.ndarray, y: np.ndarray, n_classes: int, test_size: float, seed: int,
                       bins: int) -> np.ndarray:
    """Pixels by descending JAX MI on the training part of the study split only.

    The study ranked on all rows it then tested on (leakage); the RandomForest sweep uses this.
    """
    X_train, _, y_train, _ = study_split(X, np.ravel(y), test_size, seed)
    return rank_pixels(np.asarray(mutual_information(X_train, y_train, n_classes, bins=bins)))


def _summary(values: np.ndarray) -> dict:
    ranking = rank_pixels(values)
    return {"top_pixels": ranking[:TOP_PIXELS].tolist(), "max": float(values.max()), "argmax": int(ranking[0]),
            "n_zero": int((values <= 0).sum())}


@dataclasses.dataclass(frozen=True)
class SklearnMI:
    """sklearn's ``mutual_info_classif`` on the same rows, and its agreement with ours."""

    discrete: bool
    values: np.ndarray
    seconds: float
    spearman: float
    top64_overlap: int

    @property
    def estimator(self) -> str:
        return "discrete" if self.discrete else "default (k-NN, 3 neighbours)"

    @property
    def label(self) -> str:
        return "sklearn mutual_info_classif " + ("(discrete_features=True)" if self.discrete
                                                 else "(defaults, as the study)")

    def to_json(self) -> dict:
        return {"estimator": self.estimator, "seconds": self.seconds, **_summary(self.values),
                "spearman": self.spearman, "top64_overlap": self.top64_overlap}


@dataclasses.dataclass(frozen=True)
class MIStudy:
    """JAX MI per pixel (``values``, file order) and, if configured, sklearn's (``sklearn``)."""

    values: np.ndarray
    n_rows: int
    bins: int
    jax_seconds: float                 # includes compilation
    sklearn: SklearnMI | None = None

    @property
    def ranking(self) -> np.ndarray:
        return rank_pixels(self.values)

    @property
    def label(self) -> str:
        return f"JAX, {self.bins}-bin plug-in estimator"

    def to_json(self) -> dict:
        top = self.ranking[:TOP_PIXELS]
        result = {"n_rows": self.n_rows, "pixel_order": PIXEL_ORDER, "bins": self.bins,
                  "jax_seconds": self.jax_seconds, **_summary(self.values),
                  "top_pixels_upright": [[int(r), int(c)] for r, c in zip(*file_to_upright(top))],
                  "values": self.values.tolist()}
        if self.sklearn is not None:
            result["sklearn"] = self.sklearn.to_json()
        return result


def mi_study(X: np.ndarray, y: np.ndarray, n_classes: int, config: ClassicConfig, seed: int,
             progress: Progress = None) -> MIStudy:
    """MI of every pixel with the label: JAX (timed, compilation included) and sklearn per ``config.sklearn_mi``.

    ``progress(j)`` as sklearn's k-NN estimate of pixel j arrives (the stage's long part).
    """
    from scipy.stats import spearmanr

    ours, seconds = timed(lambda: mutual_information(X, y, n_classes, bins=config.mi_bins))
    ours = np.asarray(ours)
    theirs = None
    if config.sklearn_mi != "none":
        discrete = config.sklearn_mi == "discrete"
        n_jobs = config.n_jobs if len(y) >= MIN_ROWS_FOR_PROCESSES else 1
        values, their_seconds = timed(lambda: sklearn_mutual_information(X, y, discrete=discrete, seed=seed,
                                                                          n_jobs=n_jobs, progress=progress))
        overlap = len(set(rank_pixels(ours)[:TOP_PIXELS].tolist()) & set(rank_pixels(values)[:TOP_PIXELS].tolist()))
        theirs = SklearnMI(discrete, values, their_seconds, float(spearmanr(ours, values).statistic), overlap)
    return MIStudy(ours, len(y), config.mi_bins, seconds, theirs)


# ---- RandomForest on the top-k pixels -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TopKResult:
    k: np.ndarray
    accuracy: np.ndarray
    n_train: int
    n_test: int
    n_estimators: int
    ranking: str                       # how the pixels were ranked

    def to_json(self) -> dict:
        return {"k": self.k.tolist(), "accuracy": self.accuracy.tolist(), "n_train": self.n_train,
                "n_test": self.n_test, "n_estimators": self.n_estimators, "ranking": self.ranking}


def rf_accuracy_vs_top_k(X: np.ndarray, y: np.ndarray, ranking: np.ndarray, ks, test_size: float = 0.3,
                         seed: int = 0, n_estimators: int = 100, n_jobs: int | None = -1,
                         progress: Progress = None, ranking_source: str = "given by the caller") -> TopKResult:
    """RandomForest test accuracy using the top-k ranked pixels, for each k (``progress(k)`` as each finishes).

    The forests grow side by side (:func:`grow_forests`), each on one core.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (samples, pixels), got shape {X.shape}")
    check_counts(ks, X.shape[1], "ks")
    ranking = np.asarray(ranking)
    if ranking.shape != (X.shape[1],) or not np.array_equal(np.sort(ranking), np.arange(X.shape[1])):
        raise ValueError(f"ranking must be a permutation of all {X.shape[1]} pixels, got shape {ranking.shape}")
    X_train, X_test, y_train, y_test = study_split(X, np.ravel(y), test_size, seed)
    ks = list(ks)

    def fit(k: int, **kwargs) -> float:
        columns = ranking[:k]
        return forest_accuracy(X_train[:, columns], y_train, X_test[:, columns], y_test, n_estimators, seed,
                               n_jobs=1, **kwargs)

    accuracy = grow_forests([functools.partial(fit, k) for k in ks], n_jobs,
                            done=(lambda i: progress(ks[i])) if progress else None)
    return TopKResult(np.asarray(ks), np.asarray(accuracy), len(y_train), len(y_test), n_estimators, ranking_source)


def rf_study(X: np.ndarray, y: np.ndarray, n_classes: int, config: ClassicConfig, seed: int,
             progress: Progress = None) -> TopKResult:
    """The report's rf stage: rank on the training part, then one forest per k of ``config.ks`` that fits X."""
    ranking = train_only_ranking(X, y, n_classes, config.test_size, seed, config.mi_bins)
    ks = [k for k in config.ks if k <= X.shape[1]]
    return rf_accuracy_vs_top_k(X, y, ranking, ks, config.test_size, seed, config.rf_trees, config.n_jobs,
                                progress=progress, ranking_source="JAX MI on the training part of the split")


# ---- PCA, then three classifiers ------------------------------------------------------------------

def pca_study(X: np.ndarray, y: np.ndarray, config: ClassicConfig, seed: int, progress: Progress = None
              ) -> PCASweepResult:
    """The report's pca stage: :func:`pca_sweep` with the config's component counts and settings."""
    return pca_sweep(X, y, config.pca_components, config.test_size, seed, config.rf_trees,
                     config.logreg_max_iter, config.n_jobs, progress=progress)


# ---- logistic regression: the study's algorithm, ours and sklearn's ------------------------------------

@dataclasses.dataclass(frozen=True)
class LogregStudy:
    n_components: int
    n_train: int
    n_test: int
    newton_accuracy: float
    newton_seconds: float             # includes JAX compilation
    gd_accuracy: float
    gd_seconds: float                 # includes JAX compilation
    gd_iterations: int
    alpha: float
    sklearn_accuracy: float
    sklearn_seconds: float

    @property
    def features(self) -> str:
        return f"{self.n_components} standardised PCA components"

    def to_json(self) -> dict:
        return {"logreg_jax": {"features": self.features, "solver": "newton", "test_accuracy": self.newton_accuracy,
                               "seconds": self.newton_seconds,
                               "study_gd": {"test_accuracy": self.gd_accuracy, "iterations": self.gd_iterations,
                                            "alpha": self.alpha, "seconds": self.gd_seconds}},
                "logreg_sklearn": {"test_accuracy": self.sklearn_accuracy, "seconds": self.sklearn_seconds,
                                   "model": "LogisticRegression (multinomial lbfgs)"}}


def logreg_study(X: np.ndarray, y: np.ndarray, config: ClassicConfig, gd_iterations: int, seed: int,
                 n_components: int = LOGREG_PCA_COMPONENTS, alpha: float = STUDY_GD_ALPHA) -> LogregStudy:
    """The study's gradient ascent (``alpha``, ``gd_iterations``), JAX Newton OvR and sklearn, on PCA scores."""
    X_train, X_test, y_train, y_test = study_split(np.asarray(X, np.float32), np.ravel(y), config.test_size, seed)
    n = min(n_components, X_train.shape[0] - 1, X_train.shape[1])
    train, test = standardized_pca(X_train, X_test, n, seed)
    del X_train, X_test
    classes, index = np.unique(y_train, return_inverse=True)

    def accuracy(params) -> float:
        return float((classes[np.asarray(logreg.ovr_predict(params, test))] == y_test).mean())

    newton, t_newton = timed(lambda: logreg.ovr_fit(train, index, len(classes)))
    gd, t_gd = timed(lambda: logreg.ovr_fit_gd(train, index, len(classes), alpha=alpha, n_iter=gd_iterations))
    model, t_sk = timed(lambda: LogisticRegression(max_iter=config.logreg_max_iter).fit(train, y_train))
    return LogregStudy(n, len(y_train), len(y_test), accuracy(newton), t_newton, accuracy(gd), t_gd, gd_iterations,
                       alpha, float(model.score(test, y_test)), t_sk)
