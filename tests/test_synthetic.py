import numpy as np
import pytest

from emnist_jax import synthetic


@pytest.fixture(scope="module")
def sample():
    return synthetic.generate(n_train=3100, n_test=1240, seed=7)


def test_same_seed_gives_identical_arrays():
    first, again = (synthetic.generate(n_train=620, n_test=124, seed=7) for _ in range(2))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_other_seed_gives_other_images():
    assert not np.array_equal(synthetic.generate(620, 124, seed=7)[0], synthetic.generate(620, 124, seed=8)[0])


def test_progress_counts_every_image_and_changes_nothing():
    done = []
    with_progress = synthetic.generate(n_train=124, n_test=62, seed=3, progress=done.append)
    assert sum(done) == 124 + 62 and len(done) == 2  # one call per chunk, train then test
    for a, b in zip(with_progress, synthetic.generate(n_train=124, n_test=62, seed=3)):
        np.testing.assert_array_equal(a, b)


def test_output_does_not_depend_on_chunking():
    labels = np.arange(300) % 62
    a = synthetic.render(labels, np.random.default_rng(0), chunk=7)
    b = synthetic.render(labels, np.random.default_rng(0), chunk=300)
    np.testing.assert_array_equal(a, b)


def test_classes_are_balanced_and_coded_as_byclass(sample):
    train_x, train_y, test_x, test_y = sample
    assert synthetic.CHARACTERS[:10] == "0123456789" and synthetic.CHARACTERS[10] == "A"
    assert synthetic.CHARACTERS[36] == "a" and len(synthetic.CHARACTERS) == 62
    assert set(np.bincount(train_y, minlength=62)) == {50}
    assert set(np.bincount(test_y, minlength=62)) == {20}
    assert train_x.shape == (3100, 28, 28) and train_x.dtype == np.uint8


def test_images_look_like_emnist(sample):
    images = sample[0]
    assert images.max() == 255 and 0.5 < (images == 0).mean() < 0.8  # white ink on black
    assert (images[:, 0, :] == 0).mean() > 0.9  # EMNIST frames glyphs with a 2-pixel border


def test_classes_are_learnable_but_not_trivially_separable(sample):
    train_x, train_y, test_x, test_y = (a.reshape(len(a), -1).astype(np.float32) if a.ndim == 3 else a
                                        for a in sample)
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(62)])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = distances.argmin(1)
    accuracy = (predicted == test_y).mean()
    assert 0.2 < accuracy < 0.9, accuracy
    # The real confusable pairs are confused: case pairs that differ only in size.
    pairs = {("o", "O"), ("O", "0"), ("s", "S"), ("z", "Z"), ("c", "C"), ("x", "X"), ("v", "V"), ("w", "W"),
             ("l", "I"), ("I", "1"), ("l", "1"), ("u", "U"), ("p", "P"), ("k", "K")}
    chars = synthetic.CHARACTERS
    confused = sum(((predicted == chars.index(b)) & (test_y == chars.index(a))).sum() +
                   ((predicted == chars.index(a)) & (test_y == chars.index(b))).sum() for a, b in pairs)
    wrong = (predicted != test_y).sum()
    assert confused > 0.1 * wrong  # 14 of 3,782 ordered pairs carry over 10% of the errors


def test_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="n_train and n_test"):
        synthetic.generate(n_train=10, n_test=100)
