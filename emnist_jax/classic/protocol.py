"""What every classic study shares: one seeded split, progress callbacks, timed calls.

Defects of the study fixed openly: every split and forest takes a seed; one split is drawn
once and shared by every k and n (the study re-drew both per point, mixing feature effects with
split noise); labels are flat.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from sklearn.model_selection import train_test_split

Progress = Callable[[int], None] | None

#: rows below which sklearn work stays in this process: a worker process takes ~2 s to start,
#: more than a k-NN MI or a logistic regression on fewer rows costs
MIN_ROWS_FOR_PROCESSES = 10_000


def study_split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """One seeded train/test split, shared by every point of a sweep."""
    return train_test_split(X, y, test_size=test_size, random_state=seed)


def timed(function: Callable):
    """(value, seconds) of one call, waiting for JAX's asynchronous results."""
    import jax

    start = time.perf_counter()
    value = jax.block_until_ready(function())
    return value, time.perf_counter() - start
