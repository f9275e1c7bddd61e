"""The pca stage's parts, each alone, and its wall time on more cores predicted from them.

    python benchmarks/pca_schedule.py [--profile full] [--forest-trees 10] [--cores 16] [--scale 1]
        [--out pca-schedule.json]

On the profile's inputs (the first ``n_rows`` rows of the embedded default, PCA fitted once at the
largest n, as :func:`emnist_jax.classic.pca_sweep.pca_sweep`), measures:

1. the 29 JAX fits one after another, unpadded and padded to shared shapes, with the compilations
   JAX reports (count and seconds);
2. each size's sklearn ``LogisticRegression`` on one core (seconds, lbfgs iterations);
3. each size's forest on one core (``--forest-trees`` trees, times scaled to ``rf_trees``).

Then simulates the stage on ``--cores`` cores, task times as measured and times ``--scale`` (a
core's slowdown there), under the schedule before 2026-12-02 (JAX fits first, then the forests; 4 regression
workers; smallest n first) and the current one (:func:`pca_sweep`): threads share the cores
equally, each pool takes its next task as a lane frees.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np


def _inputs(profile: str):
    from emnist_jax.classic.pca import PCA_SOLVER, nested_scores
    from emnist_jax.classic.protocol import study_split
    from emnist_jax.data import file_rows, load
    from emnist_jax.profiles import PROFILES

    cfg = PROFILES[profile].classic
    data = load("default")
    n = min(cfg.n_rows, len(data.train_labels))
    X_train, X_test, y_train, y_test = study_split(file_rows(data.train_images[:n]).astype(np.float32),
                                                   data.train_labels[:n], cfg.test_size, cfg.seed)
    return nested_scores(X_train, X_test, cfg.pca_components, PCA_SOLVER, cfg.seed), y_train, y_test, cfg


def jax_fits(scores: dict, y_train, y_test, bucket: bool) -> dict:
    """Seconds, compilations and accuracies of the JAX fits, one size after another."""
    import jax

    from emnist_jax.classic.pca_sweep import _jax_accuracy

    compiles: list[float] = []

    def listen(event: str, duration: float, **_) -> None:
        if event.endswith("backend_compile_duration"):
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    start = time.perf_counter()
    accuracy = [_jax_accuracy(*scores[n], y_train, y_test, bucket_shapes=bucket) for n in scores]
    return {"seconds": time.perf_counter() - start, "compilations": len(compiles),
            "compile_seconds": sum(compiles), "accuracy": accuracy}


def regressions(scores: dict, y_train, max_iter: int) -> dict:
    """n -> (seconds, lbfgs iterations) of the study's LogisticRegression on one core."""
    from sklearn.linear_model import LogisticRegression

    from emnist_jax.classic.pca import one_blas_thread

    times = {}
    for n, (train, _) in scores.items():
        start = time.perf_counter()
        with one_blas_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=max_iter).fit(train, y_train)
        times[n] = (time.perf_counter() - start, int(model.n_iter_.max()))
    return times


def forests(scores: dict, y_train, y_test, trees: int, rf_trees: int, seed: int) -> dict:
    """n -> seconds of one forest of ``rf_trees`` trees on one core, from ``trees`` of them."""
    from emnist_jax.classic.forests import forest_accuracy

    times = {}
    for n, (train, test) in scores.items():
        start = time.perf_counter()
        forest_accuracy(train, y_train, test, y_test, trees, seed, n_jobs=1, chunk=min(10, trees))
        times[n] = (time.perf_counter() - start) * rf_trees / trees
    return times


def simulate(cores: int, pools: list[tuple[int, list[float], float]], dt: float = 0.01) -> float:
    """Seconds until every task is done; pools: (lanes, task seconds in start order, start time)."""
    queues = [list(tasks) for _, tasks, _ in pools]
    running: list[list[float]] = [[] for _ in pools]
    t = 0.0
    while True:
        for (lanes, _, start), queue, lane in zip(pools, queues, running):
            while t >= start and queue and len(lane) < lanes:
                lane.append(queue.pop(0))
        busy = sum(map(len, running))
        if busy == 0:
            return t
        step = min(1.0, cores / busy) * dt
        running = [[r - step for r in lane if r > step] for lane in running]
        t += dt


def schedules(lr: dict, rf: dict, jax_seconds: float, cores: int, scale: float) -> dict:
    """Predicted wall seconds of the old and the current schedule on ``cores`` cores."""
    from emnist_jax.classic.pca_sweep import _regression_workers, largest_first

    up, down = sorted(lr), largest_first(lr)
    lr_s = {n: scale * lr[n][0] for n in lr}
    rf_s = {n: scale * rf[n] for n in rf}
    workers = _regression_workers(None, cores, 35_000, len(lr))
    # The JAX fits: one thread, before the forests (old) or beside them (now).
    old = simulate(cores, [(min(4, cores // 2), [lr_s[n] for n in up], 0.0), (cores, [rf_s[n] for n in up],
                   jax_seconds), (1, [jax_seconds], 0.0)])
    new = simulate(cores, [(workers, [lr_s[n] for n in down], 0.0), (cores, [rf_s[n] for n in down], 0.0),
                           (1, [jax_seconds], 0.0)])
    bound = (sum(lr_s.values()) + sum(rf_s.values())) / cores
    return {"cores": cores, "scale": scale, "jax_seconds": jax_seconds, "old": old, "new": new,
            "new_workers": workers, "bound": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="full")
    parser.add_argument("--forest-trees", type=int, default=10)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", default="pca-schedule.json")
    args = parser.parse_args()
    scores, y_train, y_test, cfg = _inputs(args.profile)
    parts = {"plain": jax_fits(scores, y_train, y_test, bucket=False),
             "padded": jax_fits(scores, y_train, y_test, bucket=True)}
    lr = regressions(scores, y_train, cfg.logreg_max_iter)
    rf = forests(scores, y_train, y_test, args.forest_trees, cfg.rf_trees, cfg.seed)
    for name, part in parts.items():
        print(f"JAX fits, {name}: {part['seconds']:.1f} s, {part['compilations']} compilations "
              f"({part['compile_seconds']:.1f} s)")
    print("the same accuracies padded:", parts["plain"]["accuracy"] == parts["padded"]["accuracy"])
    print(f"regressions: {min(s for s, _ in lr.values()):.1f}-{max(s for s, _ in lr.values()):.1f} s, "
          f"sum {sum(s for s, _ in lr.values()):.1f} s, lbfgs iterations up to {max(i for _, i in lr.values())}")
    print(f"forests: {min(rf.values()):.1f}-{max(rf.values()):.1f} s, sum {sum(rf.values()):.1f} s")
    predicted = [schedules(lr, rf, j, args.cores, scale) for scale in sorted({1.0, args.scale})
                 for j in (0.0, 30.0, 60.0)]
    for p in predicted:
        print(f"{p['cores']} cores x{p['scale']:g}, JAX fits {p['jax_seconds']:.0f} s: old {p['old']:.1f} s, "
              f"now {p['new']:.1f} s ({p['new_workers']} workers), bound {p['bound']:.1f} s")
    with open(args.out, "w") as f:
        json.dump({"jax": parts, "regressions": lr, "forests": rf, "predicted": predicted}, f, indent=1)


if __name__ == "__main__":
    main()
