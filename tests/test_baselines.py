import threading

import joblib
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import mutual_info_classif

from emnist_jax.classic import forests, knn_mi, pca, studies
from emnist_jax.classic.config import ClassicConfig
from emnist_jax.classic.mutual_info import mutual_information, rank_pixels
from emnist_jax.classic.pca import one_blas_thread
from emnist_jax.classic.pca_sweep import pca_sweep
from emnist_jax.classic.protocol import study_split
from emnist_jax.data import file_rows

# The README's "metrics.json keys" table: the result objects must write exactly these.
MI_KEYS = {"n_rows", "pixel_order", "bins", "jax_seconds", "top_pixels", "top_pixels_upright", "max", "argmax",
           "n_zero", "values", "sklearn"}
SKLEARN_MI_KEYS = {"estimator", "seconds", "top_pixels", "max", "argmax", "n_zero", "spearman", "top64_overlap"}
RF_KEYS = {"k", "accuracy", "n_train", "n_test", "n_estimators", "ranking"}
PCA_KEYS = {"n_components", "logreg", "logreg_converged", "rf", "jax", "logreg_max_iter", "n_train", "n_test",
            "pca_solver"}
LOGREG_JAX_KEYS = {"features", "solver", "test_accuracy", "seconds", "study_gd"}
STUDY_GD_KEYS = {"test_accuracy", "iterations", "alpha", "seconds"}
LOGREG_SKLEARN_KEYS = {"test_accuracy", "seconds", "model"}


@pytest.fixture(scope="module")
def study_data(tiny_dataset):
    return file_rows(tiny_dataset.train_images), tiny_dataset.train_labels


