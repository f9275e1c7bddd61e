"""The keys of ``metrics.json``: one table in code, from which docs/metrics.md is made
(``python -m emnist_jax.report.schema > docs/metrics.md``) and against which every written
``metrics.json`` is checked key for key (tests/test_metrics_schema.py, tests/test_report.py).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

INTRO = """# `metrics.json`

Every report folder holds `metrics.json`, the run's numbers for programs to read
(`emnist_jax/report/runner.py` builds it, `emnist_jax/report/writers.py` writes it;
`reports/sample-default-byclass-quick/metrics.json` is an example). This page lists every key the
writer writes, `schema_version` 1.

Conventions:

- **Key path**: `a.b` is key `b` inside object `a`; `a[]` is each element of list `a`; `<stage>` is
  each of `data`, `mi`, `rf`, `pca`, `logreg`, `cnn`.
- **Pixel indices** are in the files' (transposed) order, as in the original study: raw pixel `p` is
  upright row `p % 28`, column `p // 28`.
- **Accuracies** are fractions in [0, 1]; **seconds** are wall-clock seconds.
- **Presence**: the top-level keys from `schema_version` to `environment` are always written. The
  keys of a stage (`class_counts` for `data`, `mutual_information` for `mi`, `rf_topk` for `rf`,
  `pca` for `pca`, `logreg_jax` and `logreg_sklearn` for `logreg`, `cnn` for `cnn`) are written only
  when the stage produced a result (ran or was resumed); a stage skipped by `--only`, or one that
  failed, has none.
- **Timings** (`seconds`, `total_seconds`, `cpu_seconds`, `peak_memory_bytes`, `jax_seconds`,
  `eval_seconds`, `compile_seconds`, `images_per_second` wherever they occur; `runner.TIMING_KEYS`)
  are the only values that differ between an uninterrupted run and a resumed one.
