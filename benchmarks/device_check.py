"""One-command performance check on whatever accelerator JAX finds (GPU, TPU; CPU for a dry run).

    python benchmarks/device_check.py                 # full scale: one 10-minute run on one H200
    python benchmarks/device_check.py --scale tiny    # a minute, any machine: checks the script itself

Installs nothing and downloads nothing: the data are the embedded default, tiled to ByClass's
697,932 training rows (the study protocol trains on 467,614 of them per epoch). In order, each part
with a time budget (a part that runs out of it is stopped and recorded as such, and the rest goes on):
1. the default configuration (what ``TrainConfig().resolved()`` picks here) for the study's 10
   epochs, in a fresh process with an empty persistent compilation cache: wall clock split into
   start-up and data, compilation, training and evaluation;
2. the same in a second process, with the cache the first one filled (it should compile nothing:
   the cache's hits and misses are recorded);
3. placing the uint8 training images on the device on their own (one transfer);
4. ``python -m emnist_jax.report --profile full`` end to end on a ByClass-sized ``.mat`` file
   (benchmarks/make_byclass_sized.py), under ``/usr/bin/time -v`` where it exists (peak memory):
   the JAX stages on the accelerator, scikit-learn on every CPU core;
5. JAX mutual information over all 697,932 x 784 pixels, cold and warm;
6. the default's run under each explicit precision (float32, tensorfloat32, bfloat16): its
   training speed and its hold-out and test accuracy beside the default's;
7. the CNN's execution variants (convolution form x scan/unroll x steps per call), each a short
   official-protocol run, as long as the total budget lasts;
and writes ``reports/performance/<platform>-<device>.json`` and ``.md``, rewritten after each part,
so a run stopped by a time limit keeps what it measured.
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

#: (convolution, loop, steps per call): the execution variants compared on an accelerator.
VARIANTS = [("xla", "unroll", 1), ("xla", "scan", 8), ("xla", "scan", 64), ("slices", "unroll", 8),
            ("slices", "scan", 8), ("slices", "scan", 64), ("slices", "scan", 256)]
SCALES = {
    # rows of the variant runs, rows of the 10-epoch default run, epochs of that run, seconds per part
    "full": dict(variant_rows=300_000, default_rows=BYCLASS_TRAIN, default_epochs=10, mi_rows=BYCLASS_TRAIN,
                 profile="full", byclass_file=True,
                 budgets={"default": 120, "default_again": 90, "placement": 30, "report": 300, "mi": 30,
                          "precision": 150}),
    "tiny": dict(variant_rows=2_048, default_rows=4_096, default_epochs=1, mi_rows=4_096, profile="smoke",
                 byclass_file=False,
                 budgets={"default": 120, "default_again": 120, "placement": 30, "report": 180, "mi": 30,
                          "precision": 120}),
}
#: At tiny scale on a CPU, XLA-convolution steps under a scan ran at 18-26 images/s (a --scale tiny dry run):
#: the dry run keeps one variant of each kind.
TINY_VARIANTS = [("xla", "unroll", 1), ("slices", "unroll", 4), ("slices", "scan", 8)]
#: the explicit precisions measured against the default (JAX's own choice: TF32 on recent NVIDIA GPUs)
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


class OutOfBudget(Exception):
    """A part ran out of its seconds."""


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


def measure_precisions(dataset, rows: int, epochs: int, deadline: float, measured: list) -> list[dict]:
    """The default configuration under each of :data:`PRECISIONS`, in this process, while time
    lasts; each run appended to ``measured`` as it ends, so a part out of time keeps the others."""
    from emnist_jax.cnn import TrainConfig, train_and_evaluate

    data = tiled(dataset, rows)
    for precision in PRECISIONS:
        if time.perf_counter() > deadline:
            raise OutOfBudget(f"measured {', '.join(m['precision'] for m in measured) or 'none'} in its budget")
        result = train_and_evaluate(data, TrainConfig(epochs=epochs, precision=precision), progress=False)
        measured.append({"precision": precision, "conv_impl": result.config.conv_impl, "epochs": epochs,
                         "compile_seconds": result.compile_seconds,
                         "training_seconds": sum(h.seconds for h in result.history),
                         "steady_images_per_second": result.history[-1].images_per_second,
                         "evaluation_seconds": sum(e.seconds for e in result.evaluations.values()),
                         "holdout_accuracy": result.evaluations["holdout"].accuracy,
                         "test_accuracy": result.evaluations["test"].accuracy})
    return measured


def default_run(rows: int, epochs: int) -> dict:
    """The default's run in this process (a child of :func:`measure_default`): its seconds by kind."""
    started = time.perf_counter()
    from emnist_jax import compilation_cache
    from emnist_jax.cnn import TrainConfig, train_and_evaluate
    from emnist_jax.data import load

    cache = compilation_cache.enable()
    dataset = tiled(load("default"), rows)
    data_seconds = time.perf_counter() - started
    result = train_and_evaluate(dataset, TrainConfig(epochs=epochs), progress=False)
    wall = time.perf_counter() - started
    c = result.config
    training = sum(h.seconds for h in result.history)
    evaluation = sum(e.seconds for e in result.evaluations.values())
    return {"config": {"conv_impl": c.conv_impl, "loop": c.loop, "steps_per_call": c.steps_per_call,
                       "batch_size": c.batch_size, "epochs": c.epochs, "protocol": c.protocol},
            "n_train": result.n_train, "wall_seconds": wall, "start_and_data_seconds": data_seconds,
            "compile_seconds": result.compile_seconds, "training_seconds": training,
            "evaluation_seconds": evaluation, "evaluated_images": sum(e.n for e in result.evaluations.values()),
            "other_seconds": wall - data_seconds - result.compile_seconds - training - evaluation,
            "compilation_cache": {"folder": cache, **compilation_cache.EVENTS},
            "epochs": [dataclasses.asdict(h) for h in result.history],
            "holdout_accuracy": result.evaluations["holdout"].accuracy,
            "test_accuracy": result.evaluations["test"].accuracy}


