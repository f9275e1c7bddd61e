"""One-vs-rest logistic regression as pure JAX functions, plus a scikit-learn estimator.

Three solvers, each one binary problem per class, ``jax.vmap``-ed over classes and jitted whole
(no Python loop over classes or samples, no host round trip inside a fit):

- ``gd``: the original study's algorithm (section 5): a bias column, sigmoid, full-batch
  gradient ascent on the log-likelihood with step ``alpha`` for ``n_iter`` iterations from zero
  weights, no penalty; predict = argmax of the class scores.
- ``newton`` (default) and ``lbfgs``: the L2-penalised logistic loss with scikit-learn's
  scaling (``C * sum(log-loss) + ||w||^2 / 2``, intercept not penalised), minimised by Newton's
  method (IRLS; exact Hessian, best for the study's <= 29 PCA features) or by optax's L-BFGS
  (memory linear in the features), until the gradient's max-norm is below ``tol`` times the
  number of samples or ``max_iter`` is reached.

    >>> params = ovr_fit(X, y, n_classes=62)               # newton
    >>> params = ovr_fit_gd(X, y, n_classes=62)            # the study's algorithm
    >>> predicted = ovr_predict(params, X_test)
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class OvRParams(NamedTuple):
    """coef: (classes, features); intercept: (classes,); n_iter: iterations each class used."""

    coef: jax.Array
    intercept: jax.Array
    n_iter: jax.Array


# ---- pure core --------------------------------------------------------------------------------

def _targets(labels: jax.Array, n_classes: int) -> jax.Array:
    """(classes, N) 0/1 targets: row c is 'label == c'."""
    return (labels[None, :] == jnp.arange(n_classes)[:, None]).astype(jnp.float32)


@partial(jax.jit, static_argnames=("n_classes", "n_iter"))
def _fit_gd(X: jax.Array, labels: jax.Array, n_classes: int, alpha: float, n_iter: int) -> OvRParams:
    X_bias = jnp.concatenate([jnp.ones((X.shape[0], 1), X.dtype), X], axis=1)
    m = X.shape[0]

    def binary(target: jax.Array) -> jax.Array:
        def step(_, theta):
            h = jax.nn.sigmoid(X_bias @ theta)
            return theta + alpha * ((target - h) @ X_bias) / m   # ascent on the log-likelihood
        return jax.lax.fori_loop(0, n_iter, step, jnp.zeros(X_bias.shape[1], X.dtype))

    theta = jax.vmap(binary)(_targets(labels, n_classes))
    return OvRParams(theta[:, 1:], theta[:, 0], jnp.full(n_classes, n_iter))


def binary_objective(w: jax.Array, X: jax.Array, target: jax.Array, C: float) -> jax.Array:
    """sklearn's L2 logistic objective for one class; ``w[-1]`` is the (unpenalised) intercept."""
    z = X @ w[:-1] + w[-1]
    return C * jnp.sum(jnp.logaddexp(0.0, z) - target * z) + 0.5 * jnp.dot(w[:-1], w[:-1])


@partial(jax.jit, static_argnames=("n_classes", "max_iter"))
def _fit_newton(X: jax.Array, labels: jax.Array, n_classes: int, C: float, max_iter: int,
                tol: float) -> OvRParams:
    X_one = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    penalty = jnp.eye(X_one.shape[1], dtype=X.dtype).at[-1, -1].set(0.0)  # intercept unpenalised

    def binary(target: jax.Array) -> tuple[jax.Array, jax.Array]:
        def step(carry):
            w, _, i = carry
            p = jax.nn.sigmoid(X_one @ w)
            grad = C * (p - target) @ X_one + penalty @ w
            hessian = C * (X_one.T * (p * (1 - p))) @ X_one + penalty
            return w - jnp.linalg.solve(hessian, grad), jnp.max(jnp.abs(grad)), i + 1

        def not_done(carry):
            return (carry[1] > tol * X.shape[0]) & (carry[2] < max_iter)

        w, _, n = jax.lax.while_loop(not_done, step, (jnp.zeros(X_one.shape[1], X.dtype), jnp.inf, 0))
        return w, n

    w, n = jax.vmap(binary)(_targets(labels, n_classes))
    return OvRParams(w[:, :-1], w[:, -1], n)


