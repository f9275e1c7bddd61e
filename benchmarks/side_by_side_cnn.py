"""CNN throughput on a CPU: JAX variants and PyTorch side by side in one run.

    python benchmarks/side_by_side_cnn.py [--seconds 5] [--batches 64 256] [--malloc tuned|default|both]
                                          [--no-torch] [--no-torch-compile] [--out reports/performance]

Writes ``cpu.json`` (every figure), ``cpu.md`` (the table) and ``cpu.png`` (bar chart) into
``--out`` (each written to a temporary name, then renamed). Every measurement runs in a child
process with the allocator setting of its half (glibc's default malloc or ``mallopt`` tuned,
:func:`emnist_jax.runtime.tune_malloc`; process-wide, hence the children): the fp32 matrix peak through
``jnp.dot``, each JAX variant, PyTorch eager (channels_last, its default threads) and
``torch.compile`` (default mode; skipped with a note when it fails or takes longer than
``--compile-timeout``). Training images/s include the Adam step; evaluation is forward + argmax.
The ratios divide by PyTorch eager of the same half and batch, measured in the same run before and
after the JAX variants (the mean of the two; both in the json and the table). On a shared machine
the load drifts within minutes, so ``--rounds`` more rounds (default 8) compare our CPU default (or ``--ours``) and
PyTorch eager in turns: two children wait on stdin and are timed alternately (training, then
evaluation, the order alternating per round); the table gives medians and the range of the ratios.
PyTorch comes from the optional extra ``pip install -e '.[peers]'`` and is only imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Multiply-adds x 2 of one image through the study's CNN. Forward 15.44 MFLOP (conv1 0.45, conv2
#: 7.23, conv3 7.23, dense 0.54); training = forward + input gradient + weight gradient of every
#: layer except conv1's input gradient = 45.9 MFLOP.
FORWARD_MFLOP = 15.44
TRAIN_MFLOP = 45.9

#: (convolution, steps per call, loop) of each JAX variant timed; "default" is what
#: TrainConfig().resolved("cpu") picks, timed first so that its first call is a real compile (a later
#: variant with the same settings reuses it). Variants whose convolution is unavailable are skipped.
VARIANTS = (("default", None, None), ("fused", 1, "unroll"), ("fused", 8, "scan"), ("onednn", 1, "unroll"),
            ("onednn", 4, "scan"), ("xla", 1, "unroll"), ("xla", 4, "unroll"), ("slices", 1, "unroll"),
            ("slices", 4, "unroll"), ("slices", 4, "scan"))


# ---- measurements (run in child processes) -----------------------------------------------------

def matmul_peak(seconds: float) -> dict:
    """fp32 GFLOP/s of one jitted 2048 x 2048 x 2048 jnp.dot, the best of repeated calls."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048
    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    dot = jax.jit(lambda x, y: jnp.dot(x, y))
    dot(a, a).block_until_ready()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return {"impl": "jnp.dot fp32 2048^3", "gflops": 2 * n**3 / best / 1e9}


def parse_variant(text: str) -> tuple:
    """"default" or "conv:K:loop" (e.g. "onednn:4:scan") -> an entry of VARIANTS."""
    if text == "default":
        return ("default", None, None)
    conv, k, loop = text.split(":")
    return (conv, int(k), loop)


