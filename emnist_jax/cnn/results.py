"""What a training run reports: where it stands, each epoch's metrics, and its result."""

from __future__ import annotations

import dataclasses

from emnist_jax.cnn.config import TrainConfig
from emnist_jax.cnn.evaluation import Evaluation
from emnist_jax.cnn.steps import TrainState


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` (1-based) being trained and ``step`` steps of it done."""

    epoch: int
    step: int


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float        # mean training loss over the epoch (as Keras' running average at epoch end)
    accuracy: float
    seconds: float     # training only: compilation happens before the first epoch (TrainResult.compile_seconds)
    images_per_second: float

    def __str__(self) -> str:
        return (f"epoch {self.epoch:3d}: loss {self.loss:.4f}  accuracy {self.accuracy:.4f}  "
                f"{self.seconds:7.1f} s  {self.images_per_second:8.0f} images/s")


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    config: TrainConfig                  # resolved: the per-backend choices that ran
    n_params: int
    history: list[EpochMetrics]
    evaluations: dict[str, Evaluation]   # "holdout" (study protocol) and/or "test" (official test file)
    n_train: int
    backend: str                         # "cpu", "gpu" or "tpu"
    devices: int                         # over all processes
    compile_seconds: float = 0.0         # tracing + compiling the training program (~1 ms when reused)
    processes: int = 1
    resumed_from: Position | None = None  # where a resumed run started
