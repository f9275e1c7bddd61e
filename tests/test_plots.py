"""The figures' layout promises: a short CNN run is not squeezed into the study's 10 epochs, the
class-distribution legend covers no bar, the confused-pairs montage shows the class taken for."""

import matplotlib.pyplot as plt
import numpy as np

from emnist_jax import original_study as o
from emnist_jax import plots

STUDY = (list(o.CNN_EPOCH_LOSS), list(o.CNN_EPOCH_ACCURACY))


def test_a_short_cnn_run_gets_its_own_x_range_and_the_study_its_whole_curve():
    fig = plots.cnn_history([0.9, 0.6], [0.7, 0.8], "tiny", STUDY)
    top_loss, top_acc, whole_loss, whole_acc = fig.axes
    assert top_loss.get_xlim() == (0.5, 2.5) and list(top_loss.get_xticks()) == [1, 2]
    assert whole_loss.get_xlim() == (0.5, len(o.CNN_EPOCH_LOSS) + 0.5)
    assert len(whole_acc.lines[0].get_xdata()) == len(o.CNN_EPOCH_ACCURACY)  # the study's 10 epochs, drawn
    plt.close(fig)


def test_a_run_as_long_as_the_study_has_one_row():
    n = len(o.CNN_EPOCH_LOSS)
    fig = plots.cnn_history(list(np.linspace(1, 0.3, n)), list(np.linspace(0.7, 0.9, n)), "full", STUDY)
    assert len(fig.axes) == 2
    plt.close(fig)


def test_the_class_distribution_legend_sits_above_the_bars():
    counts = np.full(62, 1000)
    fig = plots.class_distribution(counts, counts // 5, tuple(f"c{i}" for i in range(62)), "tiny")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.y0 >= ax.get_window_extent().y1 - 1  # outside the plotting area, so no bar is hidden
    plt.close(fig)


def test_confused_pairs_show_the_mistakes_and_the_class_taken_for(tiny_dataset):
    labels = tiny_dataset.test_labels
    predictions = labels.copy()
    a, b = tiny_dataset.classes.index("O"), tiny_dataset.classes.index("0")
    predictions[np.flatnonzero(labels == a)[:3]] = b  # three 'O' taken for '0'
    fig = plots.confused_examples(tiny_dataset.test_images, labels, predictions, [("O", "0", 3)],
                                  tiny_dataset.classes, per_pair=5)
    canvas = fig.axes[0].get_images()[0].get_array()
    side = tiny_dataset.test_images.shape[1]
    first = np.flatnonzero(labels == a)[0]
    np.testing.assert_array_equal(canvas[:side, :side], tiny_dataset.test_images[first])
    reference = np.flatnonzero((labels == b) & (predictions == b))[0]
    np.testing.assert_array_equal(canvas[:side, -side:], tiny_dataset.test_images[reference])
    assert any("'O' as '0'" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)