def jax_rows(batches, seconds, variants=VARIANTS):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emnist_jax.cnn import TrainConfig
    from emnist_jax.cnn.config import available_conv_impls
    from emnist_jax.cnn.placement import make_mesh
    from emnist_jax.cnn.programs import eval_batch, train_calls
    from emnist_jax.cnn.steps import create_state, zero_sums

    mesh = make_mesh()
    rng = np.random.default_rng(0)
    n = 8192
    images = jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 62, n).astype(np.int32))
    rows = []
    for conv, k, loop in variants:
        if conv != "default" and conv not in available_conv_impls():
            continue
        for batch in batches:
            config = TrainConfig(batch_size=batch, **({} if conv == "default" else
                                                      {"conv_impl": conv, "steps_per_call": k, "loop": loop}))
            config = config.resolved("cpu")
            k = config.steps_per_call
            name = (f"ours, {config.conv_impl} K={k} {config.loop}" +
                    (" (CPU default)" if conv == "default" else ""))
            state = create_state(config, 62)
            index = jnp.asarray(rng.integers(0, n, (64, k, batch)).astype(np.int32))
            start = time.perf_counter()
            state, s = train_calls(state, images, labels, index, 0, zero_sums(), mesh=mesh, loop=config.loop,
                                   grad_chunk=config.grad_chunk)
            jax.block_until_ready(s)
            compile_s = time.perf_counter() - start
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                state, s = train_calls(state, images, labels, index, calls % 64, s, mesh=mesh, loop=config.loop,
                                       grad_chunk=config.grad_chunk)
                calls += 1
                if calls % 4 == 0:
                    jax.block_until_ready(s)
            jax.block_until_ready(s)
            train_ips = calls * k * batch / (time.perf_counter() - start)
            eval_ips = None
            if k == 1 or conv == "default":
                mask = jnp.ones(batch)
                x, y = images[:batch], labels[:batch]
                jax.block_until_ready(eval_batch(state.params, x, y, mask, apply_fn=state.apply_fn, mesh=mesh))
                evals, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / 2:
                    out = eval_batch(state.params, x, y, mask, apply_fn=state.apply_fn, mesh=mesh)
                    evals += 1
                jax.block_until_ready(out)
                eval_ips = evals * batch / (time.perf_counter() - start)
            rows.append({"impl": name, "batch": batch, "train": train_ips, "eval": eval_ips,
                         "compile_s": compile_s, "default": conv == "default"})
    return rows


def torch_model():
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(64, 128, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(), nn.Linear(2048, 128), nn.LeakyReLU(0.1), nn.Linear(128, 62),
    ).to(memory_format=torch.channels_last)
    assert sum(p.numel() for p in model.parameters()) == 362_942
    return model