"""

#: (section title, [(key path, type, meaning), ...]); a path's ``a[]`` is each element of list ``a``,
#: ``<stage>`` each stage name
SECTIONS: list[tuple[str, list[tuple[str, str, str]]]] = [
    ('The run', [
        ('schema_version', 'int', '1'),
        ('command', 'string', 'the command that reproduces the report (`--resume` left out)'),
        ('profile', 'string', '`full`, `quick` or `smoke`'),
        ('seed', 'int', "the seed of every split, forest and network (the profile's, or `--seed`)"),
        ('stages', 'object', 'stage -> `"ok"`, `"skipped"` or `"failed: <exception type>: <message>"`, for every `<stage>`'),
        ('seconds', 'object', 'stage -> float: wall seconds of each stage that ran (its figures included); a skipped stage has no entry'),
        ('total_seconds', 'float', 'wall seconds from the start of the run to the writing of `metrics.json`'),
        ('cpu_seconds', 'object', "stage -> float or null: CPU seconds of the report's process and its worker processes during the stage, figures included (over `seconds`: the cores it kept busy); null for a stage resumed from a store that did not record it"),
        ('peak_memory_bytes', 'int', "the report process's peak resident memory over the whole run (worker processes not included; 0 where the platform cannot say)"),
        ('resumed_stages', 'list of strings', 'the stages whose results `--resume` reused from an earlier run'),
    ]),
    ('The data', [
        ('dataset', 'object', 'the loaded data'),
        ('dataset.source', 'string', 'what `--data` named (`"default"` for the embedded set)'),
        ('dataset.split', 'string', '`byclass`, `bymerge`, `balanced`, `letters`, `digits` or `mnist`'),
        ('dataset.synthetic', 'bool', "true for the embedded synthetic default: its numbers are not comparable with EMNIST's"),
        ('dataset.n_train', 'int', 'images in the training file'),
        ('dataset.n_test', 'int', 'images in the test file'),
        ('dataset.n_classes', 'int', 'number of classes'),
        ('dataset.classes', 'list of strings', "each class's characters, in class-index order"),
        ('environment', 'object', 'where the report ran'),
        ('environment.jax_backend', 'string', "JAX's default backend: `cpu`, `gpu` or `tpu`"),
        ('environment.devices', 'list of strings', "JAX's devices"),
        ('environment.versions', 'object', 'library -> version string, or null where it is not installed: `jax`, `jaxlib`, `flax`, `optax`, `numpy`, `scipy`, `scikit-learn`, `matplotlib`, `orbax-checkpoint`'),
        ('environment.cpu', 'string', "the processor's model name"),
        ('environment.cpu_count', 'int', 'logical CPUs'),
        ('environment.python', 'string', "Python's version"),
        ('environment.platform', 'string', 'the operating system, as `platform.platform()` gives it'),
        ('class_counts', 'object', 'images per class (stage `data`)'),
        ('class_counts.train', 'list of ints', 'training images per class, in class-index order'),
        ('class_counts.test', 'list of ints', 'test images per class, in class-index order'),
    ]),
    ('Mutual information (stage `mi`)', [
        ('mutual_information', 'object', 'mutual information of every pixel with the label'),
        ('mutual_information.n_rows', 'int', 'training rows used (the first `n_rows` of the file)'),
        ('mutual_information.pixel_order', 'string', 'how pixel indices read: `"file (transposed); upright row = p % 28, column = p // 28"`'),
        ('mutual_information.bins', 'int', 'intensity bins of the JAX plug-in estimator'),
        ('mutual_information.jax_seconds', 'float', 'seconds of the JAX estimate, compilation included'),
        ('mutual_information.top_pixels', 'list of ints', 'the 64 pixels of highest JAX MI, highest first'),
        ('mutual_information.max', 'float', 'the highest JAX MI (nats)'),
        ('mutual_information.argmax', 'int', 'the pixel holding it'),
        ('mutual_information.n_zero', 'int', 'pixels whose JAX MI is <= 0'),
        ('mutual_information.top_pixels_upright', 'list of [int, int]', '`top_pixels` as upright [row, column]'),
        ('mutual_information.values', 'list of floats', 'the JAX MI of each of the 784 pixels, in file order'),
        ('mutual_information.sklearn', 'object', "scikit-learn's `mutual_info_classif` on the same rows (absent where the profile asks for none)"),
        ('mutual_information.sklearn.estimator', 'string', '`"default (k-NN, 3 neighbours)"` (the study\'s call) or `"discrete"`'),
        ('mutual_information.sklearn.seconds', 'float', "seconds of scikit-learn's estimate"),
        ('mutual_information.sklearn.top_pixels', 'list of ints', 'its 64 pixels of highest MI, highest first'),
        ('mutual_information.sklearn.max', 'float', 'its highest MI'),
        ('mutual_information.sklearn.argmax', 'int', 'the pixel holding it'),
        ('mutual_information.sklearn.n_zero', 'int', 'pixels whose MI is <= 0'),
        ('mutual_information.sklearn.spearman', 'float', 'Spearman rank correlation of its 784 values with the JAX values'),
        ('mutual_information.sklearn.top64_overlap', 'int', 'pixels both top-64 lists share'),
    ]),
    ('RandomForest on the top-k pixels (stage `rf`)', [
        ('rf_topk', 'object', 'RandomForest accuracy against the number k of top-ranked pixels'),
        ('rf_topk.k', 'list of ints', 'the values of k'),
        ('rf_topk.accuracy', 'list of floats', 'test accuracy for each k'),
        ('rf_topk.n_train', 'int', "rows of the split's training part"),
        ('rf_topk.n_test', 'int', 'rows of its test part'),
        ('rf_topk.n_estimators', 'int', 'trees per forest'),
        ('rf_topk.ranking', 'string', 'how the pixels were ranked: `"JAX MI on the training part of the split"`'),
    ]),
    ('PCA sweep (stage `pca`)', [
        ('pca', 'object', 'three classifiers on the leading principal components'),
        ('pca.n_components', 'list of ints', 'the component counts'),
        ('pca.logreg', 'list of floats', "test accuracy of scikit-learn's `LogisticRegression` on the raw PCA scores (the study's model), per count"),
        ('pca.logreg_converged', 'list of bools', 'false where lbfgs stopped at `logreg_max_iter`'),
        ('pca.rf', 'list of floats', 'test accuracy of a RandomForest on the PCA scores, per count'),
        ('pca.jax', 'list of floats', 'test accuracy of `emnist_jax.logreg.ovr_fit` on standardised PCA scores, per count'),
        ('pca.logreg_max_iter', 'int', "`LogisticRegression`'s `max_iter`"),
        ('pca.n_train', 'int', "rows of the split's training part"),
        ('pca.n_test', 'int', 'rows of its test part'),
        ('pca.pca_solver', 'string', "scikit-learn's PCA `svd_solver` (`covariance_eigh`: one fit, each count takes the leading components)"),
    ]),
    ('Logistic regression (stage `logreg`)', [
        ('logreg_jax', 'object', 'one-vs-rest logistic regression in JAX'),
        ('logreg_jax.features', 'string', 'what it was fitted on, e.g. `"29 standardised PCA components"`'),
        ('logreg_jax.solver', 'string', '`"newton"`'),
        ('logreg_jax.test_accuracy', 'float', 'test accuracy of the Newton fit'),
        ('logreg_jax.seconds', 'float', 'seconds of the Newton fit, compilation included'),
        ('logreg_jax.study_gd', 'object', "the study's gradient ascent (`ovr_fit_gd`) on the same features"),
        ('logreg_jax.study_gd.test_accuracy', 'float', 'its test accuracy'),
        ('logreg_jax.study_gd.iterations', 'int', 'its iterations'),
        ('logreg_jax.study_gd.alpha', 'float', 'its step size'),
        ('logreg_jax.study_gd.seconds', 'float', 'its seconds, compilation included'),
        ('logreg_sklearn', 'object', 'scikit-learn on the same features'),
        ('logreg_sklearn.test_accuracy', 'float', 'its test accuracy'),
        ('logreg_sklearn.seconds', 'float', 'its seconds'),
        ('logreg_sklearn.model', 'string', '`"LogisticRegression (multinomial lbfgs)"`'),
    ]),
    ('The CNN (stage `cnn`)', [
        ('cnn', 'object', "the study's network, trained and evaluated"),
        ('cnn.n_params', 'int', 'trainable parameters (362,942 for 62 classes)'),
        ('cnn.n_train', 'int', "images trained on (the training file's rows less the hold-out, under the study protocol)"),
        ('cnn.n_train_file_rows', 'int', 'rows of the training file given to the CNN (the profile may take only the first ones)'),
        ('cnn.holdout_n', 'int or null', 'hold-out images (study protocol); null under the official protocol'),
        ('cnn.backend', 'string', 'the JAX backend it ran on'),
        ('cnn.devices', 'int', 'devices it ran on, over all processes'),
        ('cnn.config', 'object', 'the `TrainConfig` that ran, per-backend choices resolved: one key per `TrainConfig` field (`epochs`, `batch_size`, `learning_rate`, `b1`, `b2`, `eps`, `protocol`, `holdout_fraction`, `seed`, `eval_batch_size`, `conv_impl`, `steps_per_call`, `grad_chunk`, `loop`, `log_every`, `precision`)'),
        ('cnn.compile_seconds', 'float', "seconds to trace and compile the training program, before epoch 1 (outside every epoch's time)"),
        ('cnn.test_accuracy', 'float', 'accuracy on the test file'),
        ('cnn.test_loss', 'float', 'mean cross-entropy on the test file'),
        ('cnn.holdout_accuracy', 'float or null', 'accuracy on the hold-out; null under the official protocol'),
        ('cnn.holdout_loss', 'float or null', 'mean cross-entropy on the hold-out; null under the official protocol'),
        ('cnn.eval_seconds', 'float', "seconds of the test file's evaluation"),
        ('cnn.epochs', 'list of objects', "one per epoch, in order (its position is the epoch's number less one)"),
        ('cnn.epochs[].loss', 'float', 'mean training loss over the epoch'),
        ('cnn.epochs[].accuracy', 'float', 'training accuracy over the epoch'),
        ('cnn.epochs[].seconds', 'float', "the epoch's training seconds (compilation not included)"),
        ('cnn.epochs[].images_per_second', 'float', 'training images per second in the epoch'),
        ('cnn.test', 'object', "the test file's evaluation in detail"),
        ('cnn.test.n', 'int', 'images evaluated'),
        ('cnn.test.loss', 'float', 'mean cross-entropy'),
        ('cnn.test.accuracy', 'float', 'accuracy'),
        ('cnn.test.seconds', 'float', 'seconds of the evaluation'),
        ('cnn.test.per_class_accuracy', 'list of floats or nulls', 'accuracy per class, in class-index order; null for a class with no test image'),
        ('cnn.test.confused_pairs', 'list of objects', 'up to 12 most frequent confusions (true class != predicted), most frequent first'),
        ('cnn.test.confused_pairs[].true', 'string', "the true class's characters"),
        ('cnn.test.confused_pairs[].predicted', 'string', "the predicted class's characters"),
        ('cnn.test.confused_pairs[].count', 'int', 'test images so confused'),
        ('cnn.confusion', 'list of lists of ints', "the test file's confusion matrix, n_classes x n_classes: row = true class, column = predicted class"),
    ]),
]

#: The libraries whose versions ``environment.versions`` records.
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "matplotlib", "orbax-checkpoint")
#: Objects whose keys are data, not fixed names: the key path stops there, and their keys are
#: checked against what they name (the stages, TrainConfig's fields, the libraries).
MAPPINGS = ("stages", "seconds", "cpu_seconds", "environment.versions", "cnn.config")
#: The top-level keys each stage writes when it produced a result.
STAGE_KEYS = {"data": ("class_counts",), "mi": ("mutual_information",), "rf": ("rf_topk",), "pca": ("pca",),
              "logreg": ("logreg_jax", "logreg_sklearn"), "cnn": ("cnn",)}
#: Subtrees a stage may leave out (the profile asks for no scikit-learn MI).
OPTIONAL = ("mutual_information.sklearn",)


def documented() -> dict[str, tuple[str, str]]:
    """key path -> (type, meaning), in the order of the page."""
    return {path: (kind, meaning) for _, rows in SECTIONS for path, kind, meaning in rows}


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a ``metrics.json`` value (``a.b``, ``a[]``), stopping at :data:`MAPPINGS`."""
    paths = set()
    if isinstance(value, dict):
        for name, item in value.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            paths.add(path)
            if path not in MAPPINGS:
                paths |= key_paths(item, path)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for item in value:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


