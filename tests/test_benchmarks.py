import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_asv_check_finds_no_problem_in_the_benchmarks():
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra"
    result = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "No problems found" in result.stdout


def test_the_device_check_records_a_part_out_of_its_budget_and_goes_on(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = {"parts": {}}
    written = []
    stopped = lambda: device_check.measure_default(4096, 1, str(tmp_path / "cache"), budget=0.5)  # noqa: E731
    device_check.run_part(results, "default", stopped, lambda: written.append(dict(results["parts"])))
    device_check.run_part(results, "next", lambda: {"seconds": 1.0}, lambda: written.append(dict(results["parts"])))
    assert results["parts"]["default"] == "stopped: the default's run took over 0.5 s" and "default" not in results
    assert results["next"] == {"seconds": 1.0} and results["parts"]["next"].startswith("ok")
    assert written == [{"default": results["parts"]["default"]}, results["parts"]]   # written after each part


def test_the_device_checks_precision_part_keeps_what_it_measured_when_time_runs_out(tiny_dataset):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = {"parts": {}, "variants": [], "command": "c", "scale": "tiny",
               "environment": {"device_kind": "cpu", "platform": "cpu", "device_count": 1, "date": "d",
                               "versions": {"jax": "x"}}}
    part = lambda: device_check.measure_precisions(tiny_dataset, 4096, 1, 0.0, results.setdefault("precision", []))  # noqa: E731
    device_check.run_part(results, "precision", part, lambda: None)
    assert results["parts"]["precision"] == "stopped: measured none in its budget" and results["precision"] == []
    results["precision"] = [{"precision": "bfloat16", "conv_impl": "slices", "compile_seconds": 1.0,
                             "training_seconds": 2.0, "steady_images_per_second": 3000.0, "evaluation_seconds": 0.5,
                             "holdout_accuracy": 0.9, "test_accuracy": 0.8}]
    assert "| bfloat16 | slices | 1.0 | 2.0 | 3,000 | 0.50 | 0.9000 | 0.8000 |" in device_check.markdown(results)