def torch_rows(batches, seconds, compiled: bool):
    """PyTorch as a user runs it: eager (or ``torch.compile(model)``), channels_last, default threads."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rows = []
    for batch in batches:
        model = torch_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        forward = torch.compile(model) if compiled else model
        data = torch.randint(0, 256, (8192, 1, 28, 28), dtype=torch.uint8)
        labels = torch.randint(0, 62, (8192,))
        loss_fn = nn.CrossEntropyLoss()

        def step():
            rows_ = torch.randint(0, 8192, (batch,))
            x = (data[rows_].float() / 255.0).contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), labels[rows_])
            loss.backward()
            optimizer.step()

        start = time.perf_counter()
        for _ in range(5):
            step()
        warmup_s = time.perf_counter() - start
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            steps += 1
        train_ips = steps * batch / (time.perf_counter() - start)
        x = (data[:batch].float() / 255.0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            start = time.perf_counter()
            forward(x).argmax(1)
            warmup_s += time.perf_counter() - start
            evals, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 2:
                forward(x).argmax(1)
                evals += 1
        rows.append({"impl": "PyTorch torch.compile, channels_last" if compiled else "PyTorch eager, channels_last",
                     "batch": batch, "train": train_ips, "eval": evals * batch / (time.perf_counter() - start),
                     "compile_s": warmup_s, "default": False})
    return rows


def serve(kind: str, batches, ours: str = "default") -> None:
    """A child that waits on stdin: "train B S" / "eval B S" time S seconds of that work at batch B
    and print images/s; "quit" ends. Two such children (ours, PyTorch eager) are driven in turns by
    :func:`interleaved`; the idle one sleeps in a read, so it takes nothing from the other. ``ours``:
    the JAX variant, "default" or conv:K:loop."""
    import numpy as np

    rng = np.random.default_rng(0)
    images_np = rng.integers(0, 256, (8192, 28, 28), dtype=np.uint8)
    labels_np = rng.integers(0, 62, 8192).astype(np.int32)
    work = {}
    if kind == "jax":
        import jax
        import jax.numpy as jnp

        from emnist_jax.cnn import TrainConfig
        from emnist_jax.cnn.placement import make_mesh
        from emnist_jax.cnn.programs import eval_batch, train_calls
        from emnist_jax.cnn.steps import create_state, zero_sums

        mesh = make_mesh()
        images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)
        conv, k, loop = parse_variant(ours)
        chosen = {} if conv == "default" else {"conv_impl": conv, "steps_per_call": k, "loop": loop}
        for batch in batches:
            config = TrainConfig(batch_size=batch, **chosen).resolved("cpu")
            index = jnp.asarray(rng.integers(0, 8192, (64, config.steps_per_call, batch)).astype(np.int32))
            box = {"state": create_state(config, 62), "sums": zero_sums(), "call": 0}

            def train(seconds, config=config, index=index, box=box, batch=batch):
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    box["state"], box["sums"] = train_calls(box["state"], images, labels, index, box["call"] % 64,
                                                            box["sums"], mesh=mesh, loop=config.loop,
                                                            grad_chunk=config.grad_chunk)
                    box["call"] += 1
                    done += config.steps_per_call * batch
                    if box["call"] % 2 == 0:
                        jax.block_until_ready(box["sums"])
                jax.block_until_ready(box["sums"])
                return done / (time.perf_counter() - start)

            def evaluate(seconds, box=box, batch=batch):
                mask, done, start = jnp.ones(batch), 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    result = eval_batch(box["state"].params, images[:batch], labels[:batch], mask,
                                        apply_fn=box["state"].apply_fn, mesh=mesh)
                    done += batch
                jax.block_until_ready(result)
                return done / (time.perf_counter() - start)

            work[batch] = (train, evaluate, f"{config.conv_impl} K={config.steps_per_call} {config.loop}")
    else:
        import torch
        from torch import nn

        torch.manual_seed(0)
        data, tlabels = torch.from_numpy(images_np[:, None]), torch.from_numpy(labels_np.astype(np.int64))
        for batch in batches:
            model = torch_model()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)

            def train(seconds, model=model, optimizer=optimizer, batch=batch):
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    rows = torch.randint(0, 8192, (batch,))
                    x = (data[rows].float() / 255.0).contiguous(memory_format=torch.channels_last)
                    optimizer.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(x), tlabels[rows]).backward()
                    optimizer.step()
                    done += batch
                return done / (time.perf_counter() - start)

            def evaluate(seconds, model=model, batch=batch):
                x = (data[:batch].float() / 255.0).contiguous(memory_format=torch.channels_last)
                done, start = 0, time.perf_counter()
                with torch.inference_mode():
                    while time.perf_counter() - start < seconds:
                        model(x).argmax(1)
                        done += batch
                return done / (time.perf_counter() - start)

            work[batch] = (train, evaluate, "PyTorch eager, channels_last")
    for train, evaluate, _ in work.values():   # compile and warm up
        train(0.5), evaluate(0.3)
    print(json.dumps({batch: w[2] for batch, w in work.items()}), flush=True)
    for line in sys.stdin:
        what, batch, seconds = (line.split() + ["", "", ""])[:3]
        if what == "quit":
            break
        train, evaluate, _ = work[int(batch)]
        print((train if what == "train" else evaluate)(float(seconds)), flush=True)


def interleaved(args, malloc: str) -> list[dict]:
    """Our CPU default and PyTorch eager in two waiting children, driven in turns: per round and batch,
    training then evaluation, the order alternating, so that both see the same load."""
    children = {}
    for kind in ("jax", "torch"):
        command = [sys.executable, os.path.abspath(__file__), "--child", f"serve-{kind}", "--malloc", malloc,
                   "--batches", *map(str, args.batches), "--ours", args.ours]
        children[kind] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
    try:
        names = {kind: json.loads(child.stdout.readline()) for kind, child in children.items()}

        def ask(kind, what, batch, seconds):
            children[kind].stdin.write(f"{what} {batch} {seconds}\n")
            children[kind].stdin.flush()
            return float(children[kind].stdout.readline())

        out, seconds = [], args.seconds / 2
        for r in range(args.rounds):
            for batch in args.batches:
                order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
                result = {"batch": batch, "round": r, "ours_variant": names["jax"][str(batch)]}
                for what in ("train", "eval"):
                    for kind in order:
                        result[f"{'ours' if kind == 'jax' else 'torch'}{'' if what == 'train' else '_eval'}"] = \
                            ask(kind, what, batch, seconds if what == "train" else seconds / 2)
                out.append(result)
        return out
    finally:
        for child in children.values():
            if child.poll() is None:
                child.stdin.write("quit\n")
                child.stdin.close()
                child.wait(timeout=60)


def child(args) -> None:
    malloc = False
    if args.malloc == "tuned":
        from emnist_jax.runtime import tune_malloc

        malloc = tune_malloc()
    if args.child.startswith("serve-"):
        serve(args.child[len("serve-"):], args.batches, args.ours)
        return
    if args.child == "jax":
        from emnist_jax.cnn import fused, onednn

        out = {"peak": matmul_peak(min(args.seconds, 3.0)), "rows": jax_rows(args.batches, args.seconds,
                                                                            [parse_variant(v) for v in args.variants]),
               "onednn_unavailable": onednn.unavailable_reason(), "fused_unavailable": fused.unavailable_reason()}
    else:
        out = {"rows": torch_rows(args.batches, args.seconds, compiled=args.child == "torch-compile")}
    out["mallopt_applied"] = malloc
    print(json.dumps(out))


# ---- the parent: run the children, write the report --------------------------------------------

def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "onednn-cpu-gomp"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except (OSError, StopIteration):
        simd = []
    return {"cpu": model, "cpus": os.cpu_count(), "simd": simd, "system": platform.platform()}


def run_child(kind: str, malloc: str, args, timeout: float | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--malloc", malloc,
               "--seconds", str(args.seconds), "--batches", *map(str, args.batches), "--variants", *args.variants,
               "--rounds", str(args.rounds)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rows": [], "note": f"{kind}: stopped after {timeout:.0f} s (--compile-timeout)"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"rows": [], "note": f"{kind}: failed (exit {done.returncode}): {last[:300]}"}
    out = json.loads(done.stdout.splitlines()[-1])
    out["seconds"] = time.perf_counter() - started
    return out


def write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # as an ordinary file (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def mean_of_repeats(rows: list[dict]) -> list[dict]:
    """One row per (variant, batch, malloc): the mean of repeated measurements, each kept in "runs"."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        key = (r["impl"], r["batch"], r["malloc"])
        if key not in merged:
            merged[key] = dict(r, runs=[{k: r[k] for k in ("train", "eval", "compile_s")}])
        else:
            merged[key]["runs"].append({k: r[k] for k in ("train", "eval", "compile_s")})
    for r in merged.values():
        if len(r["runs"]) > 1:
            for k in ("train", "eval"):
                r[k] = sum(run[k] for run in r["runs"]) / len(r["runs"])
    return list(merged.values())


