"""``python -m emnist_jax.report``: one command from the EMNIST files to a complete study report.

    python -m emnist_jax.report                                   # embedded default, byclass, quick
    python -m emnist_jax.report --data emnist/emnist-byclass.mat --profile full
    python -m emnist_jax.report --only mi,rf --out reports/mi-only

Runs the stages data, mi, rf, pca, logreg and cnn, times each, and writes ``index.html``,
``report.md``, ``metrics.json`` and PNG figures into a folder under ``reports/`` (written
to a temporary folder and renamed at the end). Exit codes: 0 ok, 1 a stage failed (the other
stages still ran and the report shows which failed), 2 bad arguments or data.

Measured: ``quick`` on the embedded default on the 2-core development machine: see README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

STAGES = ("data", "mi", "rf", "pca", "logreg", "cnn")


def profiles() -> dict:
    from emnist_jax.profiles import PROFILES

    return PROFILES


@dataclasses.dataclass
class Run:
    """Everything the stages share: the data, the output folder, and what they produced."""

    dataset: Any
    profile_name: str
    profile: Any
    seed: int
    out: Path
    metrics: dict = dataclasses.field(default_factory=dict)
    sections: dict = dataclasses.field(default_factory=dict)
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        d = self.dataset
        return f"{d.split}, {'SYNTHETIC embedded default' if d.synthetic else os.path.basename(d.source)}"

    def figure(self, fig, name: str) -> str:
        from emnist_jax import plots

        plots.save(fig, self.out / name)
        return name

    def section(self, stage: str, title: str, text: list[str] | None = None, tables: list[dict] | None = None,
                figures: list[tuple[str, str]] | None = None) -> None:
        self.sections[stage] = {"title": title, "text": text or [], "tables": tables or [],
                                "figures": [{"file": f, "caption": c} for f, c in (figures or [])]}

    def study_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The first n_rows training images in the files' (transposed) pixel order, and labels."""
        from emnist_jax.data import file_rows

        if "rows" not in self.cache:
            n = min(self.profile.classic.n_rows, len(self.dataset.train_labels))
            self.cache["rows"] = (file_rows(self.dataset.train_images[:n]), self.dataset.train_labels[:n])
        return self.cache["rows"]


