"""One-vs-rest logistic regression as pure JAX functions (its scikit-learn estimator: ``estimator.py``).

Three solvers, each one binary problem per class, all classes at once (``jax.vmap`` over classes,
or for ``gd`` one matrix product over all classes) and jitted whole (no Python loop over classes
or samples, no host round trip inside a fit):

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

Edges: parameters are checked before anything is compiled (``ValueError`` naming the parameter);
X must fit float32, the precision of every fit (``ValueError`` with the largest magnitude found);
a fit whose coefficients come out NaN or infinite raises :class:`FitDivergedError` naming the
likely cause, never returns them; a penalised fit that stops at ``max_iter`` warns
(``ConvergenceWarning``), as scikit-learn's solvers do.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import optax
from sklearn.exceptions import ConvergenceWarning

from emnist_jax.classic.config import is_integer


class OvRParams(NamedTuple):
    """coef: (classes, features); intercept: (classes,); n_iter: iterations each class used."""

    coef: jax.Array
    intercept: jax.Array
    n_iter: jax.Array


# ---- pure core --------------------------------------------------------------------------------

def full_float32(function):
    """Trace ``function`` with float32 matrix products at full precision.

    GPUs multiply float32 matrices in TF32 (10-bit mantissa) by default; with it Newton's
    gradient never got below ``tol``: on an H200, the full profile's PCA sweep stopped 6 to 19 of
    62 classes at max_iter in every fit (benchmarks/device_check.py). CPUs compute float32 in full anyway.
    """
    @functools.wraps(function)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return function(*args, **kwargs)
    return traced


def _targets(labels: jax.Array, n_classes: int) -> jax.Array:
    """(classes, N) 0/1 targets: row c is 'label == c'."""
    return (labels[None, :] == jnp.arange(n_classes)[:, None]).astype(jnp.float32)


def _weights(X: jax.Array, weight: jax.Array | None) -> jax.Array:
    """Per-row weights: 1 for a real row, 0 for padding (all ones when none are given)."""
    return jnp.ones(X.shape[0], X.dtype) if weight is None else weight.astype(X.dtype)


@partial(jax.jit, static_argnames=("n_classes", "n_iter"))
@full_float32
def _fit_gd(X: jax.Array, labels: jax.Array, n_classes: int, alpha: float, n_iter: int,
            weight: jax.Array | None = None) -> OvRParams:
    # All classes' binary problems at once, as two matrix products per step: the same arithmetic
    # as vmap over classes, 2.2x faster on XLA CPU (35,000 x 29, 62 classes: 1.35 s against 2.91 s
    # for 300 steps), where the vmapped form became 62 batched matrix-vector products.
    X_bias = jnp.concatenate([jnp.ones((X.shape[0], 1), X.dtype), X], axis=1)
    weight = _weights(X, weight)
    m = weight.sum()
    targets = _targets(labels, n_classes).T                  # (N, classes)

    def step(_, theta):                                      # theta: (features + 1, classes)
        h = jax.nn.sigmoid(X_bias @ theta)
        return theta + alpha * (X_bias.T @ ((targets - h) * weight[:, None])) / m   # ascent on the log-likelihood

    theta = jax.lax.fori_loop(0, n_iter, step, jnp.zeros((X_bias.shape[1], n_classes), X.dtype))
    return OvRParams(theta[1:].T, theta[0], jnp.full(n_classes, n_iter))


def binary_objective(w: jax.Array, X: jax.Array, target: jax.Array, C: float,
                     weight: jax.Array | None = None) -> jax.Array:
    """sklearn's L2 logistic objective for one class; ``w[-1]`` is the (unpenalised) intercept."""
    z = X @ w[:-1] + w[-1]
    return C * jnp.sum(_weights(X, weight) * (jnp.logaddexp(0.0, z) - target * z)) + 0.5 * jnp.dot(w[:-1], w[:-1])


@partial(jax.jit, static_argnames=("n_classes",))
@full_float32
def _fit_newton(X: jax.Array, labels: jax.Array, n_classes: int, C: float, max_iter: int,
                tol: float, weight: jax.Array | None = None) -> OvRParams:
    X_one = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    penalty = jnp.eye(X_one.shape[1], dtype=X.dtype).at[-1, -1].set(0.0)  # intercept unpenalised
    weight = _weights(X, weight)
    threshold = tol * weight.sum()

    def binary(target: jax.Array) -> tuple[jax.Array, jax.Array]:
        def step(carry):
            w, _, i = carry
            p = jax.nn.sigmoid(X_one @ w)
            grad = C * ((p - target) * weight) @ X_one + penalty @ w
            hessian = C * (X_one.T * (p * (1 - p) * weight)) @ X_one + penalty
            # The penalised Hessian is symmetric positive definite: Cholesky (also ~4x faster to compile than LU).
            step = jax.scipy.linalg.solve(hessian, grad, assume_a="pos")
            # An overflowed Newton system has no meaningful step: make the weights NaN, which ends
            # the loop (NaN > threshold is False) and is reported as a divergence.
            overflow = ~(jnp.isfinite(hessian).all() & jnp.isfinite(grad).all())
            return jnp.where(overflow, jnp.nan, w - step), jnp.max(jnp.abs(grad)), i + 1

        def not_done(carry):
            return (carry[1] > threshold) & (carry[2] < max_iter)

        w, _, n = jax.lax.while_loop(not_done, step, (jnp.zeros(X_one.shape[1], X.dtype), jnp.inf, 0))
        return w, n

    w, n = jax.vmap(binary)(_targets(labels, n_classes))
    return OvRParams(w[:, :-1], w[:, -1], n)