@partial(jax.jit, static_argnames=("n_classes", "max_iter"))
def _fit_lbfgs(X: jax.Array, labels: jax.Array, n_classes: int, C: float, max_iter: int,
               tol: float) -> OvRParams:
    solver = optax.lbfgs()

    def binary(target: jax.Array) -> tuple[jax.Array, jax.Array]:
        objective = partial(binary_objective, X=X, target=target, C=C)
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            w, state, _, i = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = solver.update(grad, state, w, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(w, updates), state, jnp.max(jnp.abs(grad)), i + 1

        def not_done(carry):
            return (carry[2] > tol * X.shape[0]) & (carry[3] < max_iter)

        w0 = jnp.zeros(X.shape[1] + 1, X.dtype)
        w, _, _, n = jax.lax.while_loop(not_done, step, (w0, solver.init(w0), jnp.inf, 0))
        return w, n

    w, n = jax.vmap(binary)(_targets(labels, n_classes))
    return OvRParams(w[:, :-1], w[:, -1], n)


@jax.jit
def decision_scores(params: OvRParams, X: jax.Array) -> jax.Array:
    """(N, classes) linear scores; the sigmoid of each is that class's one-vs-rest probability."""
    return X @ params.coef.T + params.intercept


@jax.jit
def ovr_predict(params: OvRParams, X: jax.Array) -> jax.Array:
    """Class index with the largest score (= largest one-vs-rest sigmoid, as the study)."""
    return jnp.argmax(decision_scores(params, X), axis=1)


# ---- checked entry points ------------------------------------------------------------------

def _check(X, labels, n_classes: int) -> tuple[jax.Array, jax.Array]:
    X = np.asarray(X, np.float32)
    labels = np.asarray(labels)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if labels.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {labels.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or \
            labels.max(initial=0) >= n_classes:
        raise ValueError(f"y must hold integer class indices 0..{n_classes - 1}")
    if len(np.unique(labels)) < 2:
        raise ValueError("y holds a single class; logistic regression needs at least 2")
    return jnp.asarray(X), jnp.asarray(labels, jnp.int32)


def ovr_fit(X, y, n_classes: int, C: float = 1.0, solver: str = "newton", max_iter: int = 100,
            tol: float = 1e-5) -> OvRParams:
    """L2-penalised one-vs-rest logistic regression, one class per vmap lane."""
    if solver not in ("newton", "lbfgs"):
        raise ValueError(f"solver must be 'newton' or 'lbfgs', got {solver!r}")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    X, y = _check(X, y, n_classes)
    fit = _fit_newton if solver == "newton" else _fit_lbfgs
    return fit(X, y, n_classes=n_classes, C=float(C), max_iter=int(max_iter), tol=float(tol))


def ovr_fit_gd(X, y, n_classes: int, alpha: float = 0.1, n_iter: int = 5000) -> OvRParams:
    """The original study's one-vs-rest gradient ascent (alpha 0.1, 5000 iterations, no penalty)."""
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    X, y = _check(X, y, n_classes)
    return _fit_gd(X, y, n_classes=n_classes, alpha=float(alpha), n_iter=int(n_iter))


# ---- scikit-learn estimator ----------------------------------------------------------------

class OneVsRestLogisticRegression(ClassifierMixin, BaseEstimator):
    """One-vs-rest logistic regression fitted in JAX, with scikit-learn's estimator API.

    ``solver="newton"`` or ``"lbfgs"`` minimise sklearn's L2 objective (``C`` as in
    ``LogisticRegression``); ``solver="gd"`` runs the original study's gradient ascent
    (``alpha``, ``max_iter`` steps).
    Predictions use the learned linear model in float64 numpy, as sklearn's linear models do.
    """

    def __init__(self, C: float = 1.0, solver: str = "newton", max_iter: int = 100, tol: float = 1e-5,
                 alpha: float = 0.1):
        self.C = C
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.alpha = alpha

    def fit(self, X, y) -> "OneVsRestLogisticRegression":
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"y holds only one class ({self.classes_[0]!r}); at least 2 classes are needed")
        if self.solver not in ("newton", "lbfgs", "gd"):
            raise ValueError(f"solver must be 'newton', 'lbfgs' or 'gd', got {self.solver!r}")
        encoded = encoder.transform(y).astype(np.int32)
        # Two classes: keep only the problem 'classes_[1] vs rest', as sklearn's linear classifiers do.
        binary = len(self.classes_) == 2
        if self.solver in ("newton", "lbfgs"):
            params = ovr_fit(X, encoded, len(self.classes_), C=self.C, solver=self.solver,
                             max_iter=self.max_iter, tol=self.tol)
        else:
            params = ovr_fit_gd(X, encoded, len(self.classes_), alpha=self.alpha, n_iter=self.max_iter)
        rows = slice(1, 2) if binary else slice(None)
        self.coef_ = np.asarray(params.coef, np.float64)[rows]
        self.intercept_ = np.asarray(params.intercept, np.float64)[rows]
        self.n_iter_ = np.asarray(params.n_iter)[rows]
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        """One-vs-rest sigmoids normalised to sum to one (sklearn's OvR convention)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1.0 - p, p])
        p = 1.0 / (1.0 + np.exp(-scores))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]
