"""The original study's classic experiments (sections 3-5), seeded and fixed, as result objects.

- :func:`mi_study`: our JAX mutual information beside ``mutual_info_classif`` as the study called
  it (k-NN estimator), with their rank agreement.
- :func:`rf_accuracy_vs_top_k` (:func:`rf_study`): RandomForest accuracy on the top-k MI pixels,
  k = 2..64, pixels ranked on the training part only (:func:`train_only_ranking`).
- :func:`pca_sweep` (:func:`pca_study`): PCA(n), then sklearn ``LogisticRegression(max_iter=10000)``
  (convergence recorded), a RandomForest (the study built one per n and never fitted it; we fit
  it) and our JAX logistic regression (``emnist_jax.logreg``) on standardised PCA scores.
- :func:`logreg_study`: the study's gradient ascent, our Newton solver and sklearn on 29
  standardised PCA components.

Each result has ``to_json()``: the ``metrics.json`` keys documented in the README.

Defects of the study fixed openly: every split and forest takes a seed; one split is drawn
once and shared by every k and n (the study re-drew both per point, mixing feature effects with
split noise); labels are flat. Pixels are in the files' (transposed) order, as in the study.

Memory and cores (35,000 training rows, 62 classes): one fully grown forest of 100 trees holds
~1.3 GB of node arrays, so forests are grown, scored and dropped a few trees at a time
(:func:`forest_accuracy`), with results identical to one ordinary fit; and the forests of a study
grow side by side, one core each (:func:`grow_forests`), so no core waits for the slowest tree
of a batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import time
import warnings
from typing import Callable

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from emnist_jax.classic_config import ClassicConfig, is_integer as _is_int

# JAX (emnist_jax.features, emnist_jax.logreg) is imported where it is used, so that importing this
# module stays light (the PCA sweep's worker processes import it; their regressions then import
# emnist_jax.features, and with it JAX, for one_blas_thread).

#: the study's logistic regression ran on 29 PCA components (its PCA loop's largest n)
LOGREG_PCA_COMPONENTS = 29
#: step of the study's hand-written gradient ascent (ORIGINAL_STUDY.md section 5)
STUDY_GD_ALPHA = 0.1
#: how many top pixels the MI comparison keeps and compares (the RandomForest's largest k)
TOP_PIXELS = 64
PIXEL_ORDER = "file (transposed); upright row = p % 28, column = p // 28"
#: rows below which sklearn work stays in this process: a worker process takes ~2 s to start,
#: more than a k-NN MI or a logistic regression on fewer rows costs
MIN_ROWS_FOR_PROCESSES = 10_000

Progress = Callable[[int], None] | None


def study_split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """One seeded train/test split, shared by every point of a sweep."""
    return train_test_split(X, y, test_size=test_size, random_state=seed)


def _timed(function: Callable):
    """(value, seconds) of one call, waiting for JAX's asynchronous results."""
    import jax

    start = time.perf_counter()
    value = jax.block_until_ready(function())
    return value, time.perf_counter() - start


# ---- mutual information -------------------------------------------------------------------------

#: rows of sklearn's noise drawn at a time by :func:`sklearn_mutual_information`
NOISE_ROWS = 4096


def sklearn_mutual_information(X: np.ndarray, y: np.ndarray, discrete: bool = False, seed: int = 0,
                               n_jobs: int | None = None, progress: Progress = None) -> np.ndarray:
    """``mutual_info_classif`` (nats). ``discrete=False`` is the study's call: k-NN estimator, 3 neighbours.

    ``n_jobs`` spreads the pixels over processes; the result does not depend on it (the noise
    sklearn adds to continuous features is drawn once, before the pixels are split).

    For non-negative pixels (the study's case) the k-NN call is sklearn's own preparation done
    in place: one float64 copy of X, scaled, its noise drawn ``NOISE_ROWS`` rows at a time from the
    same stream, then sklearn's per-pixel estimator. Bit for bit ``mutual_info_classif``
    (tests/test_baselines.py); at most two float64 copies of X at a time (the scaling's standard
    deviation makes one) where sklearn's holds four (1.2 GB at the study's 50,000 x 784).
    ``progress(j)`` is called as pixel j's estimate arrives (in pixel order; on other paths once,
    for the last pixel, at the end).
    """
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_X_y

    X, y = check_X_y(X, y, dtype=None)  # sklearn's own checks and messages
    check_classification_targets(y)
    with np.errstate(invalid="ignore"):
        lean = not discrete and X.size and np.isfinite(X).all() and X.min() >= 0
    if not lean:
        mi = mutual_info_classif(X, y, discrete_features=discrete, random_state=seed, n_jobs=n_jobs)
        if progress:
            progress(X.shape[1] - 1)
        return mi
    from sklearn.feature_selection._mutual_info import _compute_mi
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
        delayed(_compute_mi)(X[:, j], y, False, True, 3) for j in range(X.shape[1]))
    mi = np.empty(X.shape[1])
    try:
        for j, value in enumerate(estimates):
            mi[j] = value
            if progress:
                progress(j)
    finally:
        estimates.close()  # on an error or Ctrl-C: no more pixels dispatched
    return mi