@pytest.fixture(scope="module")
def three_pixels():
    """400 rows, 4 classes: pixel 0 informative, pixel 1 pure noise over 0..255, pixel 2 half informative."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    X = np.column_stack([y * 60 + rng.integers(0, 30, 400), rng.integers(0, 256, 400), np.where(y < 2, 10, 200)])
    return X.astype(np.uint8), y


def test_rf_vs_top_k_is_seeded_and_uses_one_split(study_data):
    X, y = study_data
    ranking = rank_pixels(mutual_information(X, y, 62))
    first = studies.rf_accuracy_vs_top_k(X, y, ranking, ks=(2, 16, 64), n_estimators=10, n_jobs=1)
    again = studies.rf_accuracy_vs_top_k(X, y, ranking, ks=(2, 16, 64), n_estimators=10, n_jobs=1)
    np.testing.assert_array_equal(first.accuracy, again.accuracy)
    assert (first.n_train, first.n_test) == (868, 372)  # the study's 70/30
    assert first.accuracy[2] > first.accuracy[0] > 1 / 62  # more informative pixels help
    assert set(first.to_json()) == RF_KEYS and first.to_json()["n_estimators"] == 10


def test_forests_side_by_side_are_the_forests_one_after_another(study_data):
    X, y = study_data
    ranking = rank_pixels(mutual_information(X, y, 62))
    seen = []
    together = studies.rf_accuracy_vs_top_k(X, y, ranking, ks=(2, 16, 64), n_estimators=7, n_jobs=2,
                                              progress=seen.append)
    X_train, X_test, y_train, y_test = study_split(X, y, 0.3, 0)
    for k, accuracy in zip((2, 16, 64), together.accuracy):
        columns = ranking[:k]
        forest = RandomForestClassifier(n_estimators=7, random_state=0).fit(X_train[:, columns], y_train)
        assert accuracy == forest.score(X_test[:, columns], y_test), k
    assert sorted(seen) == [2, 16, 64]


def test_a_failing_forest_stops_its_siblings():
    import threading

    started, stopped = threading.Event(), []

    def slow(chunk, stop):
        started.set()
        stopped.append(chunk if stop.wait(10) else "never stopped")
        raise forests.ForestsStopped

    def failing(chunk, stop):
        started.wait()
        raise MemoryError("no room for the trees")

    with pytest.raises(MemoryError, match="no room"):
        forests.grow_forests([slow, failing], n_jobs=2)
    assert stopped == [forests.TREES_IN_MEMORY // 2]  # the sibling saw the stop and its chunk size


def test_rf_ranking_sees_the_training_part_only(study_data):
    X, y = study_data
    X_train, _, y_train, _ = study_split(X, y, 0.3, 0)
    ranking = studies.train_only_ranking(X, y, 62, test_size=0.3, seed=0, bins=16)
    np.testing.assert_array_equal(ranking, rank_pixels(mutual_information(X_train, y_train, 62)))
    assert not np.array_equal(ranking, rank_pixels(mutual_information(X, y, 62)))  # all rows: the study's leak


def test_nested_pca_equals_one_pca_per_count(study_data):
    X, y = study_data
    X_train, X_test, _, _ = study_split(X.astype(np.float32), y, 0.3, 0)
    with one_blas_thread():  # as the sweep runs them (and 784 x 784 eigh is then fast)
        largest = PCA(12, svd_solver="covariance_eigh").fit(X_train)
        for n in (1, 2, 5, 12):
            own = PCA(n, svd_solver="covariance_eigh").fit(X_train)
            np.testing.assert_array_equal(pca.leading_components(largest, n).transform(X_test),
                                          own.transform(X_test))
        full = PCA(12, svd_solver="full").fit(X_train).transform(X_test)  # the other exact solver, up to sign
        np.testing.assert_allclose(np.abs(own.transform(X_test)), np.abs(full), rtol=1e-3, atol=1e-2)
    # Downstream: the sweep (one PCA at n = 12; logistic regressions in a worker process) gives
    # every classifier's accuracy of one PCA per n, fitted in this process.
    nested = pca_sweep(X, y, (2, 12), rf_trees=5, logreg_max_iter=300, n_jobs=2, logreg_workers=1)
    for i, n in enumerate((2, 12)):
        alone = pca_sweep(X, y, (n,), rf_trees=5, logreg_max_iter=300, n_jobs=1)
        for curve in ("logreg", "logreg_converged", "rf", "jax"):
            assert getattr(nested, curve)[i] == getattr(alone, curve)[0], (n, curve)
    for curve in (nested.logreg, nested.rf, nested.jax):  # all three classifiers learn
        assert curve[1] > curve[0] > 1 / 62
    assert abs(nested.jax[1] - nested.logreg[1]) < 0.1
    assert nested.logreg_converged.dtype == bool
    assert set(nested.to_json()) == PCA_KEYS and nested.to_json()["pca_solver"] == "covariance_eigh"


@pytest.mark.parametrize("logreg_workers", [0, 1])
def test_pca_sweep_records_every_unconverged_regression(study_data, logreg_workers):
    # Regressions run in this process must not overlap the forest threads: warnings.catch_warnings
    # is process-wide and sklearn's forest threads enter it too (they once lost flags and warnings).
    import warnings

    def active_filters():  # sklearn's threads put back the same filters with compiled patterns
        return [(a, getattr(m, "pattern", m), c, getattr(mod, "pattern", mod), n) for a, m, c, mod, n in warnings.filters]

    X, y = study_data
    filters, show = active_filters(), warnings._showwarnmsg_impl
    sweep = pca_sweep(X, y, (2, 4, 8, 12), rf_trees=20, logreg_max_iter=2, n_jobs=2,
                                logreg_workers=logreg_workers)
    assert not sweep.logreg_converged.any()
    assert active_filters() == filters and warnings._showwarnmsg_impl is show


def test_pca_sweep_starts_the_longest_fits_first_and_the_forests_beside_the_jax_fits(study_data, monkeypatch):
    # On a GPU each JAX fit compiles for seconds: run one after another before the forests (as
    # once), they held back every forest; and the largest n, the longest fits, started last.
    from emnist_jax.classic import pca_sweep as sweep_module

    forest_started, regressions, overlapped = threading.Event(), [], []
    real_forest, real_regression, real_jax = (sweep_module.forest_accuracy, sweep_module.study_logreg_accuracy,
                                              sweep_module._jax_accuracy)

    def forest(*args, **kwargs):
        forest_started.set()
        return real_forest(*args, **kwargs)

    def regression(train, *args):
        regressions.append(train.shape[1])
        return real_regression(train, *args)

    def jax_fit(*args, **kwargs):
        overlapped.append(forest_started.wait(timeout=10))
        return real_jax(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "forest_accuracy", forest)
    monkeypatch.setattr(sweep_module, "study_logreg_accuracy", regression)
    monkeypatch.setattr(sweep_module, "_jax_accuracy", jax_fit)
    X, y = study_data
    sweep = pca_sweep(X, y, (2, 8, 4), rf_trees=2, logreg_max_iter=50, n_jobs=2, logreg_workers=0)
    assert regressions == [8, 4, 2]
    assert overlapped == [True, True, True]
    assert list(sweep.n_components) == [2, 8, 4] and sweep.jax[1] > sweep.jax[0]  # results in the caller's order


@pytest.mark.parametrize("cores, rows, workers", [(1, 35_000, 0), (2, 35_000, 1), (2, 9_999, 0), (16, 35_000, 6),
                                                 (64, 35_000, 24), (256, 35_000, 29)])
def test_pca_sweep_gives_the_regressions_three_eighths_of_the_cores(cores, rows, workers):
    from emnist_jax.classic.pca_sweep import _regression_workers

    assert _regression_workers(None, cores, rows, 29) == workers


def test_pca_sweep_compiles_one_jax_fit_per_bucket_on_an_accelerator(study_data, monkeypatch):
    import jax

    from emnist_jax.classic import logreg
    from emnist_jax.classic.pca_sweep import _jax_accuracies

    X, y = study_data
    X_train, X_test, y_train, y_test = study_split(X.astype(np.float32), y, 0.3, 0)
    scores = pca.nested_scores(X_train, X_test, (3, 5, 7), "covariance_eigh", 0)
    with monkeypatch.context() as patch:
        patch.setattr(jax, "default_backend", lambda: "gpu")
        logreg._fit_newton.clear_cache()
        padded = _jax_accuracies(scores, (3, 5, 7), y_train, y_test, threading.Event())
        assert logreg._fit_newton._cache_size() == 1  # 3, 5 and 7 features: one bucket of 8
    on_cpu = _jax_accuracies(scores, (3, 5, 7), y_train, y_test, threading.Event())
    assert logreg._fit_newton._cache_size() == 4  # unpadded: one program per size
    np.testing.assert_allclose(padded, on_cpu, atol=2 / len(y_test))  # the same optimum, other roundings


def test_chunked_forest_is_the_forest(study_data):
    X, y = study_data
    X_train, X_test, y_train, _ = study_split(X[:, 200:300], y, 0.3, 0)
    forest = RandomForestClassifier(n_estimators=10, random_state=3, n_jobs=1).fit(X_train, y_train)
    classes, proba = forests.forest_predict_proba(X_train, y_train, X_test, 10, seed=3, n_jobs=2, chunk=3)
    np.testing.assert_array_equal(classes, forest.classes_)
    np.testing.assert_array_equal(proba, forest.predict_proba(X_test))  # same trees, same sums, bit for bit


def test_lean_sklearn_mi_is_mutual_info_classif_bit_for_bit(study_data, monkeypatch):
    X, y = study_data
    X, y = np.column_stack([X[:300, 300:340], np.zeros(300, np.uint8)]), y[:300]  # + a blank pixel (std 0)
    monkeypatch.setattr(knn_mi, "NOISE_ROWS", 64)  # noise drawn in 5 blocks, the last one short
    expected = mutual_info_classif(X, y, discrete_features=False, n_neighbors=3, random_state=7)
    seen = []
    np.testing.assert_array_equal(knn_mi.sklearn_mutual_information(X, y, seed=7, n_jobs=2, progress=seen.append),
                                  expected)
    assert seen == list(range(X.shape[1]))
    assert expected.max() > 0.1


def test_sklearn_mi_is_the_studys_knn_estimator(three_pixels):
    X, y = three_pixels
    ours = knn_mi.sklearn_mutual_information(X, y, seed=0)
    np.testing.assert_array_equal(ours, mutual_info_classif(X, y, discrete_features=False, n_neighbors=3,
                                                            random_state=0))
    # The k-NN estimator sees no information in the noise pixel; the discrete plug-in estimator,
    # which counts 256 distinct values in 400 rows, sees a lot. A wrong estimator fails here.
    discrete = mutual_info_classif(X, y, discrete_features=True)
    assert ours[1] < 0.05 and discrete[1] > 0.5
    assert ours[0] > ours[2] > 0.5
    with joblib.parallel_config(backend="threading"):  # n_jobs splits the pixels, never changes the result
        np.testing.assert_array_equal(knn_mi.sklearn_mutual_information(X, y, seed=0, n_jobs=2), ours)


@pytest.mark.parametrize("moved", ["missing", "other-signature"])
def test_sklearn_mi_falls_back_to_the_public_function_when_the_private_estimator_moves(three_pixels, monkeypatch,
                                                                                      moved):
    import sys
    import types

    # The public function keeps the real module's globals; the in-place path looks the helper up anew.
    elsewhere = types.ModuleType("sklearn.feature_selection._mutual_info")
    if moved == "other-signature":
        elsewhere._compute_mi = lambda x, y, discrete, n_neighbors=3: 0.0
    monkeypatch.setitem(sys.modules, "sklearn.feature_selection._mutual_info", elsewhere)
    X, y = three_pixels
    seen = []
    with pytest.warns(RuntimeWarning, match="_compute_mi.*public mutual_info_classif"):
        mi = knn_mi.sklearn_mutual_information(X, y, seed=0, progress=seen.append)
    np.testing.assert_array_equal(mi, mutual_info_classif(X, y, discrete_features=False, n_neighbors=3,
                                                          random_state=0))
    assert seen == [X.shape[1] - 1]


def test_mi_study_runs_the_configured_sklearn_estimator(three_pixels):
    X, y = three_pixels
    study = studies.mi_study(X, y, 4, ClassicConfig(sklearn_mi="default", mi_bins=8, n_jobs=1), seed=0)
    np.testing.assert_array_equal(study.sklearn.values, knn_mi.sklearn_mutual_information(X, y, seed=0))
    np.testing.assert_allclose(study.values, mutual_information(X, y, 4, bins=8), rtol=1e-6)
    result = study.to_json()
    assert set(result) == MI_KEYS and set(result["sklearn"]) == SKLEARN_MI_KEYS
    assert result["sklearn"]["estimator"].startswith("default (k-NN")
    assert result["top_pixels"] == [0, 2, 1] and result["top_pixels_upright"][0] == [0, 0]
    assert result["sklearn"]["top64_overlap"] == 3
    assert result["bins"] == 8 and study.label == "JAX, 8-bin plug-in estimator"  # the configured bins, not 16
    none = studies.mi_study(X, y, 4, ClassicConfig(sklearn_mi="none", mi_bins=8), seed=0)
    assert none.sklearn is None and set(none.to_json()) == MI_KEYS - {"sklearn"}


def test_logreg_study_runs_three_models_on_standardised_pca(study_data):
    X, y = study_data
    config = ClassicConfig(logreg_max_iter=100)
    study = studies.logreg_study(X, y, config, gd_iterations=50, seed=0)
    result = study.to_json()
    assert set(result) == {"logreg_jax", "logreg_sklearn"}
    assert set(result["logreg_jax"]) == LOGREG_JAX_KEYS and set(result["logreg_jax"]["study_gd"]) == STUDY_GD_KEYS
    assert set(result["logreg_sklearn"]) == LOGREG_SKLEARN_KEYS
    assert result["logreg_jax"]["features"] == "29 standardised PCA components"
    assert result["logreg_jax"]["study_gd"]["alpha"] == studies.STUDY_GD_ALPHA
    assert (study.n_train, study.n_test) == (868, 372)
    for accuracy in (study.newton_accuracy, study.gd_accuracy, study.sklearn_accuracy):
        assert 5 / 62 < accuracy <= 1
    assert abs(study.newton_accuracy - study.sklearn_accuracy) < 0.1
