import numpy as np

from emnist_jax.cnn.evaluation import summarize


def test_summarize_matches_a_confusion_counted_by_hand():
    # classes a, b, c, d; d has no examples.
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    predicted = np.array([0, 1, 1, 1, 0, 2, 1, 2, 2, 0])
    e = summarize(labels, predicted, loss=1.5, classes=("a", "b", "c", "d"), top=2)
    # rows true, columns predicted, counted one by one from the pairs above
    expected = np.array([[2, 2, 0, 0],
                         [1, 1, 0, 0],
                         [0, 1, 3, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(e.confusion, expected)
    assert e.n == 10 and e.loss == 1.5
    assert e.accuracy == 6 / 10
    np.testing.assert_array_equal(e.per_class_accuracy[:3], [2 / 4, 1 / 2, 3 / 4])
    assert np.isnan(e.per_class_accuracy[3])
    # the two most frequent mistakes; ties keep row-major order (b->a before c->b)
    assert e.confused_pairs == [("a", "b", 2), ("b", "a", 1)]
    assert e.to_json()["per_class_accuracy"][3] is None


def test_summarize_lists_no_pair_that_never_happened():
    e = summarize(np.array([0, 1]), np.array([0, 1]), loss=0.0, classes=("x", "y"))
    assert e.accuracy == 1.0 and e.confused_pairs == []
