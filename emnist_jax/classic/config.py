"""The classic studies' configuration, validated when made; the defaults are the original study's protocol.

Kept apart from the studies (which import scikit-learn and JAX) so that the report's profiles, and
with them ``--help``, load in a fraction of a second; also the argument checks every classic module
shares.
"""

from __future__ import annotations

import dataclasses
import numbers

SKLEARN_MI_CHOICES = ("default", "discrete", "none")
MAX_SEED = 2**32 - 1   # sklearn's random_state and a 32-bit PRNG seed both stop here


def is_integer(value) -> bool:
    """An int or numpy integer, not a bool (numpy's integers register as ``numbers.Integral``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_counts(values, upper: int, name: str) -> None:
    """``ValueError`` unless ``values`` is a non-empty sequence of integers in 1..upper."""
    values = list(values)
    if not values or not all(is_integer(v) for v in values) or min(values) < 1 or max(values) > upper:
        raise ValueError(f"{name} must be integers in 1..{upper}, got {values}")


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

    def __post_init__(self) -> None:
        for name in ("ks", "pca_components"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise ValueError(f"ClassicConfig.{name} must be a sequence of positive integers, got {values!r}")
            values = tuple(values)
            if not values or not all(is_integer(v) and v >= 1 for v in values):
                raise ValueError(f"ClassicConfig.{name} must be a non-empty sequence of positive integers, "
                                 f"got {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        checks = (
            ("n_rows", is_integer(self.n_rows) and self.n_rows >= 2, "an integer >= 2"),
            ("test_size", isinstance(self.test_size, numbers.Real) and not isinstance(self.test_size, bool)
             and 0 < self.test_size < 1, "a number strictly between 0 and 1"),
            ("rf_trees", is_integer(self.rf_trees) and self.rf_trees >= 1, "an integer >= 1"),
            ("logreg_max_iter", is_integer(self.logreg_max_iter) and self.logreg_max_iter >= 1, "an integer >= 1"),
            ("sklearn_mi", self.sklearn_mi in SKLEARN_MI_CHOICES, f"one of {', '.join(SKLEARN_MI_CHOICES)}"),
            ("mi_bins", is_integer(self.mi_bins) and 2 <= self.mi_bins <= 256, "an integer in 2..256"),
            ("seed", is_integer(self.seed) and 0 <= self.seed <= MAX_SEED, "an integer in 0..2**32-1"),
            ("n_jobs", self.n_jobs is None or (is_integer(self.n_jobs) and self.n_jobs != 0),
             "None or a non-zero integer"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"ClassicConfig.{name} must be {expected}, got {getattr(self, name)!r}")
