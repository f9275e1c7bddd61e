"""Re-exports :mod:`emnist_jax.classic.logreg` and its scikit-learn estimator at the path users import them from."""

from emnist_jax.classic.estimator import OneVsRestLogisticRegression
from emnist_jax.classic.logreg import FitDivergedError, OvRParams, decision_scores, ovr_fit, ovr_fit_gd, ovr_predict

__all__ = ["FitDivergedError", "OneVsRestLogisticRegression", "OvRParams", "decision_scores", "ovr_fit", "ovr_fit_gd",
           "ovr_predict"]
