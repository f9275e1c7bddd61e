import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from emnist_jax import study_reference
from emnist_jax import logreg
from emnist_jax.logreg import OneVsRestLogisticRegression


@pytest.fixture(scope="module")
def problem():
    X, y = make_classification(n_samples=3000, n_features=12, n_informative=8, n_classes=5,
                               n_clusters_per_class=1, random_state=0)
    return train_test_split(X.astype(np.float32), y, test_size=0.3, random_state=0)


def test_study_algorithm_equals_the_numpy_reference(problem):
    X, _, y, _ = problem
    classes, theta = study_reference.fit(X.astype(np.float64), y, alpha=0.1, max_iter=30)
    params = logreg.ovr_fit_gd(X, y, n_classes=5, alpha=0.1, n_iter=30)
    np.testing.assert_allclose(np.asarray(params.intercept), theta[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params.coef), theta[:, 1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(logreg.ovr_predict(params, X)),
                                  study_reference.predict(classes, theta, X.astype(np.float64)))


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_penalised_solver_within_one_point_of_sklearn(problem, solver):
    X_train, X_test, y_train, y_test = problem
    params = logreg.ovr_fit(X_train, y_train, n_classes=5, solver=solver)
    ours = (np.asarray(logreg.ovr_predict(params, X_test)) == y_test).mean()
    theirs = LogisticRegression().fit(X_train, y_train).score(X_test, y_test)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_penalised_solver_finds_sklearns_ovr_optimum(problem, solver):
    X_train, _, y_train, _ = problem
    params = logreg.ovr_fit(X_train, y_train, n_classes=5, solver=solver, C=0.5)
    reference = OneVsRestClassifier(LogisticRegression(C=0.5, tol=1e-8, max_iter=1000)).fit(X_train, y_train)
    coef = np.vstack([e.coef_ for e in reference.estimators_])
    intercept = np.concatenate([e.intercept_ for e in reference.estimators_])
    np.testing.assert_allclose(np.asarray(params.coef), coef, atol=2e-3)
    np.testing.assert_allclose(np.asarray(params.intercept), intercept, atol=2e-3)


def test_whole_fit_runs_on_device_without_a_host_round_trip(problem):
    X, _, y, _ = problem
    X, y = jax.device_put(jnp.asarray(X)), jax.device_put(jnp.asarray(y, jnp.int32))
    with jax.transfer_guard_device_to_host("disallow"):
        for params in (logreg._fit_gd(X, y, n_classes=5, alpha=0.1, n_iter=5),
                       logreg._fit_newton(X, y, n_classes=5, C=1.0, max_iter=5, tol=1e-5),
                       logreg._fit_lbfgs(X, y, n_classes=5, C=1.0, max_iter=5, tol=1e-5)):
            predicted = logreg.ovr_predict(params, X)
    assert predicted.shape == (len(y),)


@pytest.mark.parametrize("X, y, message", [
    (np.zeros((6, 2, 2)), np.array([0, 1] * 3), "2-D"),
    (np.zeros((6, 2)), np.array([0, 1] * 2), r"shape \(6,\)"),
    (np.full((6, 2), np.nan), np.array([0, 1] * 3), "NaN"),
    (np.zeros((6, 2)), np.zeros(6, int), "single class"),
    (np.zeros((6, 2)), np.array([0, 1, 7] * 2), "class indices"),
])
def test_bad_input_is_a_clear_error(X, y, message):
    with pytest.raises(ValueError, match=message):
        logreg.ovr_fit(X, y, n_classes=3)
    with pytest.raises(ValueError, match=message):
        logreg.ovr_fit_gd(X, y, n_classes=3)


def test_bad_parameters():
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="C must be positive"):
        logreg.ovr_fit(X, y, 2, C=0)
    with pytest.raises(ValueError, match="solver"):
        logreg.ovr_fit(X, y, 2, solver="sgd")
    with pytest.raises(ValueError, match="n_iter"):
        logreg.ovr_fit_gd(X, y, 2, n_iter=0)


def test_estimator_takes_any_label_type(problem):
    X_train, X_test, y_train, y_test = problem
    names = np.array(["ant", "bee", "cat", "dog", "eel"])
    model = OneVsRestLogisticRegression().fit(X_train, names[y_train])
    assert list(model.classes_) == list(names)
    assert model.score(X_test, names[y_test]) > 0.7
    np.testing.assert_allclose(model.predict_proba(X_test).sum(1), 1.0)


# Skipped by sklearn itself here: check_array_api_input (needs SCIPY_ARRAY_API=1) and
# check_classifier_data_not_an_array (needs pandas, not a dependency). Nothing is skipped by us.
@parametrize_with_checks([OneVsRestLogisticRegression(), OneVsRestLogisticRegression(solver="gd", max_iter=200)])
def test_sklearn_check_estimator(estimator, check):
    check(estimator)
