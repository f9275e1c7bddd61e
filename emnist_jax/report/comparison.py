"""The report's "Original study vs this run" table: every headline number of the study beside ours.

Every original figure comes from :mod:`emnist_jax.original_study` (the numbers the study printed)
or from the ``full`` profile, which is defined as the study's protocol (its row count and PCA
sizes); none is typed into the text here. This run's numbers come from ``metrics.json``'s keys,
so the table can be built from a stored ``metrics.json`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emnist_jax import original_study as o
from emnist_jax.profiles import PROFILES
from emnist_jax.report.writers import table

#: the study's protocol (docs/original-study.md), as the full profile defines it
STUDY_PROTOCOL = PROFILES["full"]
#: RandomForest rows of the table: the study's smallest and largest k and two between
RF_ROWS = (o.RF_K[0], 20, 32, o.RF_K[-1])
MISSING = "not run"


def verdict(metrics: dict) -> str:
    d = metrics["dataset"]
    if d["synthetic"]:
        return "not comparable: synthetic data"
    if d["split"] != "byclass":
        return f"not comparable: split {d['split']}"
    if metrics["profile"] != STUDY_PROTOCOL.name:
        return f"partly: profile {metrics['profile']}"
    return "comparable (seeded; the study's runs were not)"


def _seconds_range(seconds) -> str:
    return f"{np.median(seconds):,.0f} s median ({min(seconds):,.0f}-{max(seconds):,.0f} s)"


def rows(metrics: dict) -> list[list[Any]]:
    """[quantity, original study, this run] for each headline number."""
    mi, rf, pca, cnn = (metrics.get(k, {}) for k in ("mutual_information", "rf_topk", "pca", "cnn"))
    sk = mi.get("sklearn", {})
    rf_at = dict(zip(rf.get("k", []), rf.get("accuracy", [])))
    best_study = int(np.argmax(o.RF_ACCURACY))
    found = [
        ["Max MI and its pixel (file order)", f"{o.MI_MAX:.4f} at {o.MI_ARGMAX}",
         f"{sk['max']:.4f} at {sk['argmax']} (sklearn {sk['estimator']})" if sk else
         (f"{mi['max']:.4f} at {mi['argmax']} (JAX)" if mi else MISSING)],
        ["Pixels with MI = 0", o.MI_ZERO_PIXELS, sk.get("n_zero", mi.get("n_zero", MISSING))],
        ["Top-5 MI pixels", ", ".join(map(str, o.MI_TOP5)),
         ", ".join(map(str, (sk or mi).get("top_pixels", [])[:5])) or MISSING],
    ]
    for k in RF_ROWS:
        found.append([f"RF accuracy, top-{k} MI pixels", f"{o.RF_ACCURACY[o.RF_K.index(k)]:.4f}",
                      f"{rf_at[k]:.4f}" if k in rf_at else MISSING])
    best = int(np.argmax(rf["accuracy"])) if rf else None
    study_sizes = STUDY_PROTOCOL.classic.pca_components
    found += [
        ["Best RF accuracy over k", f"{o.RF_ACCURACY[best_study]:.4f} (k = {o.RF_K[best_study]})",
         f"{rf['accuracy'][best]:.4f} (k = {rf['k'][best]})" if rf else MISSING],
        ["PCA + LR / PCA + RF accuracies", "not reported (plot only)",
         f"LR {pca['logreg'][-1]:.4f}, RF {pca['rf'][-1]:.4f} at n = {pca['n_components'][-1]}" if pca else MISSING],
        ["lbfgs non-convergence",
         f"{len(o.LBFGS_NOT_CONVERGED)} of {len(study_sizes)} (n = {', '.join(map(str, o.LBFGS_NOT_CONVERGED))})",
         f"{pca['logreg_converged'].count(False)} of {len(pca['logreg_converged'])}" if pca else MISSING],
        ["CNN parameters", f"{o.CNN_PARAMS:,}", f"{cnn['n_params']:,}" if cnn else MISSING],
        ["CNN train / hold-out sizes", f"{o.CNN_TRAIN:,} / {o.CNN_HOLDOUT:,}",
         (f"{cnn['n_train']:,} / {cnn['holdout_n']:,}" if cnn.get("holdout_n") is not None
          else f"{cnn['n_train']:,} / none (official protocol)") if cnn else MISSING],
    ]
    epochs = cnn.get("epochs", [])
    for i in (0, len(o.CNN_EPOCH_LOSS) - 1):
        found.append([f"CNN epoch-{i + 1} train loss / acc", f"{o.CNN_EPOCH_LOSS[i]:.4f} / {o.CNN_EPOCH_ACCURACY[i]:.4f}",
                      f"{epochs[i]['loss']:.4f} / {epochs[i]['accuracy']:.4f}" if len(epochs) > i else MISSING])
    found += [
        ["CNN hold-out loss", f"{o.CNN_HOLDOUT_LOSS:.4f}",
         f"{cnn['holdout_loss']:.4f}" if cnn.get("holdout_loss") is not None else MISSING],
        ["CNN hold-out accuracy", f"{o.CNN_HOLDOUT_ACCURACY:.4f}",
         f"{cnn['holdout_accuracy']:.4f}" if cnn.get("holdout_accuracy") is not None else MISSING],
        ["CNN official test accuracy", "never measured", f"{cnn['test_accuracy']:.4f}" if cnn else MISSING],
        ["CNN time per epoch", _seconds_range(o.CNN_EPOCH_SECONDS) + " (eager mode)",
         f"{_seconds_range([e['seconds'] for e in epochs])}, "
         f"{np.median([e['images_per_second'] for e in epochs]):,.0f} images/s" if epochs else MISSING],
        ["CNN total training time", f"{sum(o.CNN_EPOCH_SECONDS):,} s",
         f"{sum(e['seconds'] for e in epochs):,.0f} s" if epochs else MISSING],
        ["CNN evaluation time", f"{o.CNN_EVAL_SECONDS} s (hold-out, {o.CNN_HOLDOUT:,} images)",
         f"{cnn['eval_seconds']:.1f} s (official test, {cnn['test']['n']:,} images)" if cnn else MISSING],
    ]
    return found


def comparison(metrics: dict) -> dict:
    """{"verdict": ..., "table": ...} from a metrics.json's content."""
    return {"verdict": verdict(metrics),
            "table": table(["quantity", "original study", "this run"], rows(metrics),
                           caption="The original numbers are those printed in the study (real EMNIST ByClass, "
                                   "unseeded).")}