def with_ratios(rows: list[dict], peak: float | None) -> list[dict]:
    """Add ratio vs PyTorch eager (same half, same batch) and achieved GFLOP/s to every row."""
    base = {(r["malloc"], r["batch"]): r for r in rows if r["impl"] == "PyTorch eager, channels_last"}
    for r in rows:
        ref = base.get((r["malloc"], r["batch"]))
        r["train_vs_torch"] = r["train"] / ref["train"] if ref else None
        r["eval_vs_torch"] = r["eval"] / ref["eval"] if ref and r["eval"] else None
        r["train_gflops"] = r["train"] * TRAIN_MFLOP / 1e3
        r["eval_gflops"] = r["eval"] * FORWARD_MFLOP / 1e3 if r["eval"] else None
        r["train_fraction_of_peak"] = r["train_gflops"] / peak if peak else None
    return rows


def interleaved_medians(rounds: list[dict]) -> list[dict]:
    """Per malloc setting and batch: the median over rounds of each figure and of the two ratios."""
    import statistics

    out = []
    for key in dict.fromkeys((r["malloc"], r["batch"]) for r in rounds):
        these = [r for r in rounds if (r["malloc"], r["batch"]) == key]
        med = {f: statistics.median(r[f] for r in these) for f in ("ours", "torch", "ours_eval", "torch_eval")}
        out.append(dict(med, malloc=key[0], batch=key[1], rounds=len(these), ours_variant=these[0]["ours_variant"],
                        train_ratio=statistics.median(r["ours"] / r["torch"] for r in these),
                        eval_ratio=statistics.median(r["ours_eval"] / r["torch_eval"] for r in these),
                        train_ratio_range=(min(r["ours"] / r["torch"] for r in these),
                                           max(r["ours"] / r["torch"] for r in these))))
    return out


