"""What the report says about each stage: its text, tables (each with a caption) and figures.

Built from a stage's stored :class:`StageResult` (so a resumed run draws the same report), the
data set and the profile. Every number in the text comes from the result or the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from emnist_jax.report.stages import Inputs
from emnist_jax.report.store import StageResult
from emnist_jax.report.writers import table


def _label(inputs: Inputs) -> str:
    d = inputs.dataset
    return f"{d.split}, {'SYNTHETIC embedded default' if d.synthetic else Path(d.source).name}"


class _Figures:
    def __init__(self, folder: Path):
        self.folder = folder
        self.items: list[dict] = []

    def add(self, fig, name: str, caption: str) -> None:
        from emnist_jax import plots

        plots.save(fig, self.folder / name)
        self.items.append({"file": name, "caption": caption})


def _section(title: str, text: list[str], tables: list[dict], figures: _Figures) -> dict:
    return {"title": title, "text": text, "tables": tables, "figures": figures.items}


def data(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    from emnist_jax import plots

    d = inputs.dataset
    train, test = (np.asarray(result.metrics["class_counts"][part]) for part in ("train", "test"))
    figures = _Figures(folder)
    figures.add(plots.sample_grid(d, seed=inputs.seed), "samples.png",
                "Random training samples of every class, upright.")
    figures.add(plots.class_distribution(train, test, d.classes, _label(inputs)), "class_distribution.png",
                "Images per class in the train and test files.")
    lowest, highest = int(train.argmin()), int(train.argmax())
    return _section("Data", [
        f"Source: {d.source}; split {d.split}; {d.n_classes} classes; {int(train.sum()):,} training and "
        f"{int(test.sum()):,} test images, 28x28 uint8, shown upright (the files store them transposed).",
        f"Per class: train {train.min():,}..{train.max():,} (fewest '{d.classes[lowest]}', most "
        f"'{d.classes[highest]}'), test {test.min():,}..{test.max():,}."], [], figures)


def mi(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    from emnist_jax import original_study as o
    from emnist_jax import plots
    from emnist_jax.report.comparison import STUDY_PROTOCOL

    m = result.metrics["mutual_information"]
    jax_name = f"JAX, {m['bins']}-bin plug-in estimator"
    rows = [[jax_name, f"{m['jax_seconds']:.2f} s", m["top_pixels"][:5], m["max"], m["n_zero"]]]
    second = None
    text = [f"Mutual information between each pixel and the label on the first {m['n_rows']:,} training images. "
            "Pixel indices are in the files' (transposed) order, as in the study."]
    if "sklearn" in m:
        s = m["sklearn"]
        name = "sklearn mutual_info_classif " + ("(discrete_features=True)" if s["estimator"] == "discrete"
                                                 else "(defaults, as the study)")
        rows.append([name, f"{s['seconds']:.2f} s", s["top_pixels"][:5], s["max"], s["n_zero"]])
        second = (result.arrays["sklearn"], name)
        text.append(f"Agreement of the two estimators: Spearman {s['spearman']:.3f}, top-64 overlap "
                    f"{s['top64_overlap']}/64; JAX took {m['jax_seconds']:.2f} s including compilation, "
                    f"sklearn {s['seconds']:.2f} s.")
    rows.append([f"original study (sklearn defaults, real EMNIST, {STUDY_PROTOCOL.classic.n_rows:,} rows)", "not reported",
                 list(o.MI_TOP5), o.MI_MAX, o.MI_ZERO_PIXELS])
    figures = _Figures(folder)
    figures.add(plots.mi_heatmap(result.arrays["jax"], f"JAX MI ({m['bins']} bins)", second=second),
                "mi_heatmap.png", "MI per pixel, drawn upright; rings mark the top 10.")
    return _section("Mutual-information pixel ranking", text, [table(
        ["estimator", "time", "top-5 pixels (file order)", "max MI (nats)", "pixels with MI 0"], rows,
        caption="The estimators side by side; pixel indices in the files' (transposed) order.")], figures)


def rf(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    from emnist_jax import original_study as o
    from emnist_jax import plots

    m = result.metrics["rf_topk"]
    k, accuracy = np.asarray(m["k"]), np.asarray(m["accuracy"])
    best = int(np.argmax(accuracy))
    test_size = inputs.profile.classic.test_size
    figures = _Figures(folder)
    figures.add(plots.rf_vs_top_k(k, accuracy, _label(inputs), (np.asarray(o.RF_K), np.asarray(o.RF_ACCURACY))),
                "rf_topk.png", "Test accuracy vs number of top-MI pixels; the grey line is the original study's "
                "(real EMNIST).")
    return _section("RandomForest accuracy vs top-k MI pixels", [
        f"{m['n_estimators']} trees, one seeded {1 - test_size:.0%}/{test_size:.0%} split "
        f"({m['n_train']:,}/{m['n_test']:,}) shared by every k; pixels ranked by {m['ranking']}. "
        f"Best: {accuracy[best]:.4f} at k = {k[best]}."],
        [table(["k", "accuracy"], [[a, b] for a, b in zip(m["k"], m["accuracy"])],
               caption="Test accuracy of one forest per k.")], figures)


def pca(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    from emnist_jax import plots

    m = result.metrics["pca"]
    n = np.asarray(m["n_components"])
    converged = np.asarray(m["logreg_converged"], bool)
    missed = n[~converged].tolist()
    convergence = ("every fit converged" if not missed else
                   f"it did not converge at n = {', '.join(map(str, missed))}")
    figures = _Figures(folder)
    figures.add(plots.pca_curves(n, np.asarray(m["logreg"]), converged, np.asarray(m["rf"]), np.asarray(m["jax"]),
                                 _label(inputs)), "pca.png", "Test accuracy vs PCA components.")
    return _section("PCA, then logistic regression and RandomForest", [
        f"PCA ({m.get('pca_solver', 'sklearn')} solver, fitted once at n = {n.max()}; each smaller n is its leading "
        f"components) on the training part ({m['n_train']:,} rows), scored on {m['n_test']:,}. sklearn "
        f"LogisticRegression (max_iter={m['logreg_max_iter']:,}) on unscaled PCA scores as the study: {convergence}. "
        "The study built a RandomForest per n but never fitted it; here it is fitted. The JAX one-vs-rest "
        "logistic regression (Newton) runs on standardised scores."],
        [table(["components", "sklearn LogisticRegression", "converged", "RandomForest", "JAX OvR"],
               [list(row) for row in zip(m["n_components"], m["logreg"], m["logreg_converged"], m["rf"], m["jax"])],
               caption="Test accuracy per number of PCA components.")], figures)


def logreg(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    j, s = result.metrics["logreg_jax"], result.metrics["logreg_sklearn"]
    gd = j["study_gd"]
    return _section("Logistic regression: the study's algorithm and a penalised solver, in JAX", [
        f"On {j['features']} of the same split. The study defined its hand-written one-vs-rest gradient ascent but "
        "never ran it; here it runs (jit + vmap over classes). Times include JAX compilation."],
        [table(["model", "test accuracy", "seconds"], [
            [f"JAX OvR, the study's gradient ascent (alpha {gd['alpha']}, {gd['iterations']:,} iterations)",
             gd["test_accuracy"], gd["seconds"]],
            [f"JAX OvR, L2 (C=1) {j['solver'].capitalize()}", j["test_accuracy"], j["seconds"]],
            [f"sklearn {s['model']}", s["test_accuracy"], s["seconds"]]],
            caption="Test accuracy and wall-clock seconds of each fit.")], _Figures(folder))


def cnn(result: StageResult, inputs: Inputs, folder: Path) -> dict:
    from emnist_jax import original_study as o
    from emnist_jax import plots

    m, d = result.metrics["cnn"], inputs.dataset
    c = m["config"]
    epochs = m["epochs"]
    rows = [[i + 1, e["loss"], e["accuracy"], e["seconds"], e["images_per_second"]] for i, e in enumerate(epochs)]
    holdout = (f" Hold-out ({c['holdout_fraction']:.0%} of the rows, as the study; {m['holdout_n']:,} images): "
               f"accuracy {m['holdout_accuracy']:.4f}, loss {m['holdout_loss']:.4f}."
               if m.get("holdout_accuracy") is not None else "")
    cnn_data = inputs.cnn_dataset()  # the rows the CNN saw (a profile may take the first N)
    rows_used = (f"the first {m['n_train_file_rows']:,} rows of the train file"
                 if m["n_train_file_rows"] < len(d.train_labels) else "the train file")
    test_rows = (f"the first {m['test']['n']:,} images of the test file" if m["test"]["n"] < len(d.test_labels)
                 else f"{m['test']['n']:,} images")
    text = [f"The study's architecture ({m['n_params']:,} parameters), Adam (lr {c['learning_rate']}, eps {c['eps']}), "
            f"batch {c['batch_size']}, {c['epochs']} epoch(s), protocol '{c['protocol']}' on {rows_used} "
            f"({m['n_train']:,} training images); {m['backend']} x {m['devices']} device(s), convolution "
            f"'{c['conv_impl']}', {c['steps_per_call']} step(s) per jitted call.",
            f"Official test set: accuracy {m['test_accuracy']:.4f}, loss {m['test_loss']:.4f} ({test_rows}, "
            f"{m['eval_seconds']:.1f} s).{holdout}"]
    text.append(f"Compiling the training program took {m['compile_seconds']:.1f} s before the first step; the "
                "epoch times and images/s below are training only." if m["compile_seconds"] >= 0.05 else
                "The training program was already compiled in this process; the epoch times are training only.")
    figures = _Figures(folder)
    figures.add(plots.cnn_history([e["loss"] for e in epochs], [e["accuracy"] for e in epochs], _label(inputs),
                                  (list(o.CNN_EPOCH_LOSS), list(o.CNN_EPOCH_ACCURACY))),
                "cnn_history.png", "Training loss and accuracy per epoch (epoch means), beside the study's.")
    figures.add(plots.confusion(np.asarray(m["confusion"]), d.classes, _label(inputs)), "confusion.png",
                "Confusion matrix on the official test set, rows normalised, log colour scale.")
    pairs = [(p["true"], p["predicted"], p["count"]) for p in m["test"]["confused_pairs"]]
    figures.add(plots.confused_examples(cnn_data.test_images, cnn_data.test_labels, result.arrays["test_predictions"],
                                        pairs, d.classes), "confused_pairs.png",
                "The most confused pairs: test images of the true class that were predicted as the other, and "
                "a correctly classified image of the class they were taken for.")
    return _section("Convolutional network (Flax, Optax Adam)", text, [
        table(["epoch", "train loss", "train accuracy", "seconds", "images/s"], rows,
              caption="Training per epoch: means over the epoch's batches, wall-clock time and throughput."),
        table(["true", "predicted as", "count"], [list(p) for p in pairs],
              caption="The most frequent mistakes on the official test set.")], figures)


SECTIONS: dict[str, Callable[[StageResult, Inputs, Path], dict[str, Any]]] = {
    "data": data, "mi": mi, "rf": rf, "pca": pca, "logreg": logreg, "cnn": cnn}
