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
    """Random upright training samples of every class, one titled panel per class."""
    rng = np.random.default_rng(seed)
    n_cols = 8 if dataset.n_classes > 16 else min(dataset.n_classes, 5)
    n_rows = -(-dataset.n_classes // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.35 * n_rows + 0.6), squeeze=False)
    for label, ax in enumerate(axes.flat):
        ax.axis("off")
        if label >= dataset.n_classes:
            continue
        members = np.flatnonzero(dataset.train_labels == label)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False) if len(members) else []
        if len(chosen):
            ax.imshow(_montage(dataset.train_images[np.sort(chosen)], cols=3), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{label}: '{dataset.classes[label]}'", fontsize=9)
    fig.suptitle(f"Training samples per class (upright) - {_title_suffix(dataset)}", fontsize=11)
    fig.tight_layout()
    return fig


def class_distribution(dataset: Dataset) -> plt.Figure:
    """Images per class, train and test side by side."""
    x = np.arange(dataset.n_classes)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * dataset.n_classes + 2), 3.4))
    ax.bar(x - 0.2, dataset.class_counts("train"), width=0.4, label="train")
    ax.bar(x + 0.2, dataset.class_counts("test"), width=0.4, label="test")
    ax.set_xticks(x, dataset.classes, fontsize=8)
    ax.set_xlim(-0.7, dataset.n_classes - 0.3)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title(f"Class distribution - {_title_suffix(dataset)}")
    ax.legend()
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
    epochs = np.arange(1, len(loss) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_loss.plot(epochs, loss, "o-", label="this run")
    ax_acc.plot(epochs, accuracy, "o-", label="this run")
    if study is not None:
        study_epochs = np.arange(1, len(study[0]) + 1)
        ax_loss.plot(study_epochs, study[0], "--", color="grey", label="original study (real EMNIST)")
        ax_acc.plot(study_epochs, study[1], "--", color="grey", label="original study (real EMNIST)")
    ax_loss.set_ylabel("training loss (cross-entropy, epoch mean)")
    ax_acc.set_ylabel("training accuracy (epoch mean)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"CNN training per epoch - {subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


def confusion(confusion_matrix: np.ndarray, classes: tuple[str, ...], subtitle: str) -> plt.Figure:
    """Row-normalised confusion (share of each true class), log colour scale so mistakes show."""
    from matplotlib.colors import LogNorm

    rows = confusion_matrix.sum(axis=1, keepdims=True)
    share = np.divide(confusion_matrix, rows, out=np.zeros(confusion_matrix.shape), where=rows > 0)
    n = len(classes)
    size = max(5.0, 0.16 * n + 2.5)
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
    """For each most-confused pair, a few test images of the true class predicted as the other."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = pairs[:8]
    fig, axes = plt.subplots(max(len(pairs), 1), per_pair, figsize=(1.3 * per_pair + 1.6, 1.35 * max(len(pairs), 1)),
                             squeeze=False)
    for row, (true, predicted, count) in enumerate(pairs):
        hits = np.flatnonzero((labels == index[true]) & (predictions == index[predicted]))[:per_pair]
        for col in range(per_pair):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(hits):
                ax.imshow(images[hits[col]], cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(f"'{true}' -> '{predicted}'\n{count} times", fontsize=9, rotation=0, ha="right",
                                va="center", labelpad=8)
    fig.suptitle("Most confused pairs: test images of the true class predicted as the other", fontsize=10)
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
