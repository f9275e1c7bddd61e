"""PCA(n), then three classifiers, for each n of a sweep (the study's section 4), on one split.

For each n: sklearn ``LogisticRegression(max_iter=10000)`` on the raw PCA scores as the study
(convergence recorded), a RandomForest (the study built one per n and never fitted it; it is
fitted here) and the JAX logistic regression (:mod:`emnist_jax.classic.logreg`) on standardised
scores. The sklearn regressions run in worker processes, largest n first, while the forests grow
here on all cores and the JAX fits run beside them in one thread: the steps of :func:`pca_sweep`.

JAX is imported where it is used, so that importing this module stays light: the worker
processes import it to run :func:`study_logreg_accuracy`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from emnist_jax.classic.config import check_counts, is_integer
from emnist_jax.classic.forests import forest_accuracy, grow_forests
from emnist_jax.classic.pca import check_exact_solver, nested_scores, one_blas_thread
from emnist_jax.classic.protocol import MIN_ROWS_FOR_PROCESSES, Progress, study_split


@dataclasses.dataclass(frozen=True)
class PCASweepResult:
    n_components: np.ndarray
    logreg: np.ndarray              # sklearn LogisticRegression on raw PCA scores (the study)
    logreg_converged: np.ndarray    # False where lbfgs hit max_iter (the study saw 6 of 29)
    rf: np.ndarray                  # RandomForest (built but never fitted in the study)
    jax: np.ndarray                 # emnist_jax.classic.logreg.ovr_fit on standardised PCA scores
    n_train: int
    n_test: int
    logreg_max_iter: int
    pca_solver: str                 # sklearn PCA svd_solver; one fit at the largest n, nested below

    def to_json(self) -> dict:
        return {"n_components": self.n_components.tolist(), "logreg": self.logreg.tolist(),
                "logreg_converged": self.logreg_converged.tolist(), "rf": self.rf.tolist(), "jax": self.jax.tolist(),
                "logreg_max_iter": self.logreg_max_iter, "n_train": self.n_train, "n_test": self.n_test,
                "pca_solver": self.pca_solver}


def pca_sweep(X: np.ndarray, y: np.ndarray, n_components, test_size: float = 0.3, seed: int = 0,
              rf_trees: int = 100, logreg_max_iter: int = 10_000, n_jobs: int | None = -1,
              progress: Progress = None, svd_solver: str | None = None,
              logreg_workers: int | None = None) -> PCASweepResult:
    """For each n: the first n PCA components of the train part, then three classifiers scored on the test part.

    PCA is fitted once, at the largest n; PCA(n) is its leading n components
    (:func:`emnist_jax.classic.pca.leading_components`). That is exact for sklearn's deterministic
    solvers ("covariance_eigh", "full"), which is why the solver is fixed here (default
    :data:`emnist_jax.classic.pca.PCA_SOLVER`) and recorded in the result (tests/test_baselines.py
    checks nested against per-n fits, bit for bit).

    ``logreg_workers`` worker processes run the sklearn logistic regressions (one core each,
    largest n first) while the forests grow here (side by side on ``n_jobs`` threads,
    :func:`grow_forests`, largest n first) and the JAX fits run in one more thread; the results are
    the same as in this process. Default: 3/8 of the ``n_jobs`` cores rounded up (1 of 2, 6 of 16),
    none on one core or below ``MIN_ROWS_FOR_PROCESSES`` training rows. ``progress(n)`` is called once
    per finished n, in any order.
    """
    svd_solver = check_exact_solver(svd_solver)
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (samples, pixels), got shape {X.shape}")
    X_train, X_test, y_train, y_test = study_split(X.astype(np.float32), np.ravel(y), test_size, seed)
    check_counts(n_components, min(X_train.shape), "n_components")
    workers = _regression_workers(logreg_workers, n_jobs, len(y_train), len(n_components))
    scores = nested_scores(X_train, X_test, n_components, svd_solver, seed)
    del X_train, X_test
    # Largest n first: the longest fits (both grow with n) then never start last, alone on the critical path.
    order = largest_first(n_components)
    regressions = {n: functools.partial(study_logreg_accuracy, scores[n][0], y_train, scores[n][1], y_test,
                                        logreg_max_iter) for n in order}
    forests = [functools.partial(forest_accuracy, scores[n][0], y_train, scores[n][1], y_test, rf_trees, seed,
                                 n_jobs=1) for n in order]
    # Filters put back after every thread here is done: the forests' and the JAX fits' threads may
    # enter warnings.catch_warnings, which is process-wide, in any interleaving.
    with warnings.catch_warnings(), _process_pool(workers) as pool:
        started = {n: pool.submit(fit) for n, fit in regressions.items()} if pool else {}
        # Without workers the regressions run here, before the other threads start: their
        # warnings.catch_warnings(record=True) would catch the JAX fits' ConvergenceWarnings too.
        finished = {} if pool else {n: fit() for n, fit in regressions.items()}

        def forest_done(i: int) -> None:  # a size is done when its forest and its regression are
            n = order[i]
            if pool is not None:
                finished[n] = started[n].result()
            if progress:
                progress(n)

        with _beside(functools.partial(_jax_accuracies, scores, n_components, y_train, y_test)) as jax:
            rf_by_size = dict(zip(order, grow_forests(forests, n_jobs, forest_done)))
    logreg, converged = zip(*(finished[n] for n in n_components))
    return PCASweepResult(np.asarray(n_components), np.asarray(logreg), np.asarray(converged),
                          np.asarray([rf_by_size[n] for n in n_components]), np.asarray(jax.result()),
                          len(y_train), len(y_test), logreg_max_iter, svd_solver)


def largest_first(n_components) -> list[int]:
    """The sizes in the order their fits start: largest first, as the fits' times grow with n."""
    return sorted(n_components, reverse=True)


