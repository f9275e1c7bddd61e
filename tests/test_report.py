"""The report command as a whole (smoke profile on tiny data) and its resume.

The uninterrupted smoke report of the module fixture is the reference every resumed run must
equal, apart from timings, the command line and the list of resumed stages.
"""

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from emnist_jax import original_study as o
from emnist_jax import report
from emnist_jax.profiles import PROFILES
from emnist_jax.cnn import TrainConfig
from emnist_jax.report import comparison, schema, sections, stages, store
from emnist_jax.report.output import MARKER
from emnist_jax.report.runner import TIMING_KEYS

METRIC_KEYS = {
    "dataset": {"source", "split", "synthetic", "n_train", "n_test", "n_classes"},
    "environment": {"jax_backend", "devices", "versions", "cpu"},
    "class_counts": {"train", "test"},
    "mutual_information": {"top_pixels", "values", "bins", "sklearn"},
    "rf_topk": {"k", "accuracy", "n_train", "n_test", "n_estimators"},
    "pca": {"n_components", "logreg", "logreg_converged", "rf", "jax", "pca_solver"},
    "logreg_jax": {"test_accuracy", "study_gd"},
    "logreg_sklearn": {"test_accuracy"},
    "cnn": {"n_params", "test_accuracy", "epochs", "compile_seconds", "confusion", "holdout_n"},
}


def comparable(value):
    """metrics.json without what legitimately differs between runs: timings, command, resumed stages."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()
                if k not in TIMING_KEYS and k not in ("command", "resumed_stages")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def smoke_report(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "smoke"
    code = report.main(["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(out)])
    return code, out


SPIN = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass\n"
        "print(flush=True)\ntime.sleep(60)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="running workers are read from /proc")
@pytest.mark.parametrize("depth", ["child", "grandchild"])
def test_cpu_seconds_count_workers_that_still_run_and_those_that_ended(depth):
    from emnist_jax.report.usage import usage

    before = usage()[0]
    command = [sys.executable, "-c", SPIN]
    if depth == "grandchild":   # a shell that waits for the spinning python (": " keeps sh from exec-ing it)
        command = ["sh", "-c", f"{shlex.join(command)}; :"]
    worker = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    try:
        worker.stdout.readline()                      # it has spent 1 CPU second and sleeps
        running = usage()[0] - before
        assert running >= 1.0
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    if depth == "child":
        assert usage()[0] - before >= running         # reaped: counted by RUSAGE_CHILDREN instead


def test_whole_report_runs_and_writes_everything(smoke_report):
    code, out = smoke_report
    assert code == 0
    names = {"index.html", "report.md", "metrics.json", "timings.png", "samples.png", "class_distribution.png",
             "mi_heatmap.png", "rf_topk.png", "pca.png", "cnn_history.png", "confusion.png", "confused_pairs.png"}
    for name in names:
        assert (out / name).stat().st_size > 0, name
    marker = json.loads((out / MARKER).read_text())
    assert marker["state"] == "complete" and set(marker["files"]) == names
    assert sorted(p.name for p in out.parent.iterdir()) == ["smoke"]  # no temporary or state folder left
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # a normal folder, not mkdtemp's private one


def test_metrics_have_the_documented_keys(smoke_report):
    metrics = read_metrics(smoke_report[1])
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert schema.problems(metrics, stages=report.STAGES, train_config_fields=fields) == []   # key for key
    for key, keys in METRIC_KEYS.items():
        assert keys <= set(metrics[key]), key
    assert set(metrics["seconds"]) == set(report.STAGES)
    # CPU seconds per stage (the cnn stage alone trains for seconds, so it cannot read 0) and the peak
    assert set(metrics["cpu_seconds"]) == set(report.STAGES) and metrics["cpu_seconds"]["cnn"] > 0.1
    assert 100 * 2**20 < metrics["peak_memory_bytes"] < 64 * 2**30
    assert metrics["cnn"]["n_params"] == 362_942
    assert {"loss", "accuracy", "seconds", "images_per_second"} <= set(metrics["cnn"]["epochs"][0])
    assert metrics["dataset"]["synthetic"] is True and metrics["resumed_stages"] == []
    assert all(v == "ok" for v in metrics["stages"].values())
    # smoke trains the CNN on the first cnn_train_images rows (all 1,240 of the tiny set), 67/33
    assert metrics["cnn"]["n_train"] + metrics["cnn"]["holdout_n"] == 1240
    default = TrainConfig().resolved()   # smoke runs the CNN's default execution path
    assert [metrics["cnn"]["config"][k] for k in ("conv_impl", "steps_per_call", "loop")] == \
        [default.conv_impl, default.steps_per_call, default.loop]


def test_every_image_exists_and_every_table_has_a_caption(smoke_report):
    out = smoke_report[1]
    html = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 9 and all((out / name).exists() for name in images)
    tables = re.findall(r"<table>(.*?)</table>", html, flags=re.S)
    assert len(tables) >= 8
    assert all("<caption>" in t for t in tables[1:])  # every table but the stage-status one
    assert "Synthetic data" in html and "not comparable" in html
    assert "The most frequent mistakes" in html and "Training per epoch" in html
    markdown = (out / "report.md").read_text()
    assert all((out / name).exists() for name in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown))


def test_the_mi_text_names_the_configured_bins(smoke_report):
    bins = PROFILES["smoke"].classic.mi_bins
    assert f"JAX, {bins}-bin plug-in estimator" in (smoke_report[1] / "report.md").read_text()


def test_a_failing_stage_is_reported_and_exits_1(tiny_dataset, tmp_path, monkeypatch):
    def broken(inputs):
        raise RuntimeError("boom")

    monkeypatch.setitem(stages.STAGES, "pca", broken)
    out = tmp_path / "r"
    assert report.main(["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(out),
                        "--only", "rf,pca"]) == 1
    metrics = read_metrics(out)
    assert metrics["stages"]["pca"] == "failed: RuntimeError: boom"
    assert metrics["stages"]["rf"] == "ok" and metrics["stages"]["cnn"] == "skipped"
    assert "boom" in (out / "pca-error.txt").read_text()
    assert "failed: RuntimeError: boom" in (out / "index.html").read_text()


# ---- resume --------------------------------------------------------------------------------------

KILL_AT_STAGE = textwrap.dedent("""
    import os, signal, sys
    from emnist_jax.report import cli, stages

    def kill(inputs):
        os.kill(os.getpid(), signal.SIGKILL)

    stages.STAGES[sys.argv[1]] = kill
    sys.exit(cli.main(sys.argv[2:]))
