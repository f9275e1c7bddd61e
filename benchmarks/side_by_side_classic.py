"""Side-by-side timings of the classic studies, all in one process.

    python benchmarks/side_by_side_classic.py [--data SRC] [--rows 50000] [--skip-sklearn-knn]

Compares, on the first ``--rows`` training images of ``--data`` (default: the embedded set):
1. our JAX mutual information vs sklearn ``mutual_info_classif`` (default k-NN estimator, as
   the study, and ``discrete_features=True``), with Spearman correlation and top-64 overlap;
2. the study's gradient-ascent logistic regression: JAX (``ovr_fit_gd``) vs the numpy
   reference, time per iteration on 29 PCA components of a 70 % split (the study's setting);
3. our Newton one-vs-rest solver vs sklearn ``LogisticRegression`` (multinomial, its default)
   and sklearn's one-vs-rest of the same objective, time and test accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from emnist_jax.classic import logreg, study_reference  # noqa: E402
from emnist_jax.classic.knn_mi import sklearn_mutual_information  # noqa: E402
from emnist_jax.classic.mutual_info import mutual_information, rank_pixels  # noqa: E402
from emnist_jax.classic.pca import standardized_pca  # noqa: E402
from emnist_jax.classic.protocol import study_split  # noqa: E402
from emnist_jax.classic.studies import LOGREG_PCA_COMPONENTS  # noqa: E402
from emnist_jax.data import file_rows, load  # noqa: E402


def best_of(function, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="default")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--skip-sklearn-knn", action="store_true", help="skip the ~3 minute k-NN MI")
    args = parser.parse_args()
    ds = load(args.data)
    X, y = file_rows(ds.train_images[:args.rows]), ds.train_labels[:args.rows]
    print(f"data: {ds.source} ({'synthetic' if ds.synthetic else 'EMNIST'}), {X.shape[0]} x {X.shape[1]}; "
          f"jax {jax.__version__} on {jax.default_backend()} {jax.devices()}; {os.cpu_count()} CPUs")

    print("\n1. mutual information")
    mutual_information(X[:1000], y[:1000], ds.n_classes).block_until_ready()  # compile outside the timing
    ours, t_ours = best_of(lambda: np.asarray(mutual_information(X, y, ds.n_classes)))
    print(f"   JAX (16 bins)                       {t_ours:8.2f} s")
    rows = [("sklearn discrete_features=True", True)] + ([] if args.skip_sklearn_knn else
                                                         [("sklearn default (k-NN, the study)", False)])
    for name, discrete in rows:
        start = time.perf_counter()
        theirs = sklearn_mutual_information(X, y, discrete=discrete, seed=0)
        seconds = time.perf_counter() - start
        overlap = len(set(rank_pixels(ours)[:64]) & set(rank_pixels(theirs)[:64]))
        print(f"   {name:35s} {seconds:8.2f} s  -> JAX is {seconds / t_ours:6.1f}x faster; "
              f"Spearman {spearmanr(ours, theirs).statistic:.3f}, top-64 overlap {overlap}/64")

    print("\n2. the study's gradient-ascent OvR logistic regression, time per iteration (all classes)")
    X_train, X_test, y_train, y_test = study_split(X, y, 0.3, 0)
    train_s, test_s = standardized_pca(X_train, X_test, LOGREG_PCA_COMPONENTS, seed=0)
    n_classes = ds.n_classes
    pixels = (X_train / 255.0).astype(np.float32)
    for name, features in (("29 PCA components (the study's PCA loop)", train_s), ("784 raw pixels / 255", pixels)):
        iters_jax, iters_np = 200, 3
        logreg.ovr_fit_gd(features, y_train, n_classes, n_iter=iters_jax).coef.block_until_ready()
        _, t_jax = best_of(lambda: logreg.ovr_fit_gd(features, y_train, n_classes,
                                                     n_iter=iters_jax).coef.block_until_ready())
        print(f"   {name}, {features.shape[0]} rows: JAX float32 {t_jax / iters_jax * 1e3:8.2f} ms")
        for dtype in (np.float64, np.float32):
            f = features.astype(dtype)
            _, t_np = best_of(lambda: study_reference.fit(f, y_train, max_iter=iters_np), repeat=1)
            print(f"      numpy reference {np.dtype(dtype).name:7s} {t_np / iters_np * 1e3:8.2f} ms"
                  f"  -> JAX is {(t_np / iters_np) / (t_jax / iters_jax):6.1f}x faster")

    print("\n3. penalised logistic regression to equal accuracy (same standardised 29 PCA components)")
    def newton():
        params = logreg.ovr_fit(train_s, y_train, n_classes)
        params.coef.block_until_ready()
        return params

    newton()  # compile outside the timing
    params, t_newton = best_of(newton)
    acc_newton = (np.asarray(logreg.ovr_predict(params, test_s)) == y_test).mean()
    model, t_sk = best_of(lambda: LogisticRegression().fit(train_s, y_train), repeat=1)
    ovr, t_sk_ovr = best_of(lambda: OneVsRestClassifier(LogisticRegression()).fit(train_s, y_train), repeat=1)
    print(f"   JAX Newton OvR        {t_newton:7.2f} s  accuracy {acc_newton:.4f}  "
          f"(max Newton iterations {int(np.asarray(params.n_iter).max())})")
    print(f"   sklearn OvR (lbfgs)   {t_sk_ovr:7.2f} s  accuracy {ovr.score(test_s, y_test):.4f}  "
          f"-> JAX is {t_sk_ovr / t_newton:.1f}x faster on the same objective")
    print(f"   sklearn multinomial   {t_sk:7.2f} s  accuracy {model.score(test_s, y_test):.4f}  "
          f"-> JAX is {t_sk / t_newton:.1f}x faster")


if __name__ == "__main__":
    main()