def _regression_workers(logreg_workers: int | None, n_jobs: int | None, n_rows: int, n_sizes: int) -> int:
    """How many worker processes run the sklearn regressions (0: none, they run here)."""
    from joblib import effective_n_jobs

    if logreg_workers is None:
        cores = effective_n_jobs(n_jobs)
        # The regressions are about a quarter of the work (full profile, one core: 154 s against the
        # forests' 433 s) and share the cores with n_jobs forest threads: 3/8 of the cores, rounded
        # up, put a simulated 8- or 16-core schedule within 4 % of its bound (4 of 16: 26 % above).
        logreg_workers = -(-3 * cores // 8) if cores > 1 and n_rows >= MIN_ROWS_FOR_PROCESSES else 0
    elif not is_integer(logreg_workers) or logreg_workers < 0:
        raise ValueError(f"logreg_workers must be None or an integer >= 0, got {logreg_workers!r}")
    return min(logreg_workers, n_sizes)


@contextlib.contextmanager
def _process_pool(workers: int):
    """A pool of ``workers`` processes (None for 0); an error or Ctrl-C kills its work, queued and running.

    Processes, not threads: each keeps its own warnings and one BLAS thread, where threads would
    mix warnings, which Python records process-wide. A pool of its own (loky: safe beside JAX's
    threads, no __main__ guard needed), not joblib's reusable one, which, taken here, was later
    handed to joblib.Parallel (sklearn's MI) and failed there.
    """
    if workers < 1:
        yield None
        return
    from joblib.externals.loky import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, kill_workers=True)
        raise
    pool.shutdown(wait=True)


def study_logreg_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray,
                          max_iter: int) -> tuple[float, bool]:
    """(test accuracy, converged) of sklearn ``LogisticRegression(max_iter)`` on unscaled PCA scores, as the study.

    ``converged`` is False when lbfgs warned (the study saw 6 of 29). One BLAS thread: the
    coefficients depend on the BLAS thread count in their last bits, so this makes the result
    the same on every machine, and leaves the other cores to the forests.
    """
    with one_blas_thread(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(max_iter=max_iter).fit(train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float(model.score(test, y_test)), converged


@contextlib.contextmanager
def _beside(work):
    """Run ``work(stop)`` in a thread while the body runs; yields its future. An error in the body sets ``stop``."""
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="jax") as thread:
        future = thread.submit(work, stop)
        try:
            yield future
        except BaseException:
            stop.set()
            raise


def _jax_accuracies(scores: dict, n_components, y_train: np.ndarray, y_test: np.ndarray,
                    stop: threading.Event) -> list[float]:
    """:func:`_jax_accuracy` for each n, ending early (empty) once ``stop`` is set.

    On an accelerator the fits are padded to shared shapes (``bucket_shapes``): there each new
    shape's compilation costs far more than the fit, and 29 sizes compile 3 programs instead of
    29. On the CPU the padding would cost more than it saves (the 29 sizes at 35,000 rows, 2 cores:
    74.5 s padded against 57.8 s, of which 13.0 s compiling), and unpadded fits keep their bits.
    """
    import jax

    bucket = jax.default_backend() != "cpu"
    accuracies = []
    for n in n_components:
        if stop.is_set():
            return []
        accuracies.append(_jax_accuracy(*scores[n], y_train, y_test, bucket_shapes=bucket))
    return accuracies


def _jax_accuracy(train: np.ndarray, test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray,
                  bucket_shapes: bool = False) -> float:
    """Test accuracy of the JAX Newton one-vs-rest fit on the scores, standardised on the training part."""
    from emnist_jax.classic import logreg

    classes, y_index = np.unique(y_train, return_inverse=True)
    scaler = StandardScaler().fit(train)
    params = logreg.ovr_fit(scaler.transform(train), y_index, len(classes), bucket_shapes=bucket_shapes)
    predicted = classes[np.asarray(logreg.ovr_predict(params, scaler.transform(test).astype(np.float32)))]
    return float((predicted == y_test).mean())