def markdown(report: dict) -> str:
    def num(x, fmt="{:,.0f}"):
        return "" if x is None else fmt.format(x)

    def cell(value, ratio):
        return "" if value is None else num(value) + (f" ({ratio:.2f}x)" if ratio is not None else "")

    lines = [f"# CNN throughput on a CPU, side by side ({report['date']})", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs "
             f"({', '.join(report['machine']['simd'])}); load average (1, 5, 15 min) at start "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average_at_start'])}, at end "
             f"{', '.join(f'{x:.2f}' for x in report['machine'].get('load_average_at_end', ()))}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".", ""]
    for malloc in report["malloc_settings"]:
        peak = report["matmul_peak_gflops"].get(malloc)
        lines += [f"## malloc: {malloc}" + (f"; fp32 matrix peak (jnp.dot 2048^3) {peak:,.0f} GFLOP/s" if peak else ""),
                  "", "images/s (ratio vs PyTorch eager, same batch); training includes the Adam step; "
                  f"GFLOP/s at {TRAIN_MFLOP} MFLOP per image (training) and {FORWARD_MFLOP} (evaluation); "
                  "first call = compile (JAX) or 5 warm-up steps + 1 evaluation (PyTorch)", "",
                  "| variant | batch | training | eval | train GFLOP/s | eval GFLOP/s | first call s |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in report["rows"] if r["malloc"] == malloc):
            impl = r["impl"]
            if len(r.get("runs", [])) > 1:
                impl += " (mean of " + " and ".join(f"{run['train']:,.0f}/{run['eval']:,.0f}" for run in r["runs"]) + \
                        ": before and after ours)"
            lines.append(f"| {impl} | {r['batch']} | {cell(r['train'], r['train_vs_torch'])} | "
                         f"{cell(r['eval'], r['eval_vs_torch'])} | {num(r['train_gflops'])} | "
                         f"{num(r['eval_gflops'])} | {num(r['compile_s'], '{:.1f}')} |")
        lines.append("")
    if report.get("interleaved_medians"):
        lines += ["## Interleaved: our CPU default and PyTorch eager taking turns", "",
                  "Two waiting child processes driven in turns: rounds of a few seconds each, training then "
                  "evaluation, the order alternating, so both see the same load; medians over the rounds (the "
                  "ratio is the median of the per-round ratios, its range in brackets).", "",
                  "| malloc | batch | ours | rounds | ours train | PyTorch train | ratio (range) | ours eval | "
                  "PyTorch eval | eval ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
        for m in report["interleaved_medians"]:
            lo, hi = m["train_ratio_range"]
            lines.append(f"| {m['malloc']} | {m['batch']} | {m['ours_variant']} | {m['rounds']} | "
                         f"{m['ours']:,.0f} | {m['torch']:,.0f} | {m['train_ratio']:.2f}x ({lo:.2f}-{hi:.2f}) | "
                         f"{m['ours_eval']:,.0f} | {m['torch_eval']:,.0f} | {m['eval_ratio']:.2f}x |")
        lines.append("")
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def chart(report: dict, path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    malloc = report["malloc_settings"][-1]
    rows = [r for r in report["rows"] if r["malloc"] == malloc]
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(names) * len(batches) + 1.5), sharey=True)
    for ax, what in zip(axes, ("train", "eval")):
        labels, values, colors = [], [], []
        for name in names:
            for batch in batches:
                r = next((r for r in rows if r["impl"] == name and r["batch"] == batch), None)
                labels.append(f"{name}, b{batch}")
                values.append((r or {}).get(what) or 0)
                colors.append("tab:orange" if name.startswith("PyTorch") else
                              "tab:green" if r and r["default"] else "tab:blue")
        ax.barh(range(len(values)), values, color=colors)
        for i, v in enumerate(values):
            if v:
                ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("images/s" + (" (training, Adam step included)" if what == "train" else " (evaluation)"))
    axes[0].invert_yaxis()  # the axes share y: invert once
    fig.suptitle(f"Study CNN on {report['machine']['cpus']} CPUs, malloc {malloc} "
                 "(orange PyTorch, green our CPU default)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant (half for eval)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--malloc", choices=("tuned", "default", "both"), default="tuned",
                        help="allocator setting of the children (default: mallopt tuned, as `python -m emnist_jax.cnn`)")
    parser.add_argument("--variants", nargs="+", default=["default"] + [f"{c}:{k}:{l}" for c, k, l in VARIANTS[1:]],
                        help="JAX variants, 'default' or conv:K:loop (default: all of VARIANTS)")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-timeout", type=float, default=400.0,
                        help="seconds allowed to the torch.compile child before it is skipped")
    parser.add_argument("--out", default=os.path.join("reports", "performance"), help="folder for cpu.json/.md/.png")
    parser.add_argument("--rounds", type=int, default=8,
                        help="rounds of the interleaved comparison (our default and PyTorch eager in two waiting "
                             "processes, timed in turns; 0: skip)")
    parser.add_argument("--ours", default="default",
                        help="the JAX variant of the interleaved comparison, 'default' or conv:K:loop (default: "
                             "the CPU default)")
    parser.add_argument("--child", choices=("jax", "torch", "torch-compile", "serve-jax", "serve-torch"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    try:
        import torch  # noqa: F401

        has_torch = not args.no_torch
    except ImportError:
        has_torch = False
    notes = [] if has_torch or args.no_torch else ["PyTorch not installed (pip install -e '.[peers]'): no ratios"]
    settings = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
    rows, peaks, children = [], {}, []
    load_at_start = os.getloadavg()
    for malloc in settings:
        # PyTorch eager before and after the JAX variants: on a shared machine the load drifts during
        # a run, and the ratios divide by the mean of the two (both are kept in the json)
        kinds = (["torch"] if has_torch else []) + ["jax"] + (["torch"] if has_torch else []) + \
                (["torch-compile"] if has_torch and not args.no_torch_compile else [])
        for kind in kinds:
            print(f"malloc {malloc}: {kind} ...", flush=True)
            out = run_child(kind, malloc, args, timeout=args.compile_timeout if kind == "torch-compile" else None)
            if "note" in out:
                notes.append(f"malloc {malloc}, {out['note']}")
                print("  " + out["note"], flush=True)
                if kind == "jax":
                    raise SystemExit(out["note"])
            if "peak" in out:
                peaks[malloc] = out["peak"]["gflops"]
            if out.get("onednn_unavailable"):
                notes.append(f"malloc {malloc}: no oneDNN variants: {out['onednn_unavailable']}")
            if out.get("fused_unavailable"):
                notes.append(f"malloc {malloc}: no fused variants: {out['fused_unavailable']}")
            children.append({"kind": kind, "malloc": malloc, "mallopt_applied": out.get("mallopt_applied"),
                             "seconds": out.get("seconds")})
            rows += [dict(r, malloc=malloc) for r in out["rows"]]
    rows = mean_of_repeats(rows)
    rounds = []
    if has_torch and args.rounds:
        for malloc in settings:
            print(f"malloc {malloc}: interleaved ...", flush=True)
            rounds += [dict(r, malloc=malloc) for r in interleaved(args, malloc)]
    order = {"PyTorch eager, channels_last": 0, "PyTorch torch.compile, channels_last": 1}
    rows.sort(key=lambda r: (settings.index(r["malloc"]), order.get(r["impl"], 2)))
    for malloc in settings:
        with_ratios([r for r in rows if r["malloc"] == malloc], peaks.get(malloc))
    for r in rows:
        if r["default"]:
            notes.append(f"malloc {r['malloc']}, batch {r['batch']}: compiling the CPU default's training program "
                         f"took {r['compile_s']:.1f} s; train_and_evaluate reports it as compile_seconds, before "
                         "epoch 1, outside every epoch's images/s")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python benchmarks/side_by_side_cnn.py " + " ".join(sys.argv[1:]),
        "machine": dict(machine(), load_average_at_start=load_at_start, load_average_at_end=os.getloadavg()),
        "versions": versions(),
        "malloc_settings": settings,
        "malloc_meaning": {"default": "glibc's defaults", "tuned": "mallopt(M_MMAP_MAX, 0), "
                           "mallopt(M_TRIM_THRESHOLD, 1 GiB) in every child (emnist_jax.runtime.tune_malloc)"},
        "mflop_per_image": {"train": TRAIN_MFLOP, "eval": FORWARD_MFLOP},
        "matmul_peak_gflops": peaks,
        "seconds_per_variant": args.seconds,
        "children": children,
        "rows": rows,
        "interleaved": rounds,
        "interleaved_medians": interleaved_medians(rounds),
        "notes": notes,
    }
    write_atomic(os.path.join(args.out, "cpu.json"), (json.dumps(report, indent=1) + "\n").encode())
    text = markdown(report)
    write_atomic(os.path.join(args.out, "cpu.md"), text.encode())
    chart(report, os.path.join(args.out, "cpu.png"))
    print(text)


if __name__ == "__main__":
    main()
