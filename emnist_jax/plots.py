"""Matplotlib figures made from data sets and result objects; nothing here computes a result."""

from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use("Agg")  # figures are files; never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emnist_jax.data import Dataset  # noqa: E402


def save(fig: plt.Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename) and close it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
    os.close(handle)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; figures are for everyone
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _title_suffix(dataset: Dataset) -> str:
    return f"{dataset.split}, {'SYNTHETIC embedded default' if dataset.synthetic else dataset.source}"


def _montage(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile (n, 28, 28) images into one picture with 1-pixel grey gaps."""
    rows = -(-len(images) // cols)
    side = images.shape[1]
    canvas = np.full((rows * (side + 1) - 1, cols * (side + 1) - 1), 60, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (side + 1): r * (side + 1) + side, c * (side + 1): c * (side + 1) + side] = image
    return canvas


def sample_grid(dataset: Dataset, per_class: int = 6, seed: int = 0) -> plt.Figure:
    """Random upright training samples of every class: one tile of images per class, labelled.

    Drawn as one image (a montage of all tiles) with a text label per tile: 62 separate
    panels took seconds to lay out and save.
    """
    rng = np.random.default_rng(seed)
    side, tile_cols = dataset.train_images.shape[1], 3
    tile_rows = -(-per_class // tile_cols)
    n_cols = 8 if dataset.n_classes > 16 else min(dataset.n_classes, 5)
    n_rows = -(-dataset.n_classes // n_cols)
    tile_h, tile_w = tile_rows * (side + 1) - 1, tile_cols * (side + 1) - 1
    gap_x, gap_y = 10, 22  # pixels between tiles; the vertical gap holds the label
    canvas = np.full((n_rows * (tile_h + gap_y), n_cols * (tile_w + gap_x) - gap_x), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(1.45 * n_cols, 1.45 * n_rows * (tile_h + gap_y) / (tile_w + gap_x) + 0.5))
    for label in range(dataset.n_classes):
        members = np.flatnonzero(dataset.train_labels == label)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)) if len(members) else []
        r, c = divmod(label, n_cols)
        top, left = r * (tile_h + gap_y) + gap_y, c * (tile_w + gap_x)
        tile = np.full((tile_h, tile_w), 60, np.uint8)
        if len(chosen):
            montage = _montage(dataset.train_images[chosen], cols=tile_cols)
            tile[:montage.shape[0], :montage.shape[1]] = montage
        canvas[top:top + tile_h, left:left + tile_w] = tile
        ax.text(left + tile_w / 2, top - 4, f"{label}: '{dataset.classes[label]}'", ha="center", va="bottom",
                fontsize=8)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"Training samples per class (upright) - {_title_suffix(dataset)}", fontsize=11)
    fig.tight_layout()
    return fig


def class_distribution(train_counts: np.ndarray, test_counts: np.ndarray, classes: tuple[str, ...],
                       subtitle: str) -> plt.Figure:
    """Images per class, train and test side by side; the legend sits above the bars, never on them."""
    n = len(classes)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * n + 2), 3.6))
    ax.bar(x - 0.2, train_counts, width=0.4, label="train")
    ax.bar(x + 0.2, test_counts, width=0.4, label="test")
    ax.set_xticks(x, classes, fontsize=8)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Class distribution - {subtitle}", loc="left", fontsize=10)
    ax.legend(ncols=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    return fig


# ---- classic studies ------------------------------------------------------------------------------

def mi_heatmap(mi_file_order: np.ndarray, title: str, top: int = 10, side: int = 28,
               second: tuple[np.ndarray, str] | None = None) -> plt.Figure:
    """MI of each pixel drawn upright (file index p -> row p % 28, column p // 28); top pixels ringed."""
    panels = [(np.asarray(mi_file_order), title)] + ([second] if second is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (mi, name) in zip(axes[0], panels):
        upright = mi.reshape(side, side).T  # file order is the transposed image
        image = ax.imshow(upright, cmap="magma")
        ranked = np.argsort(-mi, kind="stable")[:top]
        ax.scatter(ranked // side, ranked % side, s=60, facecolors="none", edgecolors="cyan", linewidths=1.2,
                   label=f"top {top} pixels")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("column (upright)")
        ax.set_ylabel("row (upright)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mutual information (nats)")
        ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    fig.tight_layout()
    return fig


def _accuracy_axes(fig: plt.Figure, ax: plt.Axes, xlabel: str, title: str) -> plt.Figure:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rf_vs_top_k(k: np.ndarray, accuracy: np.ndarray, subtitle: str,
                study: tuple[np.ndarray, np.ndarray] | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(k, accuracy, "o-", label="this run (one seeded split, forest seeded)")
    if study is not None:
        ax.plot(*study, "--", color="grey", label="original study (real EMNIST, new split per k)")
    return _accuracy_axes(fig, ax, "number of top-MI pixels k", f"RandomForest accuracy vs top-k MI pixels\n{subtitle}")


def pca_curves(n: np.ndarray, logreg: np.ndarray, converged: np.ndarray, rf: np.ndarray, jax_: np.ndarray,
               subtitle: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(n, logreg, "o-", label="sklearn LogisticRegression (unscaled, as the study)")
    if (~converged).any():
        ax.scatter(n[~converged], logreg[~converged], s=120, facecolors="none", edgecolors="red", zorder=3,
                   label="lbfgs did not converge")
    ax.plot(n, rf, "s-", label="RandomForest (never fitted in the study)")
    ax.plot(n, jax_, "^-", label="JAX one-vs-rest (Newton, standardised)")
    return _accuracy_axes(fig, ax, "PCA components", f"PCA dimensionality reduction vs accuracy\n{subtitle}")


# ---- CNN ---------------------------------------------------------------------------------------------

def cnn_history(loss: list[float], accuracy: list[float], subtitle: str,
                study: tuple[list[float], list[float]] | None = None) -> plt.Figure:
    """Loss and accuracy per epoch, beside the study's.

    The top row spans this run's epochs only, so a short run's points are not squeezed into a
    corner; the study's curve is drawn over the same epochs. When the study trained longer, a
    second row shows its whole curve with this run's epochs shaded.
    """
    n = len(loss)
    epochs = np.arange(1, n + 1)
    longer = study is not None and len(study[0]) > n
    fig, axes = plt.subplots(2 if longer else 1, 2, figsize=(9.5, 6.6 if longer else 3.6), squeeze=False)
    names = ("training loss (cross-entropy)", "training accuracy")
    for col, (ours, name) in enumerate(zip((loss, accuracy), names)):
        ax = axes[0, col]
        ax.plot(epochs, ours, "o-", color="tab:blue", markersize=7, label="this run")
        if study is not None:
            theirs = np.asarray(study[col])
            shown = min(n, len(theirs))
            ax.plot(epochs[:shown], theirs[:shown], "s--", color="grey", markersize=5,
                    label=f"original study (real EMNIST), epochs 1-{shown}" if shown > 1
                    else "original study (real EMNIST), epoch 1")
        ax.set_xlim(0.5, n + 0.5)
        if n <= 12:
            ax.set_xticks(epochs)
        ax.set_title(f"{name}, this run's {n} epoch{'s' if n > 1 else ''}", fontsize=9)
        if longer:
            whole = axes[1, col]
            study_epochs = np.arange(1, len(study[col]) + 1)
            whole.axvspan(0.5, n + 0.5, color="tab:blue", alpha=0.08, label="this run's epochs")
            whole.plot(study_epochs, study[col], "s--", color="grey", markersize=4, label="original study")
            whole.plot(epochs, ours, "o", color="tab:blue", markersize=5, label="this run")
            whole.set_xlim(0.5, len(study_epochs) + 0.5)
            whole.set_title(f"{name}: the study's {len(study_epochs)} epochs", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if not (ax in axes[0] and n <= 12):
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.suptitle(f"CNN training per epoch (epoch means) - {subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


def confusion(confusion_matrix: np.ndarray, classes: tuple[str, ...], subtitle: str) -> plt.Figure:
    """Row-normalised confusion (share of each true class), log colour scale so mistakes show."""
    from matplotlib.colors import LogNorm

    rows = confusion_matrix.sum(axis=1, keepdims=True)
    share = np.divide(confusion_matrix, rows, out=np.zeros(confusion_matrix.shape), where=rows > 0)
    n = len(classes)
    size = max(5.0, 0.13 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(np.where(share > 0, share, np.nan), cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1))
    ax.set_xticks(range(n), classes, fontsize=7 if n > 30 else 9, family="monospace")
    ax.set_yticks(range(n), classes, fontsize=7 if n > 30 else 9, family="monospace")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.3, alpha=0.4)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class (log scale)")
    ax.set_title(f"CNN confusion matrix (rows sum to 1) - {subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


def confused_examples(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                      pairs: list[tuple[str, str, int]], classes: tuple[str, ...], per_pair: int = 5) -> plt.Figure:
    """For each most-confused pair: test images of the true class that were predicted as the
    other, and beside them one correctly classified image of the class they were taken for.

    Drawn as one montage image with text labels (dozens of separate panels were slow to save).
    """
    index = {c: i for i, c in enumerate(classes)}
    pairs = pairs[:8]
    side, gap, space = images.shape[1], 2, 12   # pixels: between images; before the reference column
    rows = max(len(pairs), 1)
    width = per_pair * (side + gap) + space + side
    canvas = np.full((rows * (side + gap), width), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(0.62 * (per_pair + 1) + 2.4, 0.62 * rows + 0.9))
    for row, (true, predicted, count) in enumerate(pairs):
        top = row * (side + gap)
        hits = np.flatnonzero((labels == index[true]) & (predictions == index[predicted]))[:per_pair]
        for col in range(per_pair):
            tile = images[hits[col]] if col < len(hits) else np.full((side, side), 235, np.uint8)
            canvas[top:top + side, col * (side + gap): col * (side + gap) + side] = tile
        right = np.flatnonzero((labels == index[predicted]) & (predictions == index[predicted]))
        left = per_pair * (side + gap) + space
        canvas[top:top + side, left:left + side] = images[right[0]] if len(right) else 235
        ax.text(-4, top + side / 2, f"'{true}' as '{predicted}'  ({count:,}x)", ha="right", va="center", fontsize=8)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.text(per_pair * (side + gap) / 2, -3, "test images of the true class, predicted as the other", ha="center",
            va="bottom", fontsize=8)
    ax.text(per_pair * (side + gap) + space + side / 2, -3, "what they\nwere taken for", ha="center", va="bottom",
            fontsize=7, color="#555")
    ax.axis("off")
    ax.set_title("Most confused pairs on the test set", fontsize=10, pad=26)
    fig.tight_layout()
    return fig


def stage_times(seconds: dict[str, float], status: dict[str, str]) -> plt.Figure:
    names = list(seconds)
    values = [seconds[n] for n in names]
    colours = ["tab:blue" if status.get(n) == "ok" else "tab:red" for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    bars = ax.barh(names, values, color=colours)
    ax.bar_label(bars, [f"{v:.1f} s" for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wall-clock seconds")
    ax.set_xlim(0, max(values + [1]) * 1.18)
    ax.set_title("Time per stage (red: failed)", fontsize=10)
    fig.tight_layout()
    return fig
