"""Evaluation results the report needs: accuracy, per-class accuracy, confusion, confused pairs."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Evaluation:
    n: int
    loss: float
    accuracy: float
    per_class_accuracy: np.ndarray           # (classes,), NaN for a class with no examples
    confusion: np.ndarray                    # (classes, classes): rows true, columns predicted
    confused_pairs: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    predictions: np.ndarray                  # (n,) predicted class per example
    seconds: float = 0.0                     # wall-clock time of the evaluation

    def to_json(self) -> dict:
        return {"n": self.n, "loss": self.loss, "accuracy": self.accuracy, "seconds": self.seconds,
                "per_class_accuracy": [None if np.isnan(a) else float(a) for a in self.per_class_accuracy],
                "confused_pairs": [{"true": t, "predicted": p, "count": c} for t, p, c in self.confused_pairs]}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def summarize(labels: np.ndarray, predictions: np.ndarray, loss: float, classes: tuple[str, ...],
              top: int = 12, seconds: float = 0.0) -> Evaluation:
    confusion = confusion_matrix(np.asarray(labels), np.asarray(predictions), len(classes))
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(classes[i], classes[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))
             if off[i, j] > 0]
    return Evaluation(int(support.sum()), float(loss), float(np.trace(confusion) / max(support.sum(), 1)),
                      per_class, confusion, pairs, np.asarray(predictions), seconds)
