import json
import re
import subprocess
import sys

import pytest

from emnist_jax import report

METRIC_KEYS = {
    ("dataset",): {"source", "split", "synthetic", "n_train", "n_test", "n_classes"},
    ("environment",): {"jax_backend", "devices", "versions", "cpu"},
    ("mutual_information",): {"top_pixels"},
    ("rf_topk",): {"k", "accuracy"},
    ("pca",): {"n_components", "logreg", "rf", "jax"},
    ("logreg_jax",): {"test_accuracy"},
    ("logreg_sklearn",): {"test_accuracy"},
    ("cnn",): {"n_params", "test_accuracy", "epochs"},
}


@pytest.fixture(scope="module")
def smoke_report(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "smoke"
    code = report.main(["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(out)])
    return code, out


def test_whole_report_runs_and_writes_everything(smoke_report):
    code, out = smoke_report
    assert code == 0
    for name in ("index.html", "report.md", "metrics.json", "timings.png", "samples.png", "mi_heatmap.png",
                 "rf_topk.png", "pca.png", "cnn_history.png", "confusion.png", "confused_pairs.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.parent.glob(".*tmp*"))  # the temporary folder was renamed, not left behind


def test_metrics_have_the_documented_keys(smoke_report):
    metrics = json.loads((smoke_report[1] / "metrics.json").read_text())
    for path, keys in METRIC_KEYS.items():
        assert keys <= set(metrics[path[0]]), path
    assert set(metrics["seconds"]) == set(report.STAGES)
    assert metrics["cnn"]["n_params"] == 362_942
    assert {"loss", "accuracy", "seconds", "images_per_second"} <= set(metrics["cnn"]["epochs"][0])
    assert metrics["dataset"]["synthetic"] is True
    assert all(v == "ok" for v in metrics["stages"].values())


def test_every_image_the_html_references_exists(smoke_report):
    out = smoke_report[1]
    html = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 9
    assert all((out / name).exists() for name in images)
    assert "Synthetic data" in html and "not comparable" in html
    markdown = (out / "report.md").read_text()
    assert all((out / name).exists() for name in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown))


def test_a_failing_stage_is_reported_and_exits_1(tiny_dataset, tmp_path, monkeypatch):
    def broken(run):
        raise RuntimeError("boom")

    monkeypatch.setitem(report.STAGE_FUNCTIONS, "pca", broken)
    out = tmp_path / "r"
    assert report.main(["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(out),
                        "--only", "data,pca"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"]["pca"] == "failed: RuntimeError: boom"
    assert metrics["stages"]["data"] == "ok" and metrics["stages"]["cnn"] == "skipped"
    assert "boom" in (out / "pca-error.txt").read_text()
    assert "failed: RuntimeError: boom" in (out / "index.html").read_text()


def test_interrupted_report_leaves_no_half_written_folder(tiny_dataset, tmp_path, monkeypatch):
    def interrupt(run):
        raise KeyboardInterrupt

    monkeypatch.setitem(report.STAGE_FUNCTIONS, "mi", interrupt)
    with pytest.raises(KeyboardInterrupt):
        report.main(["--data", tiny_dataset.source, "--profile", "smoke", "--out", str(tmp_path / "r")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--only", "mi,bogus"], "unknown stage"),
    (["--data", "/no/such/emnist-byclass.mat"], "file not found"),
    (["--split", "nope", "--data", "default"], "unknown split"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "emnist_jax.report", *args, "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
