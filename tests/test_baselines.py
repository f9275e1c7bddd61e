import numpy as np
import pytest

from emnist_jax import baselines
from emnist_jax.data import file_rows
from emnist_jax.features import mutual_information, rank_pixels


@pytest.fixture(scope="module")
def study_data(tiny_dataset):
    return file_rows(tiny_dataset.train_images), tiny_dataset.train_labels


def test_rf_vs_top_k_is_seeded_and_uses_one_split(study_data):
    X, y = study_data
    ranking = rank_pixels(mutual_information(X, y, 62))
    first = baselines.rf_accuracy_vs_top_k(X, y, ranking, ks=(2, 16, 64), n_estimators=10, n_jobs=1)
    again = baselines.rf_accuracy_vs_top_k(X, y, ranking, ks=(2, 16, 64), n_estimators=10, n_jobs=1)
    np.testing.assert_array_equal(first.accuracy, again.accuracy)
    assert (first.n_train, first.n_test) == (868, 372)  # the study's 70/30
    assert first.accuracy[2] > first.accuracy[0] > 1 / 62  # more informative pixels help


def test_top_k_bad_arguments(study_data):
    X, y = study_data
    with pytest.raises(ValueError, match="ks must lie in 1..784"):
        baselines.rf_accuracy_vs_top_k(X, y, np.arange(784), ks=(0, 2))
    with pytest.raises(ValueError, match="ranking must rank all 784"):
        baselines.rf_accuracy_vs_top_k(X, y, np.arange(10), ks=(2,))


def test_pca_sweep_fits_all_three_classifiers(study_data):
    X, y = study_data
    result = baselines.pca_sweep(X, y, n_components=(2, 20), rf_trees=10, logreg_max_iter=500, n_jobs=1)
    for curve in (result.logreg, result.rf, result.jax):
        assert curve.shape == (2,) and curve[1] > curve[0] > 0
    assert result.logreg_converged.dtype == bool
    assert abs(result.jax[1] - result.logreg[1]) < 0.1


def test_pca_sweep_bad_components(study_data):
    X, y = study_data
    with pytest.raises(ValueError, match="n_components must lie in 1..784"):
        baselines.pca_sweep(X, y, n_components=(0,))


def test_sklearn_mi_is_the_studys_call(study_data):
    X, y = study_data
    mi = baselines.sklearn_mutual_information(X[:, :50], y, discrete=True)
    assert mi.shape == (50,) and (mi >= 0).all()
