"""Train the study's CNN alone.

    python -m emnist_jax.cnn [--data SRC] [--split S] [--protocol study|official] [--epochs N]
                             [--batch-size B] [--seed S] [--workdir DIR [--resume]] [--device cpu|gpu|tpu]

Prints per-epoch loss/accuracy and images/s, then the hold-out and official-test accuracy.
Exit codes: 0 ok, 2 bad input or data (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emnist_jax.cnn", description=__doc__.split("\n")[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="default", help="data source, as emnist_jax.data.load takes it")
    parser.add_argument("--split", default=None, help="EMNIST split (default: from the file name, else byclass)")
    parser.add_argument("--protocol", default="study", choices=["study", "official"],
                        help="study: seeded 67/33 split of the train file; official: train file vs test file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="folder for orbax checkpoints (every epoch and on Ctrl-C)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    parser.add_argument("--device", choices=["cpu", "gpu", "tpu"], default=None,
                        help="JAX platform to run on (default: JAX's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    import jax

    if args.device:
        try:
            jax.config.update("jax_platforms", args.device)
            jax.devices()
        except RuntimeError as error:
            print(f"error: --device {args.device}: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
    from emnist_jax.cnn import TrainConfig, train_and_evaluate
    from emnist_jax.data import EmnistDataError, load

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, protocol=args.protocol, seed=args.seed)
    try:
        dataset = load(args.data, args.split)
        result = train_and_evaluate(dataset, config, workdir=args.workdir, resume=args.resume,
                                    progress=not args.no_progress, on_epoch=lambda e: print(e, flush=True))
    except (EmnistDataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (f"; checkpoint saved in {args.workdir}" if args.workdir else ""), file=sys.stderr)
        return 130
    c = result.config
    print(f"{'SYNTHETIC ' if dataset.synthetic else ''}{dataset.split}: {result.n_train:,} training images, "
          f"{result.n_params:,} parameters, {result.backend} x {result.devices}, "
          f"conv={c.conv_impl}, {c.steps_per_call} steps per call")
    for name, evaluation in result.evaluations.items():
        print(f"{name:8s} accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}  ({evaluation.n:,} images)")
    print("config: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(c).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
