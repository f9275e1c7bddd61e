"""What :func:`~emnist_jax.cnn.train.train_and_evaluate` is given, checked before any work, and the
schedule it implies: the training and hold-out rows, the batches of an epoch, the steps of a call.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
from jax.sharding import Mesh

from emnist_jax.cnn.config import TrainConfig
from emnist_jax.cnn.placement import platform_of
from emnist_jax.data import Dataset


def check_data(dataset: Dataset) -> None:
    """The dataset as training needs it, or a one-line ValueError naming the part that is not."""
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be an emnist_jax.data.Dataset, got {type(dataset).__name__}")
    if not dataset.classes:
        raise ValueError("dataset.classes is empty: there is no class to learn")
    for name in ("train", "test"):
        images, labels = getattr(dataset, f"{name}_images"), getattr(dataset, f"{name}_labels")
        if not isinstance(images, np.ndarray) or images.ndim != 3 or images.shape[1:] != (28, 28) \
                or images.dtype != np.uint8:
            raise ValueError(f"{name}_images must be (N, 28, 28) uint8, got {_shape_of(images)}")
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"{name}_labels must be a 1-D array of integer class numbers, got {_shape_of(labels)}")
        if len(labels) != len(images):
            raise ValueError(f"{name}_labels has {len(labels)} entries for {len(images)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= dataset.n_classes):
            raise ValueError(f"{name}_labels must lie in 0..{dataset.n_classes - 1}")


def _shape_of(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.shape} {value.dtype}"
    return type(value).__name__


def check_arguments(config: Any, workdir: Any, resume: Any, progress: Any, devices: Any,
                    callbacks: dict[str, Any]) -> None:
    """train_and_evaluate's other arguments, each checked before any work (a one-line ValueError)."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if workdir is not None and (not isinstance(workdir, (str, os.PathLike)) or workdir == ""):
        raise ValueError(f"workdir must be a folder path or None, got {workdir!r}")
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if devices is not None and (not isinstance(devices, (list, tuple)) or not devices):
        raise ValueError(f"devices must be a non-empty list of JAX devices or None, got {devices!r}")
    for name, function in callbacks.items():
        if function is not None and not callable(function):
            raise ValueError(f"{name} must be callable or None, got {type(function).__name__}")


def split_for(dataset: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout) of the train file: the study's seeded 67/33, or all/none.

    The study's split is ``sklearn.model_selection.train_test_split(rows, test_size=0.33,
    random_state=seed)``; this computes the same rows the way it does (a ``RandomState(seed)``
    permutation, the first ceil(0.33 n) held out) without importing scikit-learn (2 s).
    """
    n = len(dataset.train_labels)
    rows = np.arange(n)
    if config.protocol == "official":
        return rows, rows[:0]
    n_test = math.ceil(config.holdout_fraction * n)
    permutation = np.random.RandomState(config.seed).permutation(n)
    return rows[permutation[n_test:]], rows[permutation[:n_test]]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a run cuts its epochs: ``steps`` batches of ``config.batch_size`` training rows per epoch
    (the last may be partial), ``config.steps_per_call`` steps per jitted call, ``calls`` calls per
    epoch (the last may hold padding steps)."""

    config: TrainConfig        # resolved for the mesh's platform
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    steps: int
    calls: int
    grad_chunk: int            # 0: the whole batch at once

    @property
    def n(self) -> int:
        return len(self.train_rows)

    @property
    def batch(self) -> int:
        return self.config.batch_size

    @property
    def k(self) -> int:
        return self.config.steps_per_call


def schedule_for(dataset: Dataset, config: TrainConfig, mesh: Mesh) -> Schedule:
    """The schedule of ``config`` on ``mesh``, or a one-line ValueError when the batch does not fit."""
    config = config.resolved(platform_of(mesh))
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size must be a multiple of the {mesh.size} devices, got {config.batch_size}")
    train_rows, holdout_rows = split_for(dataset, config)
    n, batch = len(train_rows), config.batch_size
    if batch > n:
        raise ValueError(f"batch_size {batch} is larger than the {n} training images")
    steps = -(-n // batch)
    k = min(config.steps_per_call, steps)            # more steps per call than an epoch holds is padding
    grad_chunk = config.grad_chunk if mesh.size == 1 else 0   # chunks of a batch split over devices: no
    return Schedule(dataclasses.replace(config, steps_per_call=k), train_rows, holdout_rows, steps, -(-steps // k),
                    grad_chunk)
