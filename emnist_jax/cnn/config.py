"""Training configuration. The defaults are the original study's recipe (section 6)."""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3           # Keras Adam() defaults
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7
    protocol: str = "study"               # "study": 67/33 split of the train file; "official": train/test files
    holdout_fraction: float = 0.33
    seed: int = 0
    eval_batch_size: int = 1024
    conv_impl: str = "auto"               # "xla", "slices" or "auto" (per backend, see below)
    steps_per_call: int = 0               # K steps per jitted call; 0 = per backend
    log_every: int = 50                   # host syncs (progress-bar updates) every N calls

    def resolved(self) -> "TrainConfig":
        """Fill the per-backend choices.

        CPU: measured with ``benchmarks/side_by_side_cnn.py`` (README, "CNN throughput"): 9-slice
        convolutions and 4 unrolled steps per call were fastest. GPU/TPU: XLA's native
        convolution, one step per call (the usual choice there; not measured by us).
        """
        cpu = jax.default_backend() == "cpu"
        return dataclasses.replace(
            self,
            conv_impl=self.conv_impl if self.conv_impl != "auto" else ("slices" if cpu else "xla"),
            steps_per_call=self.steps_per_call or (4 if cpu else 1),
        )