def measure_default(rows: int, epochs: int, cache: str, budget: float) -> dict:
    """:func:`default_run` in a fresh process (its own start-up and compilation count), with the
    persistent compilation cache in ``cache``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child-default", str(rows), str(epochs)]
    env = {**REPORT_ENV, "EMNIST_JAX_COMPILATION_CACHE": cache}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        raise OutOfBudget(f"the default's run took over {budget:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"the default's run failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def measure_placement(dataset, rows: int) -> dict:
    """The uint8 training images put on the device on their own, twice (the first allocates)."""
    import jax

    from emnist_jax.cnn.placement import make_mesh, place_images

    images = np.resize(dataset.train_images, (rows, 28, 28))
    mesh = make_mesh()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        placed = jax.block_until_ready(place_images(images, mesh))
        seconds.append(time.perf_counter() - started)
        del placed
    return {"rows": rows, "bytes": int(images.nbytes), "first_seconds": seconds[0], "second_seconds": seconds[1],
            "gigabytes_per_second": images.nbytes / seconds[1] / 1e9}


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


def _default_lines(title: str, default: dict) -> list[str]:
    c, cache = default["config"], default["compilation_cache"]
    return ["", f"## {title} ({c['conv_impl']}, {c['loop']}, K={c['steps_per_call']}): {c['epochs']} epochs, "
                f"{c['protocol']} protocol, {default['n_train']:,} images per epoch", "",
            f"Wall {default['wall_seconds']:.1f} s in the process ({default['process_seconds']:.1f} s with its "
            f"start) = start-up and data {default['start_and_data_seconds']:.1f} s + compilation "
            f"{default['compile_seconds']:.1f} s + training {default['training_seconds']:.1f} s + evaluation "
            f"{default['evaluation_seconds']:.1f} s ({default['evaluated_images']:,} images) + the rest (placement, set-up) {default['other_seconds']:.1f} s; "
            f"compilation cache: {cache.get('cache_hits', 0)} hits, {cache.get('cache_misses', 0)} misses; "
            f"hold-out accuracy {default['holdout_accuracy']:.4f}, test {default['test_accuracy']:.4f} "
            "(synthetic data, tiled).", "",
            "| epoch | seconds | images/s |", "|---|---|---|",
            *(f"| {i + 1} | {e['seconds']:.2f} | {e['images_per_second']:,.0f} |"
              for i, e in enumerate(default["epochs"]))]


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Device check: {env['device_kind']} ({env['platform']} x {env['device_count']})", "",
             f"`{results['command']}`, {env['date']}, JAX {env['versions']['jax']}, scale `{results['scale']}`.", "",
             "Parts: " + ", ".join(f"{name} {state}" for name, state in results["parts"].items()) + "."]
    if results.get("default"):
        lines += _default_lines("The default, first process", results["default"])
    if results.get("default_again"):
        lines += _default_lines("The default, second process (compilation cache filled)", results["default_again"])
    placement = results.get("placement")
    if placement:
        lines += ["", f"## Placing the {placement['rows']:,} uint8 training images ({placement['bytes'] / 1e6:,.0f} MB)"
                      f": {placement['first_seconds']:.3f} s, again {placement['second_seconds']:.3f} s "
                      f"({placement['gigabytes_per_second']:.1f} GB/s)"]
    report = results.get("report")
    if report:
        peak = f", peak resident memory {report['peak_rss_mb']:,.0f} MB" if report["peak_rss_mb"] else ""
        lines += ["", f"## `{report['command']}`: exit {report['exit_code']}, {report['wall_seconds']:.1f} s{peak}", ""]
        lines += [f"- {stage}: {seconds:.1f} s" for stage, seconds in report["stage_seconds"].items()]
    mi = results.get("mutual_information")
    if mi:
        lines += ["", f"## Mutual information, {mi['rows']:,} x {mi['pixels']} pixels: cold {mi['cold_seconds']:.2f} s, "
                      f"warm {mi['warm_seconds']:.3f} s"]
    if results.get("precision"):
        lines += ["", "## Precision (the default's run, each precision asked for explicitly)", "",
                  "| precision | convolution | compile s | training s | steady images/s | evaluation s | hold-out | test |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m['precision']} | {m['conv_impl']} | {m['compile_seconds']:.1f} | {m['training_seconds']:.1f} | "
                  f"{m['steady_images_per_second']:,.0f} | {m['evaluation_seconds']:.2f} | {m['holdout_accuracy']:.4f} | "
                  f"{m['test_accuracy']:.4f} |" for m in results["precision"]]
    if results["variants"]:
        lines += ["", "## CNN execution variants (batch 64, official protocol, 2 epochs; steady = epoch 2)", "",
                  "| convolution | loop | steps per call | compile s | epoch 1 s | steady images/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v['conv_impl']} | {v['loop']} | {v['steps_per_call']} | {v['compile_seconds']:.1f} | "
                  f"{v['epoch1_seconds']:.2f} | {v['images_per_second']:,.0f} |" for v in results["variants"]]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=1)), (".md", markdown(results))):
        tmp = out / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"{name}{suffix}")


def run_part(results: dict, name: str, measure, write_out) -> None:
    """``results[name] = measure()``, its outcome in ``results["parts"]``; the files rewritten after."""
    started = time.perf_counter()
    try:
        results[name] = measure()
        results["parts"][name] = f"ok ({time.perf_counter() - started:.0f} s)"
    except OutOfBudget as error:
        results["parts"][name] = f"stopped: {error}"
    except Exception as error:  # a part that fails must not lose the others' figures
        results["parts"][name] = f"failed: {type(error).__name__}: {str(error).splitlines()[-1][:300] if str(error) else ''}"
    print(f"{name}: {results['parts'][name]}", flush=True)
    write_out()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-default":
        print(json.dumps(default_run(int(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=list(SCALES), default="full",
                        help="full: ByClass size (an accelerator); tiny: a minute, to check the script")
    parser.add_argument("--out", default=str(ROOT / "reports" / "performance"), help="folder for the JSON and Markdown")
    parser.add_argument("--budget", type=float, default=560.0,
                        help="seconds for the whole check; the variants run while it lasts (default: %(default)s)")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    budgets = scale["budgets"]
    deadline = time.perf_counter() + args.budget

    def left(part: str) -> float:
        return max(1.0, min(budgets.get(part, args.budget), deadline - time.perf_counter()))

    # The report and the default's runs get the environment as it was; JAX here must not take 75 % of
    # the GPU beside them.
    REPORT_ENV.update(os.environ)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from emnist_jax.data import load

    dataset = load("default")
    results = {"command": "python benchmarks/device_check.py" + (f" --scale {args.scale}" if args.scale != "full" else ""),
               "scale": args.scale, "environment": environment(), "parts": {}, "variants": []}
    env = results["environment"]
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{env['platform']}-{env['device_kind']}").strip("-").lower()
    if args.scale != "full":
        name += f"-{args.scale}"
    out = Path(args.out)

    def write_out() -> None:
        write(results, out, name)

    with tempfile.TemporaryDirectory() as cache:   # an empty compilation cache: the first run compiles
        for part in ("default", "default_again"):
            run_part(results, part, lambda part=part: measure_default(scale["default_rows"], scale["default_epochs"],
                                                                      cache, left(part)), write_out)
    run_part(results, "placement", lambda: measure_placement(dataset, scale["default_rows"]), write_out)
    run_part(results, "report", lambda: measure_report(scale["profile"], scale["byclass_file"], left("report")),
             write_out)
    run_part(results, "mutual_information", lambda: measure_mi(dataset, scale["mi_rows"]), write_out)
    run_part(results, "precision", lambda: measure_precisions(dataset, scale["default_rows"], scale["default_epochs"],
                                                              time.perf_counter() + left("precision"),
                                                              results.setdefault("precision", [])), write_out)
    for conv, loop, k in VARIANTS if args.scale == "full" else TINY_VARIANTS:
        if deadline - time.perf_counter() < 20:
            results["parts"]["variants"] = f"stopped: the budget of {args.budget:.0f} s was spent"
            break
        results["variants"].append(measure_variant(dataset, conv, loop, k, scale["variant_rows"]))
        print(json.dumps(results["variants"][-1]), flush=True)
        write_out()
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