def _under(path: str, roots) -> bool:
    return any(path == root or path.startswith((f"{root}.", f"{root}[]")) for root in roots)


def expected_paths(stages_with_results, optional_present=()) -> set[str]:
    """The key paths a ``metrics.json`` must hold when ``stages_with_results`` produced results and
    the optional subtrees in ``optional_present`` were written."""
    absent = [key for stage, keys in STAGE_KEYS.items() if stage not in stages_with_results for key in keys]
    absent += [root for root in OPTIONAL if root not in optional_present]
    return {path for path in documented() if not _under(path, absent)}


def problems(metrics: dict, stages=None, train_config_fields=None, libraries=LIBRARIES) -> list[str]:
    """Where ``metrics`` and the schema differ, in both directions (empty when they agree).
    ``stages``: every stage name; ``train_config_fields``: TrainConfig's fields (each checked where
    given)."""
    produced = [s for s, keys in STAGE_KEYS.items() if any(k in metrics for k in keys)]
    optional = [root for root in OPTIONAL if root in key_paths(metrics)]
    written, expected = key_paths(metrics), expected_paths(produced, optional)
    found = [f"written but not in the schema: {p}" for p in sorted(written - set(documented()))]
    found += [f"in the schema but not written: {p}" for p in sorted(expected - written)]
    mappings = {"stages": stages, "seconds": stages, "cpu_seconds": stages}
    for name, allowed in mappings.items():
        if allowed is not None and name in metrics and not set(metrics[name]) <= set(allowed):
            found.append(f"{name} names unknown stages: {sorted(set(metrics[name]) - set(allowed))}")
    if stages is not None and "stages" in metrics and set(metrics["stages"]) != set(stages):
        found.append(f"stages does not name every stage: {sorted(metrics['stages'])}")
    if train_config_fields is not None and "cnn" in metrics and set(metrics["cnn"]["config"]) != set(train_config_fields):
        found.append(f"cnn.config keys {sorted(metrics['cnn']['config'])} are not TrainConfig's fields")
    if libraries is not None and set(metrics.get("environment", {}).get("versions", {})) != set(libraries):
        found.append(f"environment.versions names {sorted(metrics['environment']['versions'])}")
    return found


def render() -> str:
    """docs/metrics.md."""
    lines = [INTRO]
    for title, rows in SECTIONS:
        lines += [f"## {title}", "", "| key path | type | meaning |", "|---|---|---|"]
        lines += [f"| `{path}` | {kind} | {meaning} |" for path, kind, meaning in rows]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
