"""The original study's CNN in Flax, trained with Optax Adam (``python -m emnist_jax.cnn``)."""

from emnist_jax.cnn.config import TrainConfig
from emnist_jax.cnn.evaluate import Evaluation
from emnist_jax.cnn.model import StudyCNN, n_params
from emnist_jax.cnn.train import TrainResult, evaluate, train_and_evaluate, train_step, eval_step

__all__ = ["Evaluation", "StudyCNN", "TrainConfig", "TrainResult", "eval_step", "evaluate", "n_params",
           "train_and_evaluate", "train_step"]
