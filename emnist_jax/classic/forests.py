"""RandomForests on the study's sizes, grown a few trees at a time and side by side, bit for bit as one fit.

Memory and cores (35,000 training rows, 62 classes): one fully grown forest of 100 trees holds
~1.3 GB of node arrays, so forests are grown, scored and dropped a few trees at a time
(:func:`forest_accuracy`), with results identical to one ordinary fit; and the forests of a study
grow side by side, one core each (:func:`grow_forests`), so no core waits for the slowest tree
of a batch. While they grow, glibc serves large blocks with mmap
(:func:`emnist_jax.runtime.large_blocks_from_mmap`), so that a dropped tree's memory goes back.
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from emnist_jax.runtime import large_blocks_from_mmap


#: trees grown and scored at a time: one forest of 100 fully grown trees on 35,000 rows x 62
#: classes holds ~1.3 GB of node arrays (2.35 M nodes, each with 62 float64 class fractions);
#: 10 at a time hold ~130 MB
FOREST_CHUNK = 10
#: trees held at once by all the forests growing side by side (:func:`grow_forests`): ~10-22 MB
#: each at 35,000 rows x 62 classes (more on PCA scores than on pixels)
TREES_IN_MEMORY = 10


def forest_predict_proba(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_estimators: int,
                         seed: int, n_jobs: int | None, chunk: int = FOREST_CHUNK,
                         stop: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, test probabilities) of ``RandomForestClassifier(n_estimators, random_state=seed)``, in chunks.

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
    with large_blocks_from_mmap(), ThreadPoolExecutor(max(1, min(chunk, effective_n_jobs(n_jobs)))) as pool:
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
    with warnings.catch_warnings(), large_blocks_from_mmap(), \
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