@partial(jax.jit, static_argnames=("n_classes",))
@full_float32
def _fit_lbfgs(X: jax.Array, labels: jax.Array, n_classes: int, C: float, max_iter: int,
               tol: float, weight: jax.Array | None = None) -> OvRParams:
    solver = optax.lbfgs()
    weight = _weights(X, weight)
    threshold = tol * weight.sum()

    def binary(target: jax.Array) -> tuple[jax.Array, jax.Array]:
        objective = partial(binary_objective, X=X, target=target, C=C, weight=weight)
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry):
            w, state, _, i = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = solver.update(grad, state, w, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(w, updates), state, jnp.max(jnp.abs(grad)), i + 1

        def not_done(carry):
            return (carry[2] > threshold) & (carry[3] < max_iter)

        w0 = jnp.zeros(X.shape[1] + 1, X.dtype)
        w, _, _, n = jax.lax.while_loop(not_done, step, (w0, solver.init(w0), jnp.inf, 0))
        return w, n

    w, n = jax.vmap(binary)(_targets(labels, n_classes))
    return OvRParams(w[:, :-1], w[:, -1], n)


@jax.jit
@full_float32
def decision_scores(params: OvRParams, X: jax.Array) -> jax.Array:
    """(N, classes) linear scores; the sigmoid of each is that class's one-vs-rest probability."""
    return X @ params.coef.T + params.intercept


@jax.jit
def ovr_predict(params: OvRParams, X: jax.Array) -> jax.Array:
    """Class index with the largest score (= largest one-vs-rest sigmoid, as the study)."""
    return jnp.argmax(decision_scores(params, X), axis=1)


# ---- checked entry points ------------------------------------------------------------------

#: every fit runs in float32; larger magnitudes would become infinity
FLOAT32_MAX = float(np.finfo(np.float32).max)
SOLVERS = ("newton", "lbfgs")


class FitDivergedError(FloatingPointError):
    """A fit produced NaN or infinite coefficients (the message names the likely cause)."""


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value, name: str, allow_zero: bool = False) -> float:
    if not _is_real(value) or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


@jax.jit
def _device_summary(X: jax.Array, labels: jax.Array) -> tuple[jax.Array, ...]:
    """All-finite, max |x|, smallest and largest label: what :func:`_check` needs, in one program."""
    return jnp.isfinite(X).all(), jnp.abs(X).max(), labels.min(), labels.max()


def _check(X, labels, n_classes: int) -> tuple[np.ndarray | jax.Array, np.ndarray | jax.Array, float]:
    """float32 X, int32 labels and max |x|, validated; numpy stays numpy, device arrays stay on their device.

    Device arrays are checked there: only four scalars come back, explicitly (``jax.device_get``),
    never X itself (tests/test_logreg.py runs the fits under a transfer guard).
    """
    n_classes = _check_int(n_classes, "n_classes", 2)
    on_device = isinstance(X, jax.Array)
    X = X if on_device else np.asarray(X)
    labels = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    if not (jnp.issubdtype(X.dtype, jnp.floating) or jnp.issubdtype(X.dtype, jnp.integer) or X.dtype == bool):
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have at least one sample and one feature, got shape {X.shape}")
    if labels.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X, got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"y must hold integer class indices 0..{n_classes - 1}, got dtype {labels.dtype}")
    if on_device or isinstance(labels, jax.Array):
        finite, largest, low, high = jax.device_get(_device_summary(jnp.asarray(X), jnp.asarray(labels)))
    else:
        finite, largest, low, high = np.isfinite(X).all(), np.abs(X).max(), labels.min(), labels.max()
    largest, low, high = float(largest), int(low), int(high)
    if not finite:
        raise ValueError("X contains NaN or infinity")
    if largest > FLOAT32_MAX:
        raise ValueError(f"X has values beyond float32's range (max |x| = {largest:.3g}); the fits run in "
                         f"float32: rescale X")
    if low < 0 or high >= n_classes:
        raise ValueError(f"y must hold integer class indices 0..{n_classes - 1}, found {low}..{high}")
    if low == high:
        raise ValueError("y holds a single class; logistic regression needs at least 2")
    if on_device:
        return X.astype(jnp.float32), jnp.asarray(labels, jnp.int32), largest
    return X.astype(np.float32, copy=False), np.asarray(labels, np.int32), largest


