import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.feature_selection import mutual_info_classif

from emnist_jax.classic.mutual_info import file_to_upright, mutual_information, rank_pixels


def brute_force_mi(features, labels, bins):
    """Plug-in MI of each column with the labels: explicit histograms, one pixel at a time."""
    binned = features.astype(int) * bins // 256
    out = []
    for column in binned.T:
        joint = np.zeros((bins, labels.max() + 1))
        np.add.at(joint, (column, labels), 1)
        joint /= joint.sum()
        px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
        nz = joint > 0
        out.append(np.sum(joint[nz] * np.log(joint[nz] / (px @ py)[nz])))
    return np.array(out)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    features = rng.integers(0, 256, (500, 12)).astype(np.uint8)
    features[:, 0] = labels * 50 + rng.integers(0, 20, 500)  # strongly informative
    features[:, 1] = np.where(labels < 2, 10, 200)            # partly informative
    features[:, 2] = 0                                         # constant: MI 0
    return features, labels


@pytest.mark.parametrize("bins", [2, 16, 256])
def test_equals_brute_force_numpy(data, bins):
    features, labels = data
    np.testing.assert_allclose(mutual_information(features, labels, 5, bins=bins),
                               brute_force_mi(features, labels, bins), rtol=1e-4, atol=1e-6)


def test_chunking_does_not_change_the_result(data):
    features, labels = data
    np.testing.assert_allclose(mutual_information(features, labels, 5, chunk=7),
                               mutual_information(features, labels, 5, chunk=500), rtol=1e-6)


def test_256_bins_is_sklearns_discrete_estimator(data):
    features, labels = data
    expected = mutual_info_classif(features, labels, discrete_features=True)
    np.testing.assert_allclose(mutual_information(features, labels, 5, bins=256), expected, rtol=1e-4, atol=1e-6)


def test_ranks_informative_pixels_first(data):
    mi = mutual_information(*data, 5)
    assert list(rank_pixels(mi)[:2]) == [0, 1] and float(mi[2]) == 0.0


def test_agrees_with_sklearns_default_knn_estimator(tiny_dataset):
    from emnist_jax.data import file_rows
    X, y = file_rows(tiny_dataset.train_images), tiny_dataset.train_labels
    ours = np.asarray(mutual_information(X, y, 62))
    theirs = mutual_info_classif(X[:, ::24], y, random_state=0)  # every 24th pixel keeps it to ~1.5 s
    assert spearmanr(ours[::24], theirs).statistic > 0.8


def test_file_order_to_upright():
    assert file_to_upright(184) == (16, 6)  # the study's top pixel (docs/original-study.md, 3.3)
    assert file_to_upright(423) == (3, 15)
