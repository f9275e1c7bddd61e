"""The report's profiles, each defined once: what every stage runs under ``--profile NAME``.

``full`` is the original study's protocol (docs/original-study.md); ``quick`` keeps every stage but
shrinks it to minutes on 2 cores; ``smoke`` runs every stage, and the CNN's default execution path, in seconds (its numbers
mean nothing). Command lines override fields of these objects; they never restate them.
"""

from __future__ import annotations

import dataclasses

from emnist_jax.classic.config import ClassicConfig
from emnist_jax.cnn.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    purpose: str                       # what the profile is for (--help adds its sizes from the configs)
    classic: ClassicConfig             # mi, rf, pca and logreg stages
    gd_iterations: int                 # the study's gradient ascent (5,000 in the study)
    cnn: TrainConfig
    cnn_train_images: int | None = None  # first N rows of the train file for the CNN; None = all
    cnn_test_images: int | None = None   # first N rows of the test file for the CNN's evaluation; None = all

    @property
    def summary(self) -> str:
        """One line for --help: the purpose and the sizes, read from the configs (never restated)."""
        c = self.classic
        ks = f"k = {c.ks[0]}..{c.ks[-1]}" if len(c.ks) > 1 else f"k = {c.ks[0]}"
        rows = f", CNN on {self.cnn_train_images:,} rows" if self.cnn_train_images else ""
        rows += f", tested on {self.cnn_test_images:,}" if self.cnn_test_images else ""
        return (f"{self.purpose} ({c.n_rows:,} rows, {len(c.ks)} forests {ks}, {len(c.pca_components)} PCA sizes, "
                f"{self.cnn.epochs} CNN epoch{'s' if self.cnn.epochs > 1 else ''}{rows})")

    def with_seed(self, seed: int) -> "Profile":
        """This profile with ``seed`` for every split, forest and network (``--seed``)."""
        return dataclasses.replace(self, classic=dataclasses.replace(self.classic, seed=seed),
                                   cnn=dataclasses.replace(self.cnn, seed=seed))


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("full", "the original study's protocol", ClassicConfig(), gd_iterations=5000, cnn=TrainConfig(epochs=10)),
    Profile("quick", "every stage, shrunk to minutes on 2 cores",
            ClassicConfig(n_rows=20_000, ks=(2, 4, 8, 16, 20, 24, 32, 48, 64), rf_trees=30,
                          pca_components=(1, 2, 4, 8, 12, 16, 20, 24, 29), logreg_max_iter=2_000,
                          sklearn_mi="discrete"),
            gd_iterations=1000, cnn=TrainConfig(epochs=2)),
    # smoke: n_jobs=1 because starting worker processes costs more than its tiny fits; the CNN runs
    # the backend's default execution (on a CPU with AVX-512, the fused kernels under a scan of 4
    # steps), so that a smoke run goes through the path users train on; it trains on the first
    # 2,000 rows of the train file and is tested on the first 2,000 of the test file.
    Profile("smoke", "every code path in seconds, for tests and a first try (numbers meaningless)",
            ClassicConfig(n_rows=1000, ks=(2, 8, 32), rf_trees=5, pca_components=(2, 10), logreg_max_iter=200,
                          sklearn_mi="discrete", n_jobs=1),
            gd_iterations=50, cnn=TrainConfig(epochs=1), cnn_train_images=2000,
            cnn_test_images=2000),
)}
