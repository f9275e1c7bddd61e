"""One-vs-rest logistic regression fitted in JAX (:mod:`emnist_jax.classic.logreg`), as a scikit-learn estimator."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from emnist_jax.classic.logreg import SOLVERS, ovr_fit, ovr_fit_gd


class OneVsRestLogisticRegression(ClassifierMixin, BaseEstimator):
    """One-vs-rest logistic regression fitted in JAX, with scikit-learn's estimator API.

    ``solver="newton"`` or ``"lbfgs"`` minimise sklearn's L2 objective (``C`` as in
    ``LogisticRegression``); ``solver="gd"`` runs the original study's gradient ascent
    (``alpha``, ``max_iter`` steps).
    Predictions use the learned linear model in float64 numpy, as sklearn's linear models do.
    Parameters are validated as scikit-learn's own (``InvalidParameterError``, a ``ValueError``);
    a fit that diverges raises :class:`FitDivergedError`; one that stops at ``max_iter`` warns.
    """

    _parameter_constraints: dict = {
        "C": [Interval(numbers.Real, 0, np.inf, closed="neither")],
        "solver": [StrOptions({"newton", "lbfgs", "gd"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, np.inf, closed="left")],
        "alpha": [Interval(numbers.Real, 0, np.inf, closed="neither")],
    }

    def __init__(self, C: float = 1.0, solver: str = "newton", max_iter: int = 100, tol: float = 1e-5,
                 alpha: float = 0.1):
        self.C = C
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.alpha = alpha

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y) -> "OneVsRestLogisticRegression":
        """Fit; on any error the estimator is left unfitted (no half-fitted model), then the error is raised."""
        try:
            return self._fit(X, y)
        except BaseException:
            for name in [name for name in vars(self) if name.endswith("_") and not name.startswith("_")]:
                delattr(self, name)
            raise

    def _fit(self, X, y) -> "OneVsRestLogisticRegression":
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(f"y holds only one class ({classes[0]!r}); at least 2 classes are needed")
        encoded = encoder.transform(y).astype(np.int32)
        if self.solver in SOLVERS:
            params = ovr_fit(X, encoded, len(classes), C=self.C, solver=self.solver, max_iter=self.max_iter,
                             tol=self.tol, bucket_shapes=True)
        else:
            params = ovr_fit_gd(X, encoded, len(classes), alpha=self.alpha, n_iter=self.max_iter,
                                bucket_shapes=True)
        # Two classes: keep only the problem 'classes_[1] vs rest', as sklearn's linear classifiers do.
        rows = slice(1, 2) if len(classes) == 2 else slice(None)
        self.classes_ = classes
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
