"""The original study's CNN in Flax, trained with Optax Adam (``python -m emnist_jax.cnn``).

Names are imported on first use, so ``import emnist_jax.cnn.config`` (and the command line's
``--help``) does not pay for importing JAX.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "TrainConfig": "config", "ConfigError": "config", "BACKEND_DEFAULTS": "config",
    "Evaluation": "evaluation", "summarize": "evaluation", "confusion_matrix": "evaluation",
    "StudyCNN": "model", "n_params": "model",
    "CheckpointError": "checkpoints", "CheckpointWarning": "checkpoints",
    "TrainingInterrupted": "interrupts",
    "EpochMetrics": "results", "Position": "results", "TrainResult": "results",
    "train_step": "steps", "eval_step": "steps", "evaluate": "train", "train_and_evaluate": "train",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"emnist_jax.cnn.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'emnist_jax.cnn' has no attribute {name!r}")
