"""The CNN's evaluation, side by side in one process: one batch at a time fed from the host
against :func:`emnist_jax.cnn.train.evaluate` (images placed once, one compiled loop).

    python benchmarks/eval_loop.py [--images 40000] [--rounds 3]

Untrained parameters of the backend's default configuration on random images: speed only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024, help="images per batch (both paths)")
    args = parser.parse_args()

    import jax

    from emnist_jax.cnn.config import TrainConfig
    from emnist_jax.cnn.placement import make_mesh, replicate
    from emnist_jax.cnn.programs import eval_batch
    from emnist_jax.cnn.steps import create_state
    from emnist_jax.cnn.train import evaluate
    from emnist_jax.data.formats import aligned_empty

    config = TrainConfig().resolved()
    state, mesh, n, batch = create_state(config, 62, 0), make_mesh(), args.images, args.batch
    rng = np.random.default_rng(0)
    images = aligned_empty((n, 28, 28), np.uint8)
    images[...] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    labels = rng.integers(0, 62, n)

    def batch_at_a_time() -> None:   # the whole batches only: the comparison favours this path slightly
        mask, out = replicate(np.ones(batch, np.float32), mesh), []
        for start in range(0, n - n % batch, batch):
            x, y = images[start:start + batch], labels[start:start + batch].astype(np.int32)
            out.append(eval_batch(state.params, replicate(x, mesh), replicate(y, mesh), mask,
                                  apply_fn=state.apply_fn, mesh=mesh)[1])
        jax.block_until_ready(out)

    def one_loop() -> None:
        evaluate(state, images, labels, tuple(map(str, range(62))), batch_size=batch, mesh=mesh)

    print(f"{config.conv_impl} on {jax.devices()[0].device_kind}, {n:,} images, batch {batch}")
    for _ in range(args.rounds):
        seconds = []
        for path in (batch_at_a_time, one_loop):
            started = time.perf_counter()
            path()
            seconds.append(time.perf_counter() - started)
        print(f"batch at a time {n / seconds[0]:,.0f} images/s   one loop {n / seconds[1]:,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
