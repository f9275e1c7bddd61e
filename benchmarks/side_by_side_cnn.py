"""CNN throughput, JAX variants and PyTorch CPU side by side (issue: CNN).

    python benchmarks/side_by_side_cnn.py [--seconds 6] [--batches 64 256] [--no-torch]

Runs twice, in two child processes: with glibc's default malloc and with ``mallopt`` tuned
(``emnist_jax.cnn.malloc``), because that setting is process-wide. In each, every variant
trains the study's CNN on random uint8 images already on the device and reports images/s for
training (optimizer step included) and for evaluation (forward + argmax). PyTorch runs the same
network (channels_last, Adam with the same settings) in the same process as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: (convolution, steps per call, loop) of each JAX variant timed.
VARIANTS = (("xla", 1, "unroll"), ("xla", 4, "unroll"), ("slices", 1, "unroll"), ("slices", 4, "unroll"),
            ("slices", 4, "scan"))


def jax_variants(batches, seconds):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emnist_jax.cnn import TrainConfig
    from emnist_jax.cnn.train import create_state, eval_batch, make_mesh, train_calls, zero_sums

    mesh = make_mesh()
    rng = np.random.default_rng(0)
    n = 8192
    images = jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 62, n).astype(np.int32))
    rows = []
    for conv, k, loop in VARIANTS:
        for batch in batches:
            config = TrainConfig(conv_impl=conv, steps_per_call=k, loop=loop, batch_size=batch)
            state = create_state(config, 62)
            index = jnp.asarray(rng.integers(0, n, (64, k, batch)).astype(np.int32))
            start = time.perf_counter()
            state, s = train_calls(state, images, labels, index, 0, zero_sums(), mesh=mesh, loop=loop)
            jax.block_until_ready(s)
            compile_s = time.perf_counter() - start
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                state, s = train_calls(state, images, labels, index, calls % 64, s, mesh=mesh, loop=loop)
                calls += 1
                if calls % 4 == 0:
                    jax.block_until_ready(s)
            jax.block_until_ready(s)
            train_ips = calls * k * batch / (time.perf_counter() - start)
            eval_ips = None
            if k == 1:
                mask = jnp.ones(batch)
                x, y = images[:batch], labels[:batch]
                jax.block_until_ready(eval_batch(state.params, x, y, mask, apply_fn=state.apply_fn, mesh=mesh))
                evals, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / 2:
                    out = eval_batch(state.params, x, y, mask, apply_fn=state.apply_fn, mesh=mesh)
                    evals += 1
                jax.block_until_ready(out)
                eval_ips = evals * batch / (time.perf_counter() - start)
            rows.append({"impl": f"jax conv={conv} K={k} {loop}", "batch": batch, "train": train_ips,
                         "eval": eval_ips, "compile_s": compile_s})
    return rows


def torch_rows(batches, seconds):
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for batch in batches:
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(64, 128, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(), nn.Linear(2048, 128), nn.LeakyReLU(0.1), nn.Linear(128, 62),
        ).to(memory_format=torch.channels_last)
        assert sum(p.numel() for p in model.parameters()) == 362_942
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        data = torch.randint(0, 256, (8192, 1, 28, 28), dtype=torch.uint8)
        labels = torch.randint(0, 62, (8192,))
        loss_fn = nn.CrossEntropyLoss()

        def step(i):
            rows_ = torch.randint(0, 8192, (batch,))
            x = (data[rows_].float() / 255.0).contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), labels[rows_])
            loss.backward()
            optimizer.step()

        for i in range(5):
            step(i)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(steps)
            steps += 1
        train_ips = steps * batch / (time.perf_counter() - start)
        x = (data[:batch].float() / 255.0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            model(x)
            evals, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 2:
                model(x).argmax(1)
                evals += 1
        rows.append({"impl": "torch channels_last", "batch": batch, "train": train_ips,
                     "eval": evals * batch / (time.perf_counter() - start), "compile_s": None})
    return rows


def child(args) -> None:
    if args.malloc:
        from emnist_jax.cnn.malloc import tune_malloc

        tune_malloc()
    rows = []
    if not args.no_torch:
        rows += torch_rows(args.batches, args.seconds)
    rows += jax_variants(args.batches, args.seconds)
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--malloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import jax

    print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPUs")
    for malloc in (False, True):
        command = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--batches",
                   *map(str, args.batches)] + (["--malloc"] if malloc else []) + (["--no-torch"] if args.no_torch else [])
        rows = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"\nmalloc: {'tuned (mallopt)' if malloc else 'glibc default'}")
        print(f"{'variant':34s} {'batch':>5s} {'train img/s':>12s} {'eval img/s':>11s} {'compile s':>9s}  vs torch")
        torch_train = {r["batch"]: r["train"] for r in rows if r["impl"].startswith("torch")}
        for r in rows:
            ratio = r["train"] / torch_train[r["batch"]] if r["batch"] in torch_train else float("nan")
            print(f"{r['impl']:34s} {r['batch']:5d} {r['train']:12.0f} "
                  f"{r['eval'] if r['eval'] is not None else float('nan'):11.0f} "
                  f"{r['compile_s'] if r['compile_s'] is not None else float('nan'):9.2f}  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
