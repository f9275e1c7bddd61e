"""One-command performance check on whatever accelerator JAX finds (GPU, TPU; CPU for a dry run).

    python benchmarks/device_check.py                 # full scale: ~10 min on one H200 (16 cores)
    python benchmarks/device_check.py --scale tiny    # seconds, any machine: checks the script itself

Installs nothing and downloads nothing: the data are the embedded default, tiled to ByClass's
697,932 training rows (the study protocol trains on 467,614 of them per epoch). It times
1. the CNN's execution variants (convolution form x scan/unroll x steps per call), each a short
   official-protocol run: compile seconds and steady-epoch images/s;
2. the default configuration (what ``TrainConfig().resolved()`` picks here) for the study's
   10 epochs, wall clock with compilation and evaluation included (issue 12's goal: <= 15 s on
   one H100);
3. JAX mutual information over all 697,932 x 784 pixels, cold and warm;
4. ``python -m emnist_jax.report --profile full`` end to end on a ByClass-sized ``.mat`` file
   (benchmarks/make_byclass_sized.py), under ``/usr/bin/time -v`` where it exists (peak memory):
   the JAX stages on the accelerator, scikit-learn on every CPU core;
and writes ``reports/performance/<platform>-<device>.json`` and ``.md``, rewritten after each part,
so a run stopped by a time limit keeps what it measured.

Nothing here is measured on the 2-core development machine at full scale: run it where a GPU is.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORT_ENV: dict[str, str] = {}  # the environment the report runs in (main() fills it)
BYCLASS_TRAIN = 697_932

#: (convolution, loop, steps per call): the variants issue 12's table compares.
VARIANTS = [("xla", "unroll", 1), ("xla", "scan", 8), ("xla", "scan", 64), ("slices", "unroll", 8),
            ("slices", "scan", 8), ("slices", "scan", 64), ("slices", "scan", 256)]
SCALES = {
    # rows of the variant runs, rows of the 10-epoch default run, epochs of that run
    "full": dict(variant_rows=300_000, default_rows=BYCLASS_TRAIN, default_epochs=10, mi_rows=BYCLASS_TRAIN,
                 profile="full", byclass_file=True),
    "tiny": dict(variant_rows=2_048, default_rows=4_096, default_epochs=1, mi_rows=4_096, profile="smoke",
                 byclass_file=False),
}
#: At tiny scale on a CPU, XLA-convolution steps under a scan ran at 18-26 images/s (a --scale tiny dry run):
#: the dry run keeps one variant of each kind.
TINY_VARIANTS = [("xla", "unroll", 1), ("slices", "unroll", 4), ("slices", "scan", 8)]


def tiled(dataset, n_train: int, n_test: int | None = None):
    """The dataset with its training part repeated to n_train rows (test part optionally cut)."""
    test = slice(None) if n_test is None else slice(0, n_test)
    return dataclasses.replace(dataset, train_images=np.resize(dataset.train_images, (n_train, 28, 28)),
                               train_labels=np.resize(dataset.train_labels, n_train),
                               test_images=dataset.test_images[test], test_labels=dataset.test_labels[test])


def measure_variant(dataset, conv: str, loop: str, k: int, rows: int) -> dict:
    from emnist_jax.cnn import TrainConfig, train_and_evaluate

    config = TrainConfig(epochs=2, protocol="official", conv_impl=conv, loop=loop, steps_per_call=k)
    started = time.perf_counter()
    result = train_and_evaluate(tiled(dataset, rows, 1024), config, progress=False)
    return {"conv_impl": conv, "loop": loop, "steps_per_call": k, "batch_size": config.batch_size, "rows": rows,
            "compile_seconds": result.compile_seconds, "epoch1_seconds": result.history[0].seconds,
            "images_per_second": result.history[-1].images_per_second,
            "wall_seconds": time.perf_counter() - started}


def measure_default(dataset, rows: int, epochs: int) -> dict:
    from emnist_jax.cnn import TrainConfig, train_and_evaluate

    started = time.perf_counter()
    result = train_and_evaluate(tiled(dataset, rows), TrainConfig(epochs=epochs), progress=False)
    wall = time.perf_counter() - started
    c = result.config
    return {"config": {"conv_impl": c.conv_impl, "loop": c.loop, "steps_per_call": c.steps_per_call,
                       "batch_size": c.batch_size, "epochs": c.epochs, "protocol": c.protocol},
            "n_train": result.n_train, "wall_seconds": wall, "compile_seconds": result.compile_seconds,
            "training_seconds": sum(h.seconds for h in result.history),
            "evaluation_seconds": sum(e.seconds for e in result.evaluations.values()),
            "epochs": [dataclasses.asdict(h) for h in result.history],
            "holdout_accuracy": result.evaluations["holdout"].accuracy,
            "test_accuracy": result.evaluations["test"].accuracy}


def measure_mi(dataset, rows: int) -> dict:
    import jax

    from emnist_jax.data import file_rows
    from emnist_jax.classic.mutual_info import mutual_information

    X = file_rows(np.resize(dataset.train_images, (rows, 28, 28)))
    y = np.resize(dataset.train_labels, rows)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        jax.block_until_ready(mutual_information(X, y, dataset.n_classes))
        seconds.append(time.perf_counter() - started)
    return {"rows": rows, "pixels": X.shape[1], "cold_seconds": seconds[0], "warm_seconds": seconds[1]}


def peak_memory_mb(time_log: str) -> float | None:
    """Peak resident memory from ``/usr/bin/time -v`` output: the largest single process among the
    report and the workers it waited for (not their sum)."""
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_log)
    return int(found.group(1)) / 1024 if found else None


def measure_report(profile: str, byclass_file: bool, timeout: float) -> dict:
    import signal

    with tempfile.TemporaryDirectory() as folder:
        data = "default"
        if byclass_file:
            data = f"{folder}/emnist-byclass.mat"
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_byclass_sized.py"), data], check=True,
                           cwd=ROOT)
        command = [sys.executable, "-m", "emnist_jax.report", "--data", data, "--profile", profile,
                   "--out", f"{folder}/report"]
        timer = ["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []
        started = time.perf_counter()
        # A session of its own: on a timeout the whole group goes (the report, not only `time`),
        # so nothing of it runs beside the measurements that follow.
        report = subprocess.Popen(timer + command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True, env=REPORT_ENV or None)
        try:
            _, stderr = report.communicate(timeout=timeout)
            code = report.returncode
        except subprocess.TimeoutExpired:
            os.killpg(report.pid, signal.SIGTERM)  # the report saves its state and exits 130
            try:
                _, stderr = report.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(report.pid, signal.SIGKILL)
                _, stderr = report.communicate()
            code = "timeout"
        wall = time.perf_counter() - started
        seconds = {}
        if code == 0:
            seconds = json.loads(Path(folder, "report", "metrics.json").read_text()).get("seconds", {})
    shown = command[1:3] + ["emnist-byclass.mat" if part == data and byclass_file else part for part in command[3:7]]
    finished = re.findall(r"\] (\w+) ok in ([0-9.]+) s", stderr)
    return {"command": "python " + " ".join(shown), "exit_code": code, "wall_seconds": wall,
            "stage_seconds": seconds or {stage: float(s) for stage, s in finished},
            "peak_rss_mb": peak_memory_mb(stderr), "log_tail": stderr[-3000:]}


def environment() -> dict:
    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def markdown(results: dict) -> str:
    env, default = results["environment"], results["default"]
    lines = [f"# Device check: {env['device_kind']} ({env['platform']} x {env['device_count']})", "",
             f"`{results['command']}`, {env['date']}, JAX {env['versions']['jax']}, scale `{results['scale']}`.", "",
             "## CNN execution variants (batch 64, official protocol, 2 epochs; steady = epoch 2)", "",
             "| convolution | loop | steps per call | compile s | epoch 1 s | steady images/s |", "|---|---|---|---|---|---|"]
    for v in results["variants"]:
        lines.append(f"| {v['conv_impl']} | {v['loop']} | {v['steps_per_call']} | {v['compile_seconds']:.1f} | "
                     f"{v['epoch1_seconds']:.2f} | {v['images_per_second']:,.0f} |")
    c = default["config"] if default else None
    if c is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"## The default ({c['conv_impl']}, {c['loop']}, K={c['steps_per_call']}): "
                  f"{c['epochs']} epochs, {c['protocol']} protocol, {default['n_train']:,} images per epoch", "",
              f"Wall {default['wall_seconds']:.1f} s = compile {default['compile_seconds']:.1f} s + training "
              f"{default['training_seconds']:.1f} s + evaluation {default['evaluation_seconds']:.1f} s (+ data "
              f"placement); hold-out accuracy {default['holdout_accuracy']:.4f}, test {default['test_accuracy']:.4f} "
              "(synthetic data, tiled).", "",
              "| epoch | seconds | images/s |", "|---|---|---|"]
    lines += [f"| {e['epoch']} | {e['seconds']:.2f} | {e['images_per_second']:,.0f} |" for e in default["epochs"]]
    mi, report = results["mutual_information"], results["report"]
    lines += ["", f"## Mutual information, {mi['rows']:,} x {mi['pixels']} pixels: cold {mi['cold_seconds']:.2f} s, "
                  f"warm {mi['warm_seconds']:.3f} s", ""]
    if report:
        peak = f", peak resident memory {report['peak_rss_mb']:,.0f} MB" if report["peak_rss_mb"] else ""
        lines += [f"## `{report['command']}`: exit {report['exit_code']}, {report['wall_seconds']:.1f} s{peak}", ""]
        lines += [f"- {stage}: {seconds:.1f} s" for stage, seconds in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=1)), (".md", markdown(results))):
        tmp = out / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"{name}{suffix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=list(SCALES), default="full",
                        help="full: ByClass size (an accelerator); tiny: seconds, to check the script")
    parser.add_argument("--out", default=str(ROOT / "reports" / "performance"), help="folder for the JSON and Markdown")
    parser.add_argument("--report-timeout", type=float, default=420.0,
                        help="seconds after which the report run is stopped (the rest is still measured)")
    args = parser.parse_args()
    scale = SCALES[args.scale]

    # The report runs in a second process beside this one: JAX here must not take 75 % of the GPU
    # (the report itself gets the environment as it was: REPORT_ENV).
    REPORT_ENV.update(os.environ)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from emnist_jax.data import load

    dataset = load("default")
    results = {"command": "python benchmarks/device_check.py" + (f" --scale {args.scale}" if args.scale != "full" else ""),
               "scale": args.scale, "environment": environment(), "variants": [], "default": None,
               "mutual_information": None, "report": None}
    env = results["environment"]
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{env['platform']}-{env['device_kind']}").strip("-").lower()
    if args.scale != "full":
        name += f"-{args.scale}"
    out = Path(args.out)
    # Most important first; the file is rewritten after each part.
    results["default"] = measure_default(dataset, scale["default_rows"], scale["default_epochs"])
    print(f"default: {results['default']['wall_seconds']:.1f} s", flush=True)
    results["mutual_information"] = measure_mi(dataset, scale["mi_rows"])
    write(results, out, name)
    results["report"] = measure_report(scale["profile"], scale["byclass_file"], args.report_timeout)
    print(f"report: exit {results['report']['exit_code']}, {results['report']['wall_seconds']:.1f} s", flush=True)
    write(results, out, name)
    for conv, loop, k in VARIANTS if args.scale == "full" else TINY_VARIANTS:
        results["variants"].append(measure_variant(dataset, conv, loop, k, scale["variant_rows"]))
        print(json.dumps(results["variants"][-1]), flush=True)
        write(results, out, name)
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
