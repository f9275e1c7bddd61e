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