def bar(total: int, desc: str):
    """A tqdm bar for a long loop inside a stage (shown on a terminal only)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"           {desc}", leave=False, disable=not sys.stderr.isatty())


def table(headers: list[str], rows: list[list[Any]]) -> dict:
    return {"headers": headers, "rows": [[fmt(v) for v in row] for row in rows]}


def fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


# ---- stages ---------------------------------------------------------------------------------------

def stage_data(run: Run) -> None:
    from emnist_jax import plots

    d = run.dataset
    train, test = d.class_counts("train"), d.class_counts("test")
    run.section("data", "Data", text=[
        f"Source: {d.source}; split {d.split}; {d.n_classes} classes; {len(d.train_labels):,} training and "
        f"{len(d.test_labels):,} test images, 28x28 uint8, shown upright (the files store them transposed).",
        f"Per class: train {train.min():,}..{train.max():,} (fewest '{d.classes[train.argmin()]}', most "
        f"'{d.classes[train.argmax()]}'), test {test.min():,}..{test.max():,}."],
        figures=[(run.figure(plots.sample_grid(d, seed=run.seed), "samples.png"),
                  "Random training samples of every class, upright."),
                 (run.figure(plots.class_distribution(d), "class_distribution.png"), "Images per class.")])


def stage_mi(run: Run) -> None:
    from scipy.stats import spearmanr

    from emnist_jax import baselines, original_study, plots
    from emnist_jax.features import file_to_upright, mutual_information, rank_pixels

    X, y = run.study_rows()
    cfg = run.profile.classic
    start = time.perf_counter()
    mi = np.asarray(mutual_information(X, y, run.dataset.n_classes, bins=cfg.mi_bins))
    jax_seconds = time.perf_counter() - start
    ranking = rank_pixels(mi)
    result = {"n_rows": len(y), "pixel_order": "file (transposed); upright row = p % 28, column = p // 28",
              "bins": cfg.mi_bins, "jax_seconds": jax_seconds, "top_pixels": ranking[:64].tolist(),
              "top_pixels_upright": [list(map(int, file_to_upright(p))) for p in ranking[:64]],
              "max": float(mi.max()), "argmax": int(ranking[0]), "n_zero": int((mi <= 0).sum()),
              "values": mi.tolist()}
    figures_second = None
    rows = [["JAX, 16-bin plug-in estimator", f"{jax_seconds:.2f} s", ranking[:5].tolist(),
             f"{mi.max():.4f}", int((mi <= 0).sum())]]
    if cfg.sklearn_mi != "none":
        discrete = cfg.sklearn_mi == "discrete"
        start = time.perf_counter()
        theirs = baselines.sklearn_mutual_information(X, y, discrete=discrete, seed=run.seed)
        seconds = time.perf_counter() - start
        their_rank = rank_pixels(theirs)
        name = "sklearn mutual_info_classif " + ("(discrete_features=True)" if discrete else "(defaults, as the study)")
        result["sklearn"] = {"estimator": "discrete" if discrete else "default (k-NN, 3 neighbours)",
                             "seconds": seconds, "top_pixels": their_rank[:64].tolist(), "max": float(theirs.max()),
                             "argmax": int(their_rank[0]), "n_zero": int((theirs <= 0).sum()),
                             "spearman": float(spearmanr(mi, theirs).statistic),
                             "top64_overlap": len(set(ranking[:64]) & set(their_rank[:64]))}
        rows.append([name, f"{seconds:.2f} s", their_rank[:5].tolist(), f"{theirs.max():.4f}",
                     int((theirs <= 0).sum())])
        figures_second = (theirs, name)
    rows.append(["original study (sklearn defaults, real EMNIST, 50,000 rows)", "not reported",
                 list(original_study.MI_TOP5), f"{original_study.MI_MAX:.4f}", original_study.MI_ZERO_PIXELS])
    run.metrics["mutual_information"] = result
    text = [f"Mutual information between each pixel and the label on the first {len(y):,} training images. "
            "Pixel indices are in the files' (transposed) order, as in the study."]
    if "sklearn" in result:
        s = result["sklearn"]
        text.append(f"Agreement of the two estimators: Spearman {s['spearman']:.3f}, top-64 overlap "
                    f"{s['top64_overlap']}/64; JAX took {jax_seconds:.2f} s including compilation, sklearn {s['seconds']:.2f} s.")
    fig = plots.mi_heatmap(mi, "JAX MI (16 bins)", second=figures_second)
    run.section("mi", "Mutual-information pixel ranking", text=text,
                tables=[table(["estimator", "time", "top-5 pixels (file order)", "max MI (nats)", "pixels with MI 0"],
                              rows)],
                figures=[(run.figure(fig, "mi_heatmap.png"), "MI per pixel, drawn upright; rings mark the top 10.")])


def stage_rf(run: Run) -> None:
    from emnist_jax import baselines, original_study, plots
    from emnist_jax.features import mutual_information, rank_pixels

    X, y = run.study_rows()
    cfg = run.profile.classic
    # Rank on the training part only: the study ranked on all rows it then tested on (leakage).
    X_train, _, y_train, _ = baselines.study_split(X, y, cfg.test_size, run.seed)
    ranking = rank_pixels(mutual_information(X_train, y_train, run.dataset.n_classes, bins=cfg.mi_bins))
    ks = [k for k in cfg.ks if k <= X.shape[1]]
    with bar(len(ks), "forests (k)") as progress:
        result = baselines.rf_accuracy_vs_top_k(X, y, ranking, ks, cfg.test_size, run.seed, cfg.rf_trees, cfg.n_jobs,
                                                progress=lambda k: progress.update())
    run.metrics["rf_topk"] = {"k": result.k.tolist(), "accuracy": result.accuracy.tolist(),
                              "n_train": result.n_train, "n_test": result.n_test, "n_estimators": cfg.rf_trees,
                              "ranking": "JAX MI on the training part of the split"}
    study = (np.array(original_study.RF_K), np.array(original_study.RF_ACCURACY))
    best = int(np.argmax(result.accuracy))
    run.section("rf", "RandomForest accuracy vs top-k MI pixels", text=[
        f"{cfg.rf_trees} trees, one seeded {1 - cfg.test_size:.0%}/{cfg.test_size:.0%} split "
        f"({result.n_train:,}/{result.n_test:,}) shared by every k; pixels ranked by MI on the training part only. "
        f"Best: {result.accuracy[best]:.4f} at k = {result.k[best]}."],
        tables=[table(["k", "accuracy"], [[k, a] for k, a in zip(result.k, result.accuracy)])],
        figures=[(run.figure(plots.rf_vs_top_k(result.k, result.accuracy, run.label, study), "rf_topk.png"),
                  "Test accuracy vs number of top-MI pixels; the grey line is the original study's (real EMNIST).")])


def stage_pca(run: Run) -> None:
    from emnist_jax import baselines, plots

    X, y = run.study_rows()
    cfg = run.profile.classic
    with bar(len(cfg.pca_components), "PCA sizes") as progress:
        r = baselines.pca_sweep(X, y, cfg.pca_components, cfg.test_size, run.seed, cfg.rf_trees,
                                cfg.logreg_max_iter, cfg.n_jobs, progress=lambda n: progress.update())
    run.metrics["pca"] = {"n_components": r.n_components.tolist(), "logreg": r.logreg.tolist(),
                          "logreg_converged": r.logreg_converged.tolist(), "rf": r.rf.tolist(), "jax": r.jax.tolist(),
                          "logreg_max_iter": cfg.logreg_max_iter, "n_train": r.n_train, "n_test": r.n_test}
    not_converged = r.n_components[~r.logreg_converged].tolist()
    run.section("pca", "PCA, then logistic regression and RandomForest", text=[
        f"PCA fit on the training part ({r.n_train:,} rows), scored on {r.n_test:,}. sklearn LogisticRegression "
        f"(max_iter={cfg.logreg_max_iter}) on unscaled PCA scores as the study; it did not converge at "
        f"n = {not_converged or 'none'}. The study built a RandomForest per n but never fitted it; here it is fitted. "
        "The JAX one-vs-rest logistic regression (Newton) runs on standardised scores."],
        tables=[table(["components", "sklearn LogisticRegression", "converged", "RandomForest", "JAX OvR"],
                      [[n, a, c, b, j] for n, a, c, b, j in
                       zip(r.n_components, r.logreg, r.logreg_converged, r.rf, r.jax)])],
        figures=[(run.figure(plots.pca_curves(r.n_components, r.logreg, r.logreg_converged, r.rf, r.jax, run.label),
                             "pca.png"), "Test accuracy vs PCA components.")])


def stage_logreg(run: Run) -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from emnist_jax import baselines, logreg

    X, y = run.study_rows()
    cfg = run.profile.classic
    X_train, X_test, y_train, y_test = baselines.study_split(X.astype(np.float32), y, cfg.test_size, run.seed)
    n = min(29, X_train.shape[0] - 1)
    pca = PCA(n, random_state=run.seed).fit(X_train)
    scaler = StandardScaler().fit(pca.transform(X_train))
    train = scaler.transform(pca.transform(X_train)).astype(np.float32)
    test = scaler.transform(pca.transform(X_test)).astype(np.float32)
    classes = np.unique(y_train)
    index = np.searchsorted(classes, y_train)

    def accuracy(params) -> float:
        return float((classes[np.asarray(logreg.ovr_predict(params, test))] == y_test).mean())

    def timed(function: Callable):
        import jax

        start = time.perf_counter()
        value = jax.block_until_ready(function())
        return value, time.perf_counter() - start

    newton, t_newton = timed(lambda: logreg.ovr_fit(train, index, len(classes)))
    gd, t_gd = timed(lambda: logreg.ovr_fit_gd(train, index, len(classes), n_iter=run.profile.gd_iterations))
    model, t_sk = timed(lambda: LogisticRegression(max_iter=cfg.logreg_max_iter).fit(train, y_train))
    run.metrics["logreg_jax"] = {"features": f"{n} standardised PCA components", "solver": "newton",
                                 "test_accuracy": accuracy(newton), "seconds": t_newton,
                                 "study_gd": {"test_accuracy": accuracy(gd), "iterations": run.profile.gd_iterations,
                                              "alpha": 0.1, "seconds": t_gd}}
    run.metrics["logreg_sklearn"] = {"test_accuracy": float(model.score(test, y_test)), "seconds": t_sk,
                                     "model": "LogisticRegression (multinomial lbfgs)"}
    run.section("logreg", "Logistic regression: the study's algorithm and a penalised solver, in JAX", text=[
        f"On {n} standardised PCA components of the same split ({len(y_train):,}/{len(y_test):,}). The study "
        "defined its hand-written one-vs-rest gradient ascent but never ran it; here it runs (jit + vmap over "
        "classes). Times include JAX compilation."],
        tables=[table(["model", "test accuracy", "seconds"], [
            [f"JAX OvR, the study's gradient ascent (alpha 0.1, {run.profile.gd_iterations} iterations)",
             accuracy(gd), t_gd],
            ["JAX OvR, L2 (C=1) Newton", accuracy(newton), t_newton],
            ["sklearn LogisticRegression (multinomial)", model.score(test, y_test), t_sk]])])


def stage_cnn(run: Run) -> None:
    from emnist_jax import original_study, plots
    from emnist_jax.cnn import TrainConfig, train_and_evaluate
    from emnist_jax.cnn.malloc import tune_malloc

    tune_malloc()
    config = dataclasses.replace(run.profile.cnn, seed=run.seed)
    result = train_and_evaluate(run.dataset, config, progress=sys.stderr.isatty(),
                                on_epoch=lambda e: print(f"           cnn {e}", flush=True))
    test = result.evaluations["test"]
    holdout = result.evaluations.get("holdout")
    c = result.config
    run.metrics["cnn"] = {
        "n_params": result.n_params, "n_train": result.n_train, "backend": result.backend, "devices": result.devices,
        "config": dataclasses.asdict(c), "test_accuracy": test.accuracy, "test_loss": test.loss,
        "holdout_accuracy": holdout.accuracy if holdout else None, "holdout_loss": holdout.loss if holdout else None,
        "eval_seconds": test.seconds,
        "epochs": [{"loss": h.loss, "accuracy": h.accuracy, "seconds": h.seconds,
                    "images_per_second": h.images_per_second} for h in result.history],
        "test": test.to_json(), "confusion": test.confusion.tolist(),
    }
    study = (list(original_study.CNN_EPOCH_LOSS), list(original_study.CNN_EPOCH_ACCURACY))
    rows = [[h.epoch, h.loss, h.accuracy, h.seconds, h.images_per_second] for h in result.history]
    run.section("cnn", "Convolutional network (Flax, Optax Adam)", text=[
        f"The study's architecture ({result.n_params:,} parameters), Adam (lr {c.learning_rate}, eps {c.eps}), "
        f"batch {c.batch_size}, {c.epochs} epochs, protocol '{c.protocol}' ({result.n_train:,} training images); "
        f"{result.backend} x {result.devices} device(s), convolution '{c.conv_impl}', {c.steps_per_call} steps per "
        f"jitted call.",
        f"Official test set: accuracy {test.accuracy:.4f}, loss {test.loss:.4f} ({test.n:,} images, "
        f"{test.seconds:.1f} s)." + (f" Hold-out (33 % of the train file, as the study): accuracy "
                                      f"{holdout.accuracy:.4f}, loss {holdout.loss:.4f}." if holdout else "")],
        tables=[table(["epoch", "train loss", "train accuracy", "seconds", "images/s"], rows),
                table(["true", "predicted as", "count"], [list(p) for p in test.confused_pairs])],
        figures=[(run.figure(plots.cnn_history([h.loss for h in result.history],
                                                [h.accuracy for h in result.history], run.label, study),
                             "cnn_history.png"), "Training loss and accuracy per epoch (epoch means)."),
                 (run.figure(plots.confusion(test.confusion, run.dataset.classes, run.label), "confusion.png"),
                  "Confusion matrix on the official test set, rows normalised, log colour scale."),
                 (run.figure(plots.confused_examples(run.dataset.test_images, run.dataset.test_labels, test.predictions,
                                                     test.confused_pairs, run.dataset.classes),
                             "confused_pairs.png"), "The most confused pairs, with test images.")])


STAGE_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "data": stage_data, "mi": stage_mi, "rf": stage_rf, "pca": stage_pca, "logreg": stage_logreg, "cnn": stage_cnn}


# ---- comparison with the original study ----------------------------------------------------------

def comparison(run: Run) -> dict:
    """Every headline number of ORIGINAL_STUDY.md section 8 beside this run's."""
    from emnist_jax import original_study as o

    m, d = run.metrics, run.dataset
    if d.synthetic:
        verdict = "not comparable: synthetic data"
    elif d.split != "byclass":
        verdict = f"not comparable: split {d.split}"
    elif run.profile_name != "full":
        verdict = f"partly: profile {run.profile_name}"
    else:
        verdict = "comparable (seeded; the study's runs were not)"
    missing = "not run"
    mi, rf, pca, cnn = (m.get(k, {}) for k in ("mutual_information", "rf_topk", "pca", "cnn"))
    sk = mi.get("sklearn", {})
    rf_at = dict(zip(rf.get("k", []), rf.get("accuracy", [])))
    rows = [
        ["Max MI and its pixel (file order)", f"{o.MI_MAX:.4f} at {o.MI_ARGMAX}",
         f"{sk['max']:.4f} at {sk['argmax']} (sklearn {sk['estimator']})" if sk else
         (f"{mi['max']:.4f} at {mi['argmax']} (JAX)" if mi else missing)],
        ["Pixels with MI = 0", o.MI_ZERO_PIXELS, sk.get("n_zero", mi.get("n_zero", missing))],
        ["Top-5 MI pixels", ", ".join(map(str, o.MI_TOP5)),
         ", ".join(map(str, (sk or mi).get("top_pixels", [])[:5])) or missing],
    ]
    for k in (2, 20, 32, 64):
        rows.append([f"RF accuracy, top-{k} MI pixels", f"{o.RF_ACCURACY[k - 2]:.4f}",
                     f"{rf_at[k]:.4f}" if k in rf_at else missing])
    best = int(np.argmax(rf["accuracy"])) if rf else None
    rows += [
        ["Best RF accuracy over k", f"{max(o.RF_ACCURACY):.4f} (k = 63)",
         f"{rf['accuracy'][best]:.4f} (k = {rf['k'][best]})" if rf else missing],
        ["PCA + LR / PCA + RF accuracies", "not reported (plot only)",
         f"LR {pca['logreg'][-1]:.4f}, RF {pca['rf'][-1]:.4f} at n = {pca['n_components'][-1]}" if pca else missing],
        ["lbfgs non-convergence", f"{len(o.LBFGS_NOT_CONVERGED)} of 29 (n = {', '.join(map(str, o.LBFGS_NOT_CONVERGED))})",
         f"{pca['logreg_converged'].count(False)} of {len(pca['logreg_converged'])}" if pca else missing],
        ["CNN parameters", f"{o.CNN_PARAMS:,}", f"{cnn['n_params']:,}" if cnn else missing],
        ["CNN train / hold-out sizes", f"{o.CNN_TRAIN:,} / {o.CNN_HOLDOUT:,}",
         (f"{cnn['n_train']:,} / {len(d.train_labels) - cnn['n_train']:,}" if cnn.get("holdout_accuracy") is not None
          else f"{cnn['n_train']:,} / none (official protocol)") if cnn else missing],
    ]
    epochs = cnn.get("epochs", [])
    for i, name in ((0, "CNN epoch-1 train loss / acc"), (9, "CNN epoch-10 train loss / acc")):
        rows.append([name, f"{o.CNN_EPOCH_LOSS[i]:.4f} / {o.CNN_EPOCH_ACCURACY[i]:.4f}",
                     f"{epochs[i]['loss']:.4f} / {epochs[i]['accuracy']:.4f}" if len(epochs) > i else missing])
    rows += [
        ["CNN hold-out loss", f"{o.CNN_HOLDOUT_LOSS:.4f}",
         f"{cnn['holdout_loss']:.4f}" if cnn.get("holdout_loss") is not None else missing],
        ["CNN hold-out accuracy", f"{o.CNN_HOLDOUT_ACCURACY:.4f}",
         f"{cnn['holdout_accuracy']:.4f}" if cnn.get("holdout_accuracy") is not None else missing],
        ["CNN official test accuracy", "never measured", f"{cnn['test_accuracy']:.4f}" if cnn else missing],
        ["CNN time per epoch (typical)", "836-861 s (eager mode)",
         f"{np.median([e['seconds'] for e in epochs]):.0f} s, {np.median([e['images_per_second'] for e in epochs]):,.0f} images/s"
         if epochs else missing],
        ["CNN total training time", f"{sum(o.CNN_EPOCH_SECONDS):,} s", f"{sum(e['seconds'] for e in epochs):,.0f} s"
         if epochs else missing],
        ["CNN evaluation time", f"{o.CNN_EVAL_SECONDS} s (230,318 images)",
         f"{cnn['eval_seconds']:.1f} s ({cnn['test']['n']:,} images)" if cnn else missing],
    ]
    return {"verdict": verdict, "table": table(["quantity", "original study", "this run"], rows)}