def train_only_ranking(X: np.ndarray, y: np.ndarray, n_classes: int, test_size: float, seed: int,
                       bins: int) -> np.ndarray:
    """Pixels by descending JAX MI on the training part of the study split only.

    The study ranked on all rows it then tested on (leakage); the RandomForest sweep uses this.
    """
    from emnist_jax.features import mutual_information

    X_train, _, y_train, _ = study_split(X, np.ravel(y), test_size, seed)
    return rank_pixels(np.asarray(mutual_information(X_train, y_train, n_classes, bins=bins)))


def rank_pixels(mi: np.ndarray) -> np.ndarray:
    """:func:`emnist_jax.features.rank_pixels` (imported on use: it lives beside the JAX MI)."""
    from emnist_jax.features import rank_pixels as rank

    return rank(mi)


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
        from emnist_jax.features import file_to_upright

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

    from emnist_jax.features import mutual_information

    ours, seconds = _timed(lambda: mutual_information(X, y, n_classes, bins=config.mi_bins))
    ours = np.asarray(ours)
    theirs = None
    if config.sklearn_mi != "none":
        discrete = config.sklearn_mi == "discrete"
        n_jobs = config.n_jobs if len(y) >= MIN_ROWS_FOR_PROCESSES else 1
        values, their_seconds = _timed(lambda: sklearn_mutual_information(X, y, discrete=discrete, seed=seed,
                                                                          n_jobs=n_jobs, progress=progress))
        overlap = len(set(rank_pixels(ours)[:TOP_PIXELS].tolist()) & set(rank_pixels(values)[:TOP_PIXELS].tolist()))
        theirs = SklearnMI(discrete, values, their_seconds, float(spearmanr(ours, values).statistic), overlap)
    return MIStudy(ours, len(y), config.mi_bins, seconds, theirs)


# ---- RandomForest on the top-k pixels -------------------------------------------------------------

#: trees grown and scored at a time: one forest of 100 fully grown trees on 35,000 rows x 62
#: classes holds ~1.3 GB of node arrays (2.35 M nodes, each with 62 float64 class fractions);
#: 10 at a time hold ~130 MB
FOREST_CHUNK = 10
#: trees held at once by all the forests growing side by side (:func:`grow_forests`): ~10-22 MB
#: each at 35,000 rows x 62 classes (more on PCA scores than on pixels)
TREES_IN_MEMORY = 10


M_MMAP_THRESHOLD = -3            # glibc mallopt parameter
_mmap_lock = threading.Lock()    # forests on several threads share the one process-wide setting
_mmap_users = 0
LARGE_BLOCK = 1 << 20            # blocks from mmap while forests grow
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20  # where glibc's own dynamic threshold ends up on 64-bit


@contextlib.contextmanager
def _large_blocks_from_mmap():
    """While forests grow, serve blocks of 1 MiB and more with mmap, so that a dropped tree's memory goes back (glibc).

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after which
    a tree's node arrays (~2-19 MB each) and its class probabilities (7 MB) come from per-thread
    heaps that fragment: a forest grown 10 trees at a time on 35,000 x 8 pixels still held 910 MB
    resident after it was freed, the resident size growing ~50 MB per chunk. A fixed 1 MiB
    threshold keeps it at what is live. On exit the threshold is set to 32 MiB, the ceiling of glibc's
    own adjustment; setting it turns that adjustment off for the rest of the process, so later work
    (the CNN's scratch buffers) sees a fixed 32 MiB threshold rather than glibc's moving one.
    Process-wide; elsewhere than Linux with glibc it does nothing.
    """
    import ctypes
    import ctypes.util
    import sys

    global _mmap_users
    mallopt = None
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            mallopt = None
    with _mmap_lock:
        _mmap_users += 1
        if mallopt is not None and _mmap_users == 1:
            mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    try:
        yield
    finally:
        with _mmap_lock:
            _mmap_users -= 1
            if mallopt is not None and _mmap_users == 0:
                mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)


