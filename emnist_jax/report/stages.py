"""The report's stages: each takes the data and the profile and returns a :class:`StageResult`.

No study math lives here: every stage is one call into ``baselines`` or ``cnn`` plus the
progress bar and the one log line that says what it is doing (:func:`describe`). What a stage
returns is stored for ``--resume`` (``store.py``) and drawn by ``sections.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from emnist_jax.data import Dataset
from emnist_jax.profiles import Profile
from emnist_jax.report.store import StageResult


@dataclasses.dataclass
class Inputs:
    """What every stage may read: the data, the profile (overrides applied) and the CNN's checkpoint folder."""

    dataset: Dataset
    profile: Profile
    cnn_workdir: Path | None = None
    resume: bool = False
    on_epoch: Callable | None = None    # called with each CNN epoch's metrics (the log line)
    on_call: Callable | None = None     # called with the CNN's position after each jitted call (tests)

    @property
    def seed(self) -> int:
        return self.profile.classic.seed

    @functools.cached_property
    def study_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n_rows`` training images in the files' (transposed) pixel order, and their labels."""
        from emnist_jax.data import file_rows

        n = min(self.profile.classic.n_rows, len(self.dataset.train_labels))
        return file_rows(self.dataset.train_images[:n]), self.dataset.train_labels[:n]

    def cnn_dataset(self) -> Dataset:
        """The data the CNN sees: the first ``cnn_train_images`` / ``cnn_test_images`` rows, where set."""
        d, p = self.dataset, self.profile
        n_train = min(p.cnn_train_images or len(d.train_labels), len(d.train_labels))
        n_test = min(p.cnn_test_images or len(d.test_labels), len(d.test_labels))
        if (n_train, n_test) == (len(d.train_labels), len(d.test_labels)):
            return d
        return dataclasses.replace(d, train_images=d.train_images[:n_train], train_labels=d.train_labels[:n_train],
                                   test_images=d.test_images[:n_test], test_labels=d.test_labels[:n_test])


def bar(total: int, desc: str):
    """A tqdm bar with ETA for a loop inside a stage, on a terminal only."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"           {desc}", leave=False, disable=not sys.stderr.isatty())


def _n_train(inputs: Inputs, n: int) -> int:
    return n - int(np.ceil(n * inputs.profile.classic.test_size))


def _span(values) -> str:
    values = list(values)
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}..{values[-1]}"


def describe(stage: str, inputs: Inputs) -> str:
    """One line saying what ``stage`` is about to do, in this run's sizes."""
    d, p, c = inputs.dataset, inputs.profile, inputs.profile.classic
    rows = min(c.n_rows, len(d.train_labels))
    train = _n_train(inputs, rows)
    if stage == "data":
        return f"sample grid and class balance of {len(d.train_labels):,} train / {len(d.test_labels):,} test images"
    if stage == "mi":
        sk = {"default": "; sklearn mutual_info_classif (k-NN, 3 neighbours, the study's call)",
              "discrete": "; sklearn mutual_info_classif (discrete)", "none": ""}[c.sklearn_mi]
        return f"JAX MI ({c.mi_bins} bins) on {rows:,} x 784 pixels{sk}"
    if stage == "rf":
        return (f"{len(c.ks)} forests of {c.rf_trees} trees on {train:,} x k pixels (k = {_span(c.ks)}), "
                f"scored on {rows - train:,}")
    if stage == "pca":
        return (f"{len(c.pca_components)} PCA sizes ({_span(c.pca_components)}) x (LogisticRegression, forest of "
                f"{c.rf_trees} trees, JAX OvR) on {train:,} rows")
    if stage == "logreg":
        return (f"3 fits on standardised PCA scores of {train:,} rows: the study's gradient ascent "
                f"({p.gd_iterations:,} iterations), JAX Newton, sklearn")
    if stage == "cnn":
        cnn = inputs.cnn_dataset()
        train = "all" if len(cnn.train_labels) == len(d.train_labels) else "the first"
        test = "all" if len(cnn.test_labels) == len(d.test_labels) else "the first"
        return (f"{p.cnn.epochs} epoch(s) of batch {p.cnn.batch_size} on {train} {len(cnn.train_labels):,} "
                f"train-file images (protocol {p.cnn.protocol}), then evaluation on {test} "
                f"{len(cnn.test_labels):,} test images")
    raise KeyError(stage)