# ---- output -------------------------------------------------------------------------------------------

def environment() -> dict:
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "matplotlib", "orbax-checkpoint"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "versions": versions, "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def default_out(source: str, split: str, profile: str) -> Path:
    name = "default" if source == "default" else Path(source).name.replace(".", "-")
    return Path("reports") / f"{name}-{split}-{profile}"


def render(run: Run, status: dict, seconds: dict, command: str) -> None:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("emnist_jax", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    context = {"run": run, "metrics": run.metrics, "status": status, "seconds": seconds, "command": command,
               "sections": [dict(run.sections[s], id=s, status=status[s]) for s in STAGES if s in run.sections]
               + [{"id": s, "title": s, "status": status[s], "text": [], "tables": [], "figures": []}
                  for s in STAGES if s not in run.sections and status.get(s, "").startswith("failed")],
               "comparison": comparison(run), "synthetic": run.dataset.synthetic}
    for template, name in (("report.html.j2", "index.html"), ("report.md.j2", "report.md")):
        (run.out / name).write_text(env.get_template(template).render(**context), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emnist_jax.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the EMNIST study and write a report (figures, index.html, report.md, metrics.json).",
        epilog="Stages: data (samples, class balance), mi (mutual information, JAX vs sklearn), rf (RandomForest "
               "vs top-k MI pixels), pca (PCA + logistic regression / RandomForest), logreg (one-vs-rest logistic "
               "regression in JAX vs sklearn), cnn (the study's CNN in Flax).\nExit codes: 0 ok, 1 a stage failed, "
               "2 bad arguments or data.")
    parser.add_argument("--data", default="default",
                        help="'default' (embedded synthetic set), emnist-<split>.mat, a folder of IDX files, "
                             "matlab.zip or gzip.zip (default: %(default)s)")
    parser.add_argument("--split", default=None, help="EMNIST split (default: from the .mat name, else byclass)")
    parser.add_argument("--profile", default="quick", choices=["quick", "full", "smoke"],
                        help="quick: minutes on 2 cores; full: the original study's protocol; smoke: seconds, "
                             "for tests (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: reports/<data>-<split>-<profile>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every split, forest and network (default: 0)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated stages to run, from {','.join(STAGES)} (default: all)")
    parser.add_argument("--device", choices=["cpu", "gpu", "tpu"], default=None,
                        help="JAX platform (default: JAX's choice: an accelerator if one is present)")
    args = parser.parse_args(argv)

    only = STAGES if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in STAGES]
    if unknown or not only:
        parser.exit(2, f"error: --only: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                       f"choose from {', '.join(STAGES)}\n")
    import jax

    if args.device:
        try:
            jax.config.update("jax_platforms", args.device)
            jax.devices()
        except RuntimeError as error:
            parser.exit(2, f"error: --device {args.device}: {str(error).splitlines()[0]}\n")
    from emnist_jax.data import EmnistDataError, load

    started = time.perf_counter()
    print(f"[{0:7.1f} s] loading {args.data} ...", flush=True)
    try:
        dataset = load(args.data, args.split)
    except EmnistDataError as error:
        parser.exit(2, f"error: {error}\n")
    profile_name = args.profile
    out = Path(args.out) if args.out else default_out(args.data, dataset.split, profile_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    run = Run(dataset, profile_name, profiles()[profile_name], args.seed, tmp)
    kind = "SYNTHETIC embedded default" if dataset.synthetic else "EMNIST"
    print(f"[{time.perf_counter() - started:7.1f} s] {kind} {dataset.split}: {len(dataset.train_labels):,} train, "
          f"{len(dataset.test_labels):,} test; profile {profile_name}; writing {out}", flush=True)
    status, seconds = {}, {}
    try:
        for stage in STAGES:
            if stage not in only:
                status[stage] = "skipped"
                continue
            stage_start = time.perf_counter()
            print(f"[{stage_start - started:7.1f} s] {stage} ...", flush=True)
            try:
                STAGE_FUNCTIONS[stage](run)
                status[stage] = "ok"
            except Exception as error:  # a failed stage is reported; the others still run
                status[stage] = f"failed: {type(error).__name__}: {error}".splitlines()[0]
                (tmp / f"{stage}-error.txt").write_text(traceback.format_exc())
                print(f"           {stage} FAILED: {status[stage][8:]} (traceback in {stage}-error.txt)",
                      file=sys.stderr, flush=True)
            seconds[stage] = time.perf_counter() - stage_start
            print(f"[{time.perf_counter() - started:7.1f} s] {stage} {status[stage].split(':')[0]} "
                  f"in {seconds[stage]:.1f} s", flush=True)
        from emnist_jax import plots

        run.figure(plots.stage_times(seconds, status), "timings.png")
        d = dataset
        run.metrics = {
            "schema_version": 1,
            "command": " ".join(["python -m emnist_jax.report", *(argv if argv is not None else sys.argv[1:])]),
            "profile": profile_name, "seed": args.seed, "stages": status, "seconds": seconds,
            "total_seconds": time.perf_counter() - started,
            "dataset": {"source": d.source, "split": d.split, "synthetic": d.synthetic, "n_train": len(d.train_labels),
                        "n_test": len(d.test_labels), "n_classes": d.n_classes, "classes": list(d.classes)},
            "environment": environment(), **run.metrics}
        (tmp / "metrics.json").write_text(json.dumps(run.metrics, indent=1, default=float))
        render(run, status, seconds, run.metrics["command"])
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    failed = [s for s, v in status.items() if v.startswith("failed")]
    print(f"[{time.perf_counter() - started:7.1f} s] wrote {out}/index.html"
          + (f"; FAILED stages: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