def forest_predict_proba(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_estimators: int,
                         seed: int, n_jobs: int | None, chunk: int = FOREST_CHUNK,
                         stop: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, test probabilities) of ``RandomForestClassifier(n_estimators, random_state=seed)``, ``chunk`` trees at a time.

    The trees are grown with scikit-learn's own ``warm_start``, which draws the seeds of the
    trees already grown before seeding new ones, so tree i is the tree i of one ordinary fit;
    each chunk's probabilities are added in tree order, as ``predict_proba`` adds them with
    ``n_jobs=1``, and the chunk's trees are dropped. The result is the forest's, bit for bit
    (tests/test_baselines.py); the memory held is ``chunk / n_estimators`` of the forest's.
    ``stop``, when set, ends the work at the next chunk (:class:`ForestsStopped`).
    """
    from concurrent.futures import ThreadPoolExecutor

    from joblib import effective_n_jobs

    forest = RandomForestClassifier(n_estimators=min(chunk, n_estimators), random_state=seed, n_jobs=n_jobs,
                                    warm_start=True)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)  # what the forest hands its trees
    proba = None
    grown = 0
    with _large_blocks_from_mmap(), ThreadPoolExecutor(max(1, min(chunk, effective_n_jobs(n_jobs)))) as pool:
        while grown < n_estimators:
            if stop is not None and stop.is_set():
                raise ForestsStopped
            forest.set_params(n_estimators=min(grown + chunk, n_estimators))
            forest.fit(X_train, y_train)
            if proba is None:
                proba = np.zeros((len(X_test), len(forest.classes_)), np.float64)
            for tree_proba in pool.map(lambda tree: tree.predict_proba(X_test, check_input=False),
                                       forest.estimators_[grown:]):
                proba += tree_proba
            # Keep the count (warm_start skips that many seeds); drop the trees.
            forest.estimators_[grown:] = [None] * (forest.n_estimators - grown)
            grown = forest.n_estimators
    proba /= n_estimators
    return forest.classes_, proba


def forest_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                    n_estimators: int, seed: int, n_jobs: int | None, chunk: int = FOREST_CHUNK,
                    stop: threading.Event | None = None) -> float:
    """Test accuracy of one seeded RandomForest, as ``forest.score``, holding ``chunk`` trees at a time."""
    classes, proba = forest_predict_proba(X_train, y_train, X_test, n_estimators, seed, n_jobs, chunk, stop)
    return float(np.mean(classes.take(np.argmax(proba, axis=1)) == np.asarray(y_test)))


class ForestsStopped(Exception):
    """A forest was stopped between two chunks because a sibling failed or the user interrupted."""


def grow_forests(fits: list[Callable[..., float]], n_jobs: int | None, done: Callable[[int], None] | None = None
                 ) -> list[float]:
    """Run ``fit(chunk=, stop=)`` for each fit, side by side on ``n_jobs`` threads (one core each).

    Each fit is one forest (:func:`forest_accuracy` with ``n_jobs=1``): a forest's trees do not
    depend on how many threads grew them, so the results are those of one forest after another,
    while no core idles at a batch's slowest tree. The trees held at once stay near
    :data:`TREES_IN_MEMORY` (``chunk`` = that / threads). ``done(i)`` is called here, in this
    thread, as fit ``i`` finishes (in any order). On an error or Ctrl-C the other forests stop at
    their next chunk and the error is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from joblib import effective_n_jobs

    workers = max(1, min(effective_n_jobs(n_jobs), len(fits)))
    chunk = max(1, min(FOREST_CHUNK, TREES_IN_MEMORY // workers))
    stop = threading.Event()
    results: list[float | None] = [None] * len(fits)
    # sklearn's fits enter warnings.catch_warnings, which is process-wide before Python 3.14: forests
    # fitting at once can leave each other's filters behind, so the caller's are put back at the end.
    with warnings.catch_warnings(), _large_blocks_from_mmap(), \
            ThreadPoolExecutor(workers, thread_name_prefix="forest") as pool:
        pending = {pool.submit(fit, chunk=chunk, stop=stop): i for i, fit in enumerate(fits)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    results[i] = future.result()
                    if done:
                        done(i)
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise
    return results


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


def _check_range(values, upper: int, name: str) -> None:
    values = list(values)
    if not values or not all(_is_int(v) for v in values) or min(values) < 1 or max(values) > upper:
        raise ValueError(f"{name} must be integers in 1..{upper}, got {values}")


def rf_accuracy_vs_top_k(X: np.ndarray, y: np.ndarray, ranking: np.ndarray, ks, test_size: float = 0.3,
                         seed: int = 0, n_estimators: int = 100, n_jobs: int | None = -1,
                         progress: Progress = None, ranking_source: str = "given by the caller") -> TopKResult:
    """RandomForest test accuracy using the top-k ranked pixels, for each k (``progress(k)`` as each finishes).

    The forests grow side by side (:func:`grow_forests`), each on one core.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (samples, pixels), got shape {X.shape}")
    _check_range(ks, X.shape[1], "ks")
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

@dataclasses.dataclass(frozen=True)
class PCASweepResult:
    n_components: np.ndarray
    logreg: np.ndarray              # sklearn LogisticRegression on raw PCA scores (the study)
    logreg_converged: np.ndarray    # False where lbfgs hit max_iter (the study saw 6 of 29)
    rf: np.ndarray                  # RandomForest (built but never fitted in the study)
    jax: np.ndarray                 # emnist_jax.logreg.ovr_fit on standardised PCA scores
    n_train: int
    n_test: int
    logreg_max_iter: int
    pca_solver: str                 # sklearn PCA svd_solver; one fit at the largest n, nested below

    def to_json(self) -> dict:
        return {"n_components": self.n_components.tolist(), "logreg": self.logreg.tolist(),
                "logreg_converged": self.logreg_converged.tolist(), "rf": self.rf.tolist(), "jax": self.jax.tolist(),
                "logreg_max_iter": self.logreg_max_iter, "n_train": self.n_train, "n_test": self.n_test,
                "pca_solver": self.pca_solver}


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


def study_logreg_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray,
                          max_iter: int) -> tuple[float, bool]:
    """(test accuracy, converged) of sklearn ``LogisticRegression(max_iter)`` on unscaled PCA scores, as the study.

    ``converged`` is False when lbfgs warned (the study saw 6 of 29). One BLAS thread: the
    coefficients depend on the BLAS thread count in their last bits, so this makes the result
    the same on every machine, and leaves the other cores to the forests.
    """
    from emnist_jax.features import one_blas_thread

    with one_blas_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(max_iter=max_iter).fit(train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(model.score(test, y_test)), converged


def pca_sweep(X: np.ndarray, y: np.ndarray, n_components, test_size: float = 0.3, seed: int = 0,
              rf_trees: int = 100, logreg_max_iter: int = 10_000, n_jobs: int | None = -1,
              progress: Progress = None, svd_solver: str | None = None,
              logreg_workers: int | None = None) -> PCASweepResult:
    """For each n: the first n PCA components of the train part, then three classifiers scored on the test part.

    PCA is fitted once, at the largest n; PCA(n) is its leading n components
    (:func:`leading_components`). That is exact for sklearn's deterministic solvers
    ("covariance_eigh", "full"), which is why the solver is fixed here (default
    ``emnist_jax.features.PCA_SOLVER``) and recorded in the result (tests/test_baselines.py checks
    nested against per-n fits, bit for bit).

    ``logreg_workers`` worker processes run the sklearn logistic regressions (one core each)
    while the JAX fits, then the forests (side by side on ``n_jobs`` threads, :func:`grow_forests`)
    run here; the results are the same as in this process. Default: half the ``n_jobs`` cores, at
    most 4, none below ``MIN_ROWS_FOR_PROCESSES`` training rows. ``progress(n)`` is called once
    per finished n, in any order.
    """
    from joblib import effective_n_jobs

    from emnist_jax import features, logreg

    svd_solver = features.PCA_SOLVER if svd_solver is None else svd_solver
    if svd_solver not in ("covariance_eigh", "full"):
        raise ValueError(f"svd_solver must be 'covariance_eigh' or 'full' (nested components are exact only "
                         f"for deterministic solvers), got {svd_solver!r}")
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (samples, pixels), got shape {X.shape}")
    X_train, X_test, y_train, y_test = study_split(X.astype(np.float32), np.ravel(y), test_size, seed)
    _check_range(n_components, min(X_train.shape), "n_components")
    classes, y_index = np.unique(y_train, return_inverse=True)
    with features.one_blas_thread():
        pca = PCA(n_components=max(n_components), svd_solver=svd_solver, random_state=seed).fit(X_train)
        scores = {}
        for n in n_components:
            leading = leading_components(pca, n)
            scores[n] = leading.transform(X_train), leading.transform(X_test)
    del X_train, X_test
    # Logistic regressions: worker processes when cores allow (each keeps its own warnings and
    # one BLAS thread; threads would mix warnings, which Python records process-wide).
    if logreg_workers is None:
        logreg_workers = min(4, effective_n_jobs(n_jobs) // 2) if len(y_train) >= MIN_ROWS_FOR_PROCESSES else 0
    elif not _is_int(logreg_workers) or logreg_workers < 0:
        raise ValueError(f"logreg_workers must be None or an integer >= 0, got {logreg_workers!r}")
    workers = min(logreg_workers, len(n_components))
    executor = None
    if workers >= 1:
        from joblib.externals.loky import ProcessPoolExecutor

        # A pool of our own (loky: safe beside JAX's threads, no __main__ guard needed), not
        # joblib's reusable one, which, taken here, was later handed to joblib.Parallel (sklearn's
        # MI) and failed there.
        executor = ProcessPoolExecutor(workers)
        pending = {n: executor.submit(study_logreg_accuracy, scores[n][0], y_train, scores[n][1], y_test,
                                      logreg_max_iter) for n in n_components}
    rows = {"logreg": [], "converged": [], "rf": [], "jax": []}
    try:
        for n in n_components:  # JAX, here, while the workers start on the regressions
            train, test = scores[n]
            scaler = StandardScaler().fit(train)
            params = logreg.ovr_fit(scaler.transform(train), y_index, len(classes))
            predicted = classes[np.asarray(logreg.ovr_predict(params, scaler.transform(test).astype(np.float32)))]
            rows["jax"].append(float((predicted == y_test).mean()))

        def forest(n: int, **kwargs) -> float:
            train, test = scores[n]
            return forest_accuracy(train, y_train, test, y_test, rf_trees, seed, n_jobs=1, **kwargs)

        regressions = {}
        if executor is None:  # here, before the forests: catch_warnings is process-wide, and
            for n in n_components:  # sklearn's forest threads enter it too
                train, test = scores[n]
                regressions[n] = study_logreg_accuracy(train, y_train, test, y_test, logreg_max_iter)

        def finished(i: int) -> None:  # a size is done when its forest and its regression are
            n = n_components[i]
            if executor is not None:
                regressions[n] = pending[n].result()
            if progress:
                progress(n)

        rows["rf"] = grow_forests([functools.partial(forest, n) for n in n_components], n_jobs, finished)
        rows["logreg"], rows["converged"] = (list(column) for column in zip(*(regressions[n] for n in n_components)))
    except BaseException:
        if executor is not None:  # an error or Ctrl-C: stop the regressions, queued and running
            executor.shutdown(wait=False, kill_workers=True)
        raise
    if executor is not None:
        executor.shutdown(wait=True)
    return PCASweepResult(np.asarray(n_components), np.asarray(rows["logreg"]), np.asarray(rows["converged"]),
                          np.asarray(rows["rf"]), np.asarray(rows["jax"]), len(y_train), len(y_test),
                          logreg_max_iter, svd_solver)


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
    from emnist_jax import logreg
    from emnist_jax.features import standardized_pca

    X_train, X_test, y_train, y_test = study_split(np.asarray(X, np.float32), np.ravel(y), config.test_size, seed)
    n = min(n_components, X_train.shape[0] - 1, X_train.shape[1])
    train, test = standardized_pca(X_train, X_test, n, seed)
    del X_train, X_test
    classes, index = np.unique(y_train, return_inverse=True)

    def accuracy(params) -> float:
        return float((classes[np.asarray(logreg.ovr_predict(params, test))] == y_test).mean())

    newton, t_newton = _timed(lambda: logreg.ovr_fit(train, index, len(classes)))
    gd, t_gd = _timed(lambda: logreg.ovr_fit_gd(train, index, len(classes), alpha=alpha, n_iter=gd_iterations))
    model, t_sk = _timed(lambda: LogisticRegression(max_iter=config.logreg_max_iter).fit(train, y_train))
    return LogregStudy(n, len(y_train), len(y_test), accuracy(newton), t_newton, accuracy(gd), t_gd, gd_iterations,
                       alpha, float(model.score(test, y_test)), t_sk)
