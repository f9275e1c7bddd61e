"""The report's profiles, each defined once: what every stage runs under ``--profile NAME``.

``full`` is the original study's protocol (ORIGINAL_STUDY.md); ``quick`` keeps every stage but
shrinks it to minutes on 2 cores; ``smoke`` exercises every code path in seconds (its numbers
mean nothing). Command lines override fields of these objects; they never restate them.
"""

from __future__ import annotations

import dataclasses

from emnist_jax.baselines import ClassicConfig
from emnist_jax.cnn.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    summary: str                       # one line for --help
    classic: ClassicConfig             # mi, rf, pca and logreg stages
    gd_iterations: int                 # the study's gradient ascent (5,000 in the study)
    cnn: TrainConfig
    cnn_train_images: int | None = None  # first N rows of the train file for the CNN; None = all


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("full", "the original study's protocol (50,000 rows, k = 2..64, PCA 1..29, 10 CNN epochs)",
            ClassicConfig(), gd_iterations=5000, cnn=TrainConfig(epochs=10)),
    Profile("quick", "every stage, shrunk to minutes on 2 cores (20,000 rows, 9 k, 9 PCA sizes, 2 CNN epochs)",
            ClassicConfig(n_rows=20_000, ks=(2, 4, 8, 16, 20, 24, 32, 48, 64), rf_trees=30,
                          pca_components=(1, 2, 4, 8, 12, 16, 20, 24, 29), logreg_max_iter=2_000,
                          sklearn_mi="discrete"),
            gd_iterations=1000, cnn=TrainConfig(epochs=2)),
    Profile("smoke", "every code path in seconds, for tests and a first try (numbers meaningless)",
            ClassicConfig(n_rows=2000, ks=(2, 8, 32), rf_trees=5, pca_components=(2, 10), logreg_max_iter=200,
                          sklearn_mi="discrete"),
            gd_iterations=50, cnn=TrainConfig(epochs=1), cnn_train_images=2000),
)}
