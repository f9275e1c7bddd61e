import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from emnist_jax.classic import logreg, study_reference
from emnist_jax.classic.estimator import OneVsRestLogisticRegression


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


# On CPU a device array is host memory and the device-to-host guard never fires (checked: even
# np.asarray of a device array passes under it), so this test can only fail on an accelerator.
@pytest.mark.skipif(jax.default_backend() == "cpu", reason="the device-to-host guard cannot fire on CPU")
def test_fit_of_device_data_moves_no_array_to_the_host(problem):
    # The public fits check their input and result; on device-resident data they may bring back
    # only a few scalars, explicitly. An implicit transfer (np.asarray(X), a Python loop reading
    # the gradient norm each iteration, a numpy finiteness check of the coefficients) raises here.
    X, _, y, _ = problem
    X, y = jax.device_put(jnp.asarray(X)), jax.device_put(jnp.asarray(y, jnp.int32))
    with jax.transfer_guard_device_to_host("disallow"):
        fits = [logreg.ovr_fit_gd(X, y, n_classes=5, n_iter=5), logreg.ovr_fit(X, y, n_classes=5),
                logreg.ovr_fit(X, y, n_classes=5, solver="lbfgs"), logreg.ovr_fit(X, y, 5, bucket_shapes=True)]
        predicted = [logreg.ovr_predict(params, X) for params in fits]
    assert all(isinstance(p, jax.Array) and p.shape == (len(y),) for p in predicted)


@pytest.mark.parametrize("solver", ["newton", "lbfgs", "gd"])
def test_bucketed_shapes_give_the_same_model(problem, solver):
    X, _, y, _ = problem  # 2100 x 12, padded to 2304 x 16; the exact shape is compiled by the tests above
    if solver == "gd":
        exact, padded = (logreg.ovr_fit_gd(X, y, 5, n_iter=50, bucket_shapes=b) for b in (False, True))
    else:
        exact, padded = (logreg.ovr_fit(X, y, 5, solver=solver, bucket_shapes=b) for b in (False, True))
    assert padded.coef.shape == (5, 12)
    np.testing.assert_allclose(np.asarray(padded.coef), np.asarray(exact.coef), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(padded.intercept), np.asarray(exact.intercept), rtol=1e-4, atol=1e-4)


def test_bucket_sizes():
    assert [logreg.bucket(n) for n in (1, 8, 9, 30, 1000, 1025, 35_000)] == [8, 8, 16, 32, 1024, 1152, 36_864]
    assert all(n <= logreg.bucket(n) <= 1.125 * n for n in range(1025, 9000))  # at most 12.5 % padding


def test_estimator_takes_any_label_type(problem):
    X_train, X_test, y_train, y_test = problem
    names = np.array(["ant", "bee", "cat", "dog", "eel"])
    model = OneVsRestLogisticRegression().fit(X_train, names[y_train])
    assert list(model.classes_) == list(names)
    assert model.score(X_test, names[y_test]) > 0.7
    np.testing.assert_allclose(model.predict_proba(X_test).sum(1), 1.0)


# Skipped by sklearn itself here: check_array_api_input (needs SCIPY_ARRAY_API=1) and
# check_classifier_data_not_an_array (needs pandas, not a dependency). Nothing else is skipped.
@parametrize_with_checks([OneVsRestLogisticRegression(), OneVsRestLogisticRegression(solver="gd", max_iter=200)])
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def test_every_fit_multiplies_at_full_float32():
    # GPUs default to TF32 for float32 products; Newton's method then stops short of tol
    # (seen on an H200). Every matrix product of the fits and scores must ask for HIGHEST.
    X, y = jnp.ones((8, 3), jnp.float32), jnp.zeros(8, jnp.int32)
    params = logreg.OvRParams(jnp.ones((2, 3)), jnp.ones(2), jnp.zeros(2, jnp.int32))
    traced = {
        "gd": jax.make_jaxpr(lambda X, y: logreg._fit_gd(X, y, n_classes=2, alpha=0.1, n_iter=2))(X, y),
        "newton": jax.make_jaxpr(lambda X, y: logreg._fit_newton(X, y, n_classes=2, C=1.0, max_iter=2, tol=1e-5))(X, y),
        "lbfgs": jax.make_jaxpr(lambda X, y: logreg._fit_lbfgs(X, y, n_classes=2, C=1.0, max_iter=2, tol=1e-5))(X, y),
        "scores": jax.make_jaxpr(logreg.decision_scores)(params, X),
    }
    for name, jaxpr in traced.items():
        text = str(jaxpr)
        dots = text.count("dot_general[")
        assert dots >= 1 and text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == dots, name


def test_emnist_jax_logreg_is_the_public_path_of_the_classic_estimator_and_solvers():
    import emnist_jax.classic.estimator
    import emnist_jax.logreg

    assert emnist_jax.logreg.OneVsRestLogisticRegression is emnist_jax.classic.estimator.OneVsRestLogisticRegression
    for name in ("ovr_fit", "ovr_fit_gd", "ovr_predict", "decision_scores", "OvRParams", "FitDivergedError"):
        assert getattr(emnist_jax.logreg, name) is getattr(logreg, name), name