# ---- the stages ------------------------------------------------------------------------------------

def data(inputs: Inputs) -> StageResult:
    d = inputs.dataset
    return StageResult({"class_counts": {"train": d.class_counts("train").tolist(),
                                         "test": d.class_counts("test").tolist()}})


def mi(inputs: Inputs) -> StageResult:
    from emnist_jax.classic import studies as baselines

    X, y = inputs.study_rows
    knn = inputs.profile.classic.sklearn_mi == "default"  # the long part; the others take seconds
    with bar(X.shape[1] if knn else 0, "pixels (sklearn k-NN MI)") as progress:
        study = baselines.mi_study(X, y, inputs.dataset.n_classes, inputs.profile.classic, inputs.seed,
                                   progress=(lambda j: progress.update()) if knn else None)
    arrays = {"jax": study.values}
    if study.sklearn is not None:
        arrays["sklearn"] = study.sklearn.values
    return StageResult({"mutual_information": study.to_json()}, arrays)


def rf(inputs: Inputs) -> StageResult:
    from emnist_jax.classic import studies as baselines

    X, y = inputs.study_rows
    cfg = inputs.profile.classic
    with bar(len([k for k in cfg.ks if k <= X.shape[1]]), "forests (k)") as progress:
        result = baselines.rf_study(X, y, inputs.dataset.n_classes, cfg, inputs.seed,
                                    progress=lambda k: progress.update())
    return StageResult({"rf_topk": result.to_json()})


def pca(inputs: Inputs) -> StageResult:
    from emnist_jax.classic import studies as baselines

    X, y = inputs.study_rows
    cfg = inputs.profile.classic
    with bar(len(cfg.pca_components), "PCA sizes (n)") as progress:
        result = baselines.pca_study(X, y, cfg, inputs.seed, progress=lambda n: progress.update())
    return StageResult({"pca": result.to_json()})


def logreg(inputs: Inputs) -> StageResult:
    from emnist_jax.classic import studies as baselines

    X, y = inputs.study_rows
    return StageResult(baselines.logreg_study(X, y, inputs.profile.classic, inputs.profile.gd_iterations,
                                              inputs.seed).to_json())


def cnn(inputs: Inputs) -> StageResult:
    from emnist_jax.cnn import train_and_evaluate

    dataset = inputs.cnn_dataset()
    result = train_and_evaluate(dataset, inputs.profile.cnn,
                                workdir=str(inputs.cnn_workdir) if inputs.cnn_workdir else None,
                                resume=inputs.resume, progress=sys.stderr.isatty(), on_epoch=inputs.on_epoch,
                                on_call=inputs.on_call)
    test = result.evaluations["test"]
    holdout = result.evaluations.get("holdout")
    metrics = {
        "n_params": result.n_params, "n_train": result.n_train, "n_train_file_rows": len(dataset.train_labels),
        "backend": result.backend, "devices": result.devices, "config": dataclasses.asdict(result.config),
        "test_accuracy": test.accuracy, "test_loss": test.loss,
        "holdout_accuracy": holdout.accuracy if holdout else None, "holdout_loss": holdout.loss if holdout else None,
        "holdout_n": holdout.n if holdout else None, "eval_seconds": test.seconds,
        "compile_seconds": result.compile_seconds,
        "epochs": [{"loss": h.loss, "accuracy": h.accuracy, "seconds": h.seconds,
                    "images_per_second": h.images_per_second} for h in result.history],
        "test": test.to_json(), "confusion": test.confusion.tolist(),
    }
    return StageResult({"cnn": metrics}, {"test_predictions": np.asarray(test.predictions)})


#: the stages in the order they run; tests may swap one for a stand-in (a fault, a signal)
STAGES: dict[str, Callable[[Inputs], StageResult]] = {
    "data": data, "mi": mi, "rf": rf, "pca": pca, "logreg": logreg, "cnn": cnn}
