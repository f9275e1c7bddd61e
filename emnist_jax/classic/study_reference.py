"""The original study's hand-written logistic regression (section 5), in numpy, as a reference.

Kept only to check that ``emnist_jax.classic.logreg.ovr_fit_gd`` computes the same thing (tests) and to time
it against the JAX version (benchmarks). Faithful to the study except where its code was broken: labels are
flattened (its (N, 1) column would broadcast into an N x N array) and prediction is one argmax
instead of a Python loop per sample.
"""

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_binary(X_bias: np.ndarray, target: np.ndarray, alpha: float, max_iter: int,
               loss_history: np.ndarray) -> np.ndarray:
    theta = np.zeros(X_bias.shape[1], X_bias.dtype)
    m = len(target)
    for i in range(max_iter):
        h = sigmoid(X_bias @ theta)
        with np.errstate(divide="ignore", invalid="ignore"):  # the study does not clip h
            loss_history[i] = np.mean(-target * np.log(h) - (1 - target) * np.log(1 - h))
        theta = theta + alpha * ((target - h) @ X_bias) / m
    return theta


def fit(X: np.ndarray, y: np.ndarray, alpha: float = 0.1, max_iter: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(classes, theta) with theta (classes, features + 1); column 0 is the intercept.

    Like the study, it tracks the loss every iteration in one history array shared by all classes.
    """
    X_bias = np.insert(X, 0, 1.0, axis=1)
    classes = np.unique(y)
    history = np.zeros(max_iter)
    theta = np.stack([fit_binary(X_bias, (y == c).astype(X.dtype), alpha, max_iter, history) for c in classes])
    return classes, theta


def predict(classes: np.ndarray, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    return classes[np.argmax(sigmoid(np.insert(X, 0, 1.0, axis=1) @ theta.T), axis=1)]
