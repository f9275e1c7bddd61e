"""Reliability of the classic studies' entry points: one table of faults per entry point.

Each case: the fault, the expected exception (or warning), a fragment of its message, and a
check that nothing partial was left: the caller's arrays are unchanged and a failed estimator
fit leaves the estimator unfitted. Values that would fit NaN or one-class models without a word
(C=nan, C=inf, C=1e30 on separable data, X scaled by 1e20, alpha=-1, max_iter=2.5) are refused,
and ``mutual_information`` refuses labels outside 0..n_classes-1 rather than counting them into
other pixels' counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.validation import check_is_fitted

from emnist_jax.classic import logreg, studies
from emnist_jax.classic.config import ClassicConfig
from emnist_jax.classic.estimator import OneVsRestLogisticRegression
from emnist_jax.classic.logreg import FitDivergedError
from emnist_jax.classic.mutual_info import mutual_information
from emnist_jax.classic.pca import standardized_pca
from emnist_jax.classic.pca_sweep import pca_sweep

NAN, INF = float("nan"), float("inf")

# 60 rows, 2 features, 3 well separated classes: an unpenalised or barely penalised fit diverges.
_X, _Y = make_blobs(60, centers=3, cluster_std=0.3, random_state=0)
SEPARABLE = (_X.astype(np.float64), _Y)
RNG = np.random.default_rng(0)
PIXELS = (RNG.integers(0, 256, (40, 6)).astype(np.uint8), RNG.integers(0, 3, 40))


def run_case(call, args, expected, fragment):
    """Call, expecting ``expected`` (an exception, or a warning) whose message holds ``fragment``; args unchanged."""
    before = [np.array(a, copy=True) for a in args]
    if issubclass(expected, Warning):
        with pytest.warns(expected, match=fragment):
            call(*args)
    else:
        with pytest.raises(expected, match=fragment):
            call(*args)
    for old, new in zip(before, args):
        np.testing.assert_array_equal(old, new)  # the caller's data are never touched


# ---- the estimator --------------------------------------------------------------------------------

ESTIMATOR_CASES = [
    # id, estimator parameters, X transform, expected, message fragment
    ("C-nan", dict(C=NAN), None, ValueError, "'C' parameter .* range \\(0.0, inf\\)"),
    ("C-inf", dict(C=INF), None, ValueError, "'C' parameter"),
    ("C-zero", dict(C=0), None, ValueError, "'C' parameter"),
    ("C-negative", dict(C=-1.0), None, ValueError, "'C' parameter"),
    ("C-string", dict(C="1"), None, ValueError, "'C' parameter"),
    ("C-1e30-separable", dict(C=1e30), None, FitDivergedError, "non-finite coefficients.*lower C"),
    ("X-times-1e20", dict(), lambda X: X * 1e20, FitDivergedError, r"max \|x\| = 4\.\d+e\+20"),
    ("X-beyond-float32", dict(), lambda X: X * 1e300, ValueError,
     r"beyond float32's range \(max \|x\| = 4\.\d+e\+300\)"),
    ("X-nan", dict(), lambda X: np.where(X > 4, NAN, X), ValueError, "NaN"),
    ("gd-alpha-negative", dict(solver="gd", alpha=-1), None, ValueError, "'alpha' parameter"),
    ("gd-alpha-nan", dict(solver="gd", alpha=NAN), None, ValueError, "'alpha' parameter"),
    ("gd-alpha-huge-diverges", dict(solver="gd", alpha=1e38, max_iter=5), None, FitDivergedError,
     "alpha=1e\\+38.*lower alpha"),
    ("max_iter-2.5", dict(max_iter=2.5), None, ValueError, "'max_iter' parameter"),
    ("max_iter-zero", dict(max_iter=0), None, ValueError, "'max_iter' parameter"),
    ("tol-negative", dict(tol=-1e-3), None, ValueError, "'tol' parameter"),
    ("tol-nan", dict(tol=NAN), None, ValueError, "'tol' parameter"),
    ("solver-unknown", dict(solver="sgd"), None, ValueError, "'solver' parameter"),
    ("stops-at-max_iter", dict(max_iter=1, tol=0.0), None, ConvergenceWarning, "did not converge"),
]


@pytest.mark.parametrize("params, transform, expected, fragment",
                         [case[1:] for case in ESTIMATOR_CASES], ids=[case[0] for case in ESTIMATOR_CASES])
def test_estimator_fault(params, transform, expected, fragment):
    X, y = SEPARABLE
    X = transform(X) if transform else X.copy()
    estimator = OneVsRestLogisticRegression(**params)
    run_case(estimator.fit, (X, y), expected, fragment)
    if not issubclass(expected, Warning):
        with pytest.raises(NotFittedError):  # no half-fitted model
            check_is_fitted(estimator)


def test_estimator_failed_refit_leaves_no_stale_model():
    X, y = SEPARABLE
    estimator = OneVsRestLogisticRegression().fit(X, y)
    with pytest.raises(FitDivergedError):
        estimator.set_params(C=1e30).fit(X, y)
    with pytest.raises(NotFittedError):
        estimator.predict(X)


# ---- the pure functions ------------------------------------------------------------------------

def _ovr_fit(**kw):
    return lambda X, y: logreg.ovr_fit(X, y, 3, **kw)


def _ovr_fit_gd(**kw):
    return lambda X, y: logreg.ovr_fit_gd(X, y, 3, **kw)


PURE_CASES = [
    # id, call(X, y), X transform, expected, fragment
    ("ovr_fit-C-nan", _ovr_fit(C=NAN), None, ValueError, "C must be a finite number > 0, got nan"),
    ("ovr_fit-C-inf", _ovr_fit(C=INF), None, ValueError, "C must be a finite number > 0, got inf"),
    ("ovr_fit-C-bool", _ovr_fit(C=True), None, ValueError, "C must be a finite number"),
    ("ovr_fit-C-1e30-separable", _ovr_fit(C=1e30), None, FitDivergedError,
     r"ovr_fit\(solver='newton', C=1e\+30\) produced non-finite coefficients for \d of 3 classes"),
    ("ovr_fit-X-times-1e20", _ovr_fit(), lambda X: X * 1e20, FitDivergedError, "badly scaled"),
    ("ovr_fit-X-beyond-float32", _ovr_fit(), lambda X: X * 1e300, ValueError,
     "beyond float32's range"),
    ("ovr_fit-max_iter-2.5", _ovr_fit(max_iter=2.5), None, ValueError,
     "max_iter must be an integer >= 1, got 2.5"),
    ("ovr_fit-max_iter-bool", _ovr_fit(max_iter=True), None, ValueError, "max_iter must be an integer"),
    ("ovr_fit-tol-negative", _ovr_fit(tol=-1.0), None, ValueError, "tol must be a finite number >= 0"),
    ("ovr_fit-tol-nan", _ovr_fit(tol=NAN), None, ValueError, "tol must be a finite number >= 0"),
    ("ovr_fit-solver", _ovr_fit(solver="sgd"), None, ValueError, "solver must be 'newton' or 'lbfgs'"),
    ("ovr_fit-n_classes-float", lambda X, y: logreg.ovr_fit(X, y, 3.0), None, ValueError,
     "n_classes must be an integer >= 2"),
    ("ovr_fit-labels-beyond-n_classes", lambda X, y: logreg.ovr_fit(X, y, 2), None, ValueError,
     "class indices 0..1"),
    ("ovr_fit-X-strings", _ovr_fit(), lambda X: X.astype(str), ValueError, "real numbers, got dtype <U"),
    ("ovr_fit-X-3d", _ovr_fit(), lambda X: X.reshape(60, 2, 1), ValueError, r"2-D \(samples, features\)"),
    ("ovr_fit-y-length", lambda X, y: logreg.ovr_fit(X, y[:-1], 3), None, ValueError, r"shape \(60,\) to match X"),
    ("ovr_fit-y-single-class", lambda X, y: logreg.ovr_fit(X, np.zeros_like(y), 3), None, ValueError,
     "single class"),
    ("ovr_fit-y-float", lambda X, y: logreg.ovr_fit(X, y.astype(float), 3), None, ValueError,
     "integer class indices 0..2, got dtype float64"),
    ("ovr_fit-X-nan", _ovr_fit(), lambda X: np.where(X > 4, NAN, X), ValueError, "NaN or infinity"),
    ("ovr_fit-X-no-features", _ovr_fit(), lambda X: X[:, :0], ValueError, "at least one sample and one feature"),
    ("ovr_fit-stops-at-max_iter", _ovr_fit(max_iter=1, tol=0.0), None, ConvergenceWarning,
     "did not converge for 3 of 3 classes in max_iter=1"),
    ("ovr_fit_gd-alpha-negative", _ovr_fit_gd(alpha=-1), None, ValueError,
     "alpha must be a finite number > 0, got -1"),
    ("ovr_fit_gd-alpha-nan", _ovr_fit_gd(alpha=NAN), None, ValueError, "alpha must be a finite number > 0"),
    ("ovr_fit_gd-alpha-inf", _ovr_fit_gd(alpha=INF), None, ValueError, "alpha must be a finite number > 0"),
    ("ovr_fit_gd-alpha-huge-diverges", _ovr_fit_gd(alpha=1e38, n_iter=5), None, FitDivergedError,
     r"ovr_fit_gd\(alpha=1e\+38\) produced non-finite"),
    ("ovr_fit_gd-n_iter-2.5", _ovr_fit_gd(n_iter=2.5), None, ValueError, "n_iter must be an integer >= 1"),
    ("ovr_fit_gd-n_iter-zero", _ovr_fit_gd(n_iter=0), None, ValueError, "n_iter must be an integer >= 1"),
    ("ovr_fit_gd-X-beyond-float32", _ovr_fit_gd(), lambda X: X * 1e300, ValueError, "beyond float32's range"),
]


@pytest.mark.parametrize("call, transform, expected, fragment",
                         [case[1:] for case in PURE_CASES], ids=[case[0] for case in PURE_CASES])
def test_pure_function_fault(call, transform, expected, fragment):
    X, y = SEPARABLE
    X = transform(X) if transform else X.astype(np.float32)
    run_case(call, (X, y), expected, fragment)


# ---- mutual information ------------------------------------------------------------------------------

MI_CASES = [
    # id, call(features, labels), expected, fragment
    ("labels-beyond-n_classes", lambda f, y: mutual_information(f, y + 1, 3), ValueError,
     r"labels must lie in 0..2 \(n_classes=3\), found 1..3"),
    ("labels-negative", lambda f, y: mutual_information(f, y - 1, 3), ValueError,
     "found -1..1"),
    ("labels-float", lambda f, y: mutual_information(f, y.astype(float), 3), ValueError,
     "integer class indices, got dtype float64"),
    ("labels-length", lambda f, y: mutual_information(f, y[:-1], 3), ValueError, r"labels must be \(40,\)"),
    ("bins-float", lambda f, y: mutual_information(f, y, 3, bins=16.0), ValueError, "bins must be an integer"),
    ("bins-1", lambda f, y: mutual_information(f, y, 3, bins=1), ValueError, "bins must be an integer in 2..256"),
    ("bins-257", lambda f, y: mutual_information(f, y, 3, bins=257), ValueError, "2..256, got 257"),
    ("chunk-zero", lambda f, y: mutual_information(f, y, 3, chunk=0), ValueError, "chunk must be an integer >= 1"),
    ("chunk-float", lambda f, y: mutual_information(f, y, 3, chunk=2.5), ValueError, "chunk must be an integer"),
    ("n_classes-1", lambda f, y: mutual_information(f, y, 1), ValueError, "n_classes must be an integer >= 2"),
    ("features-float", lambda f, y: mutual_information(f.astype(np.float32), y, 3), ValueError, "uint8"),
    ("features-3d", lambda f, y: mutual_information(f.reshape(40, 2, 3), y, 3), ValueError, r"\(N, P\)"),
    ("features-no-rows", lambda f, y: mutual_information(f[:0], y[:0], 3), ValueError, "no rows"),
]


@pytest.mark.parametrize("call, expected, fragment", [case[1:] for case in MI_CASES],
                         ids=[case[0] for case in MI_CASES])
def test_mutual_information_fault(call, expected, fragment):
    run_case(call, PIXELS, expected, fragment)


# ---- the studies -----------------------------------------------------------------------------------

def _ranking(f):
    return np.arange(f.shape[1])


STUDY_CASES = [
    # id, call(features, labels), expected, fragment
    ("rf-k-zero", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, _ranking(f), ks=(0, 2)), ValueError,
     r"ks must be integers in 1..6, got \[0, 2\]"),
    ("rf-k-beyond-pixels", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, _ranking(f), ks=(7,)), ValueError,
     "ks must be integers in 1..6"),
    ("rf-k-float", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, _ranking(f), ks=(2.5,)), ValueError,
     "ks must be integers"),
    ("rf-k-empty", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, _ranking(f), ks=()), ValueError,
     "ks must be integers"),
    ("rf-ranking-short", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, np.arange(3), ks=(2,)), ValueError,
     "ranking must be a permutation of all 6 pixels"),
    ("rf-ranking-repeats", lambda f, y: studies.rf_accuracy_vs_top_k(f, y, np.zeros(6, int), ks=(2,)),
     ValueError, "permutation"),
    ("pca-components-zero", lambda f, y: pca_sweep(f, y, (0, 2)), ValueError,
     r"n_components must be integers in 1..6, got \[0, 2\]"),
    ("pca-components-beyond", lambda f, y: pca_sweep(f, y, (7,)), ValueError, "1..6"),
    ("pca-components-float", lambda f, y: pca_sweep(f, y, (2.5,)), ValueError, "integers"),
    ("pca-logreg_workers-negative", lambda f, y: pca_sweep(f, y, (2,), logreg_workers=-1), ValueError,
     "logreg_workers must be None or an integer >= 0"),
    ("pca-solver-randomized", lambda f, y: pca_sweep(f, y, (2,), svd_solver="randomized"), ValueError,
     "deterministic solvers"),
    ("standardized_pca-components-zero", lambda f, y: standardized_pca(f, f, 0, seed=0), ValueError,
     "n_components must be an integer in 1..6, got 0"),
    ("standardized_pca-features-differ", lambda f, y: standardized_pca(f, f[:, :3], 2, seed=0), ValueError,
     "same features"),
]


@pytest.mark.parametrize("call, expected, fragment", [case[1:] for case in STUDY_CASES],
                         ids=[case[0] for case in STUDY_CASES])
def test_study_fault(call, expected, fragment):
    run_case(call, PIXELS, expected, fragment)


CONFIG_CASES = [
    # id, ClassicConfig fields, fragment (the field is named first)
    ("n_rows-1", dict(n_rows=1), "ClassicConfig.n_rows must be an integer >= 2, got 1"),
    ("n_rows-float", dict(n_rows=5e4), "ClassicConfig.n_rows"),
    ("test_size-0", dict(test_size=0), "ClassicConfig.test_size must be a number strictly between 0 and 1"),
    ("test_size-1", dict(test_size=1.0), "ClassicConfig.test_size"),
    ("test_size-nan", dict(test_size=NAN), "ClassicConfig.test_size"),
    ("ks-empty", dict(ks=()), "ClassicConfig.ks must be a non-empty sequence of positive integers"),
    ("ks-zero", dict(ks=(0, 2)), "ClassicConfig.ks"),
    ("ks-not-a-sequence", dict(ks=5), "ClassicConfig.ks must be a sequence"),
    ("pca_components-float", dict(pca_components=(2.5,)), "ClassicConfig.pca_components"),
    ("rf_trees-0", dict(rf_trees=0), "ClassicConfig.rf_trees must be an integer >= 1"),
    ("sklearn_mi-unknown", dict(sklearn_mi="knn"), "ClassicConfig.sklearn_mi must be one of default, discrete, none"),
    ("mi_bins-1", dict(mi_bins=1), "ClassicConfig.mi_bins must be an integer in 2..256, got 1"),
    ("mi_bins-300", dict(mi_bins=300), "ClassicConfig.mi_bins"),
    ("logreg_max_iter-0", dict(logreg_max_iter=0), "ClassicConfig.logreg_max_iter must be an integer >= 1"),
    ("n_jobs-0", dict(n_jobs=0), "ClassicConfig.n_jobs must be None or a non-zero integer"),
    ("seed-negative", dict(seed=-1), "ClassicConfig.seed"),
]


@pytest.mark.parametrize("fields, fragment", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_classic_config_fault(fields, fragment):
    with pytest.raises(ValueError, match=fragment) as error:
        ClassicConfig(**fields)
    assert "\n" not in str(error.value)  # one line


def test_classic_config_accepts_lists_and_keeps_tuples():
    config = ClassicConfig(ks=[2, 4], pca_components=range(1, 4))
    assert config.ks == (2, 4) and config.pca_components == (1, 2, 3)
    assert hash(config)  # still a frozen, hashable config