def bucket(n: int) -> int:
    """``n`` rounded up so that nearby sizes share one compiled fit.

    A power of two up to 1024 (small fits cost nothing: compiling them does), then one of 8
    sizes per octave (at most 12.5 % padding).
    """
    if n <= 1024:
        return max(8, 1 << (n - 1).bit_length())
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def _padded(X, labels, pad: bool):
    """X and labels padded to :func:`bucket` sizes, and the row weights that switch the padding off.

    Padded rows weigh 0; padded features are zero columns, whose coefficients stay exactly 0
    under every solver (their gradient is 0, or the penalty's own), and are cut off afterwards.
    Numpy input is padded on the host (no compilation per shape), device input on its device.
    """
    if not pad:
        return X, labels, None
    xp = jnp if isinstance(X, jax.Array) else np
    n, d = X.shape
    rows, columns = bucket(n), bucket(d)
    weight = (xp.arange(rows) < n).astype(X.dtype)
    return xp.pad(X, ((0, rows - n), (0, columns - d))), xp.pad(labels, (0, rows - n)), weight


@partial(jax.jit, static_argnames=("n_features",))
def _finish(params: OvRParams, n_features: int, max_iter: int) -> tuple[OvRParams, jax.Array, jax.Array]:
    """Params without padded features; per class 'not finite'; how many classes hit ``max_iter``."""
    params = params._replace(coef=params.coef[:, :n_features])
    bad = ~(jnp.isfinite(params.coef).all(axis=1) & jnp.isfinite(params.intercept))
    return params, bad, (params.n_iter >= max_iter).sum()


def _checked_result(params: OvRParams, n_features: int, max_iter: int, largest: float, what: str,
                    cause: str) -> tuple[OvRParams, int]:
    """(params, classes that hit max_iter); :class:`FitDivergedError` if a coefficient is not finite."""
    params, bad, stopped = _finish(params, n_features=n_features, max_iter=max_iter)
    bad, stopped = jax.device_get((bad, stopped))
    if bad.any():
        raise FitDivergedError(f"{what} produced non-finite coefficients for {int(bad.sum())} of {len(bad)} "
                               f"classes (max |x| = {largest:.3g}): {cause}")
    return params, int(stopped)


def ovr_fit(X, y, n_classes: int, C: float = 1.0, solver: str = "newton", max_iter: int = 100,
            tol: float = 1e-5, bucket_shapes: bool = False) -> OvRParams:
    """L2-penalised one-vs-rest logistic regression, one class per vmap lane.

    Warns ``ConvergenceWarning`` if a class used all ``max_iter`` iterations; raises
    :class:`FitDivergedError` if the coefficients are not finite. ``bucket_shapes=True`` pads X
    to :func:`bucket` sizes (rows weighted 0), so that fits of many nearby shapes compile once;
    the optimum is the same, the float rounding not bit for bit.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be 'newton' or 'lbfgs', got {solver!r}")
    C = _check_positive(C, "C")
    max_iter = _check_int(max_iter, "max_iter", 1)
    tol = _check_positive(tol, "tol", allow_zero=True)
    X, y, largest = _check(X, y, n_classes)
    fit = _fit_newton if solver == "newton" else _fit_lbfgs
    X_fit, y_fit, weight = _padded(X, y, bucket_shapes)
    params, stopped = _checked_result(
        fit(X_fit, y_fit, n_classes=n_classes, C=C, max_iter=max_iter, tol=tol, weight=weight), X.shape[1],
        max_iter, largest, f"ovr_fit(solver={solver!r}, C={C:g})",
        "the penalty is too weak for this data (C too large, e.g. on separable classes) or X is badly scaled: "
        "lower C or standardise X")
    if stopped:
        warnings.warn(f"ovr_fit(solver={solver!r}) did not converge for {stopped} of {n_classes} classes in "
                      f"max_iter={max_iter} iterations: raise max_iter, lower C or standardise X",
                      ConvergenceWarning, stacklevel=2)
    return params


def ovr_fit_gd(X, y, n_classes: int, alpha: float = 0.1, n_iter: int = 5000,
               bucket_shapes: bool = False) -> OvRParams:
    """The original study's one-vs-rest gradient ascent (alpha 0.1, 5000 iterations, no penalty).

    Runs exactly ``n_iter`` steps (no convergence test, as the study); raises
    :class:`FitDivergedError` if the coefficients are not finite. ``bucket_shapes`` as in :func:`ovr_fit`.
    """
    alpha = _check_positive(alpha, "alpha")
    n_iter = _check_int(n_iter, "n_iter", 1)
    X, y, largest = _check(X, y, n_classes)
    X_fit, y_fit, weight = _padded(X, y, bucket_shapes)
    params, _ = _checked_result(_fit_gd(X_fit, y_fit, n_classes=n_classes, alpha=alpha, n_iter=n_iter, weight=weight),
                                X.shape[1], n_iter, largest, f"ovr_fit_gd(alpha={alpha:g})",
                                "the step is too large for this data's scale: lower alpha or standardise X")
    return params