""")


def test_killed_report_resumes_to_the_uninterrupted_metrics(smoke_report, tiny_dataset, tmp_path, monkeypatch,
                                                            capsys):
    """SIGKILL at the start of stage mi, then Ctrl-C in the middle of the CNN's epoch, then --resume."""
    out = tmp_path / "r"
    argv = ["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STAGE, "mi", *argv], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = tmp_path / ".r.state"
    assert not out.exists() and (state / "data.json").is_file() and not (state / "mi.json").exists()

    real_cnn = stages.cnn

    def interrupted_cnn(inputs):  # Ctrl-C after the CNN's first jitted call of epoch 1 (mid-epoch)
        def on_call(position):
            if position.epoch == 1 and position.step > 0:
                raise KeyboardInterrupt

        inputs.on_call = on_call
        return real_cnn(inputs)

    with monkeypatch.context() as patch:
        patch.setitem(stages.STAGES, "cnn", interrupted_cnn)
        for stage in sections.SECTIONS:  # figures of a run that is interrupted are thrown away: skip drawing
            patch.setitem(sections.SECTIONS, stage, lambda result, inputs, folder: {})
        assert report.main(argv + ["--resume"]) == 130
    err = capsys.readouterr().err
    assert "interrupted during stage cnn (CNN epoch 1, step" in err and "rerun with --resume" in err
    assert not out.exists() and {p.name for p in state.glob("*.json")} >= {"data.json", "mi.json", "logreg.json"}
    assert not list(tmp_path.glob(".r.tmp-*"))  # the killed run's temporary folder was cleaned up

    assert report.main(argv + ["--resume"]) == 0
    resumed = read_metrics(out)
    assert resumed["resumed_stages"] == ["data", "mi", "rf", "pca", "logreg"]
    assert comparable(resumed) == comparable(read_metrics(smoke_report[1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # the state folder went with the finished report


def test_a_changed_input_never_reuses_stored_results(tiny_dataset):
    profile = PROFILES["smoke"]
    key = store.run_key(store.fingerprint(tiny_dataset), profile)
    changed = tiny_dataset.train_images.copy()
    changed[0, 0, 0] ^= 1
    other_data = store.run_key(store.fingerprint(dataclasses.replace(tiny_dataset, train_images=changed)), profile)
    assert [d.split()[0] for d in store.differences(key, other_data)] == ["data"]
    assert [d.split()[0] for d in store.differences(key, store.run_key(key["data"], profile.with_seed(7)))] \
        == ["profile.classic.seed", "profile.cnn.seed"]
    assert store.differences(key, store.run_key(key["data"], PROFILES["smoke"])) == []


# ---- sections and comparison on fixture data -----------------------------------------------------

def pca_result(converged):
    n = [2, 10, 29][:len(converged)]
    return store.StageResult({"pca": {"n_components": n, "logreg": [0.5] * len(n), "logreg_converged": converged,
                                      "rf": [0.4] * len(n), "jax": [0.45] * len(n), "logreg_max_iter": 200,
                                      "n_train": 868, "n_test": 372, "pca_solver": "covariance_eigh"}})


@pytest.mark.parametrize("converged, phrase", [
    ([True, True], "every fit converged"),
    ([True, False, False], "it did not converge at n = 10, 29"),
])
def test_pca_text_on_convergence(converged, phrase, tiny_dataset, tmp_path):
    section = sections.pca(pca_result(converged), stages.Inputs(tiny_dataset, PROFILES["smoke"]), tmp_path)
    assert phrase in section["text"][0] and "n = none" not in section["text"][0]


def fixture_metrics(**changes) -> dict:
    """A real-EMNIST-like metrics.json of the full profile (numbers invented, shapes real)."""
    metrics = {
        "profile": "full", "dataset": {"synthetic": False, "split": "byclass"},
        "mutual_information": {"max": 0.35, "argmax": 184, "n_zero": 70, "top_pixels": [184, 183, 185, 186, 211],
                               "sklearn": {"max": 0.3571, "argmax": 185, "n_zero": 64, "estimator": "default",
                                           "top_pixels": [185, 184, 183, 186, 182]}},
        "rf_topk": {"k": list(range(2, 65)), "accuracy": [0.1 + 0.01 * i for i in range(63)]},
        "pca": {"n_components": list(range(1, 30)), "logreg": [0.6] * 29, "rf": [0.7] * 29,
                "logreg_converged": [True] * 25 + [False] * 4},
        "cnn": {"n_params": 362_942, "n_train": 467_614, "holdout_n": 230_318, "holdout_loss": 0.41,
                "holdout_accuracy": 0.86, "test_accuracy": 0.87, "eval_seconds": 12.5, "test": {"n": 116_323},
                "epochs": [{"loss": 0.7 - 0.04 * i, "accuracy": 0.78 + 0.01 * i, "seconds": 100.0 + i,
                            "images_per_second": 4000.0} for i in range(10)]},
    }
    metrics.update(changes)
    return metrics


def test_comparison_takes_every_original_number_from_original_study():
    rows = {r[0]: r[1:] for r in comparison.comparison(fixture_metrics())["table"]["rows"]}
    best = int(np.argmax(o.RF_ACCURACY))
    assert rows["Best RF accuracy over k"] == [f"{o.RF_ACCURACY[best]:.4f} (k = {o.RF_K[best]})", "0.7200 (k = 64)"]
    assert rows["RF accuracy, top-2 MI pixels"] == [f"{o.RF_CORRECT[0] / 15_000:.4f}", "0.1000"]
    assert rows["lbfgs non-convergence"] == [f"6 of 29 (n = {', '.join(map(str, o.LBFGS_NOT_CONVERGED))})", "4 of 29"]
    assert rows["CNN train / hold-out sizes"] == ["467,614 / 230,318", "467,614 / 230,318"]
    assert rows["CNN epoch-10 train loss / acc"][1] == "0.3400 / 0.8700"
    assert rows["CNN evaluation time"] == [f"{o.CNN_EVAL_SECONDS} s (hold-out, {o.CNN_HOLDOUT:,} images)",
                                           "12.5 s (official test, 116,323 images)"]
    ordered = sorted(o.CNN_EPOCH_SECONDS)
    assert rows["CNN time per epoch"][0].startswith(f"{np.median(ordered):,.0f} s median ({ordered[0]:,}-")
    assert rows["Max MI and its pixel (file order)"][1] == "0.3571 at 185 (sklearn default)"
    assert comparison.verdict(fixture_metrics()) == "comparable (seeded; the study's runs were not)"


@pytest.mark.parametrize("changes, verdict", [
    ({"profile": "quick"}, "partly: profile quick"),
    ({"dataset": {"synthetic": True, "split": "byclass"}}, "not comparable: synthetic data"),
    ({"dataset": {"synthetic": False, "split": "digits"}}, "not comparable: split digits"),
])
def test_comparison_verdict(changes, verdict):
    assert comparison.verdict(fixture_metrics(**changes)) == verdict


def test_comparison_of_a_partial_run_says_not_run():
    metrics = fixture_metrics()
    del metrics["cnn"], metrics["rf_topk"]
    rows = {r[0]: r[2] for r in comparison.comparison(metrics)["table"]["rows"]}
    assert rows["CNN parameters"] == rows["Best RF accuracy over k"] == comparison.MISSING


def test_no_original_figure_is_typed_into_the_report_code():
    """The study's numbers live in original_study.py; the report's text must not restate them."""
    code = "".join(p.read_text() for p in Path(comparison.__file__).parent.glob("*.py"))
    for literal in ("836", "861", "230,318", "230_318", "k = 63", "467,614", "0.3573", "16 bins", "min(29"):
        assert literal not in code, literal
