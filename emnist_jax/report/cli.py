"""The command line of ``python -m emnist_jax.report``: parse, validate, then :func:`runner.run`.

Nothing heavy is imported before the arguments are checked, so ``--help`` and bad arguments
answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

from emnist_jax.profiles import PROFILES
from emnist_jax.report.runner import STAGE_NAMES, Options

SEED_LIMIT = 2**32  # numpy's and sklearn's seeds are 32-bit


def parser() -> argparse.ArgumentParser:
    profiles = "; ".join(f"{name}: {p.summary}" for name, p in PROFILES.items())
    p = argparse.ArgumentParser(
        prog="python -m emnist_jax.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the EMNIST study and write a report (figures, index.html, report.md, metrics.json).",
        epilog="Stages: data (samples, class balance), mi (mutual information, JAX vs sklearn), rf (RandomForest "
               "vs top-k MI pixels), pca (PCA + logistic regression / RandomForest), logreg (one-vs-rest logistic "
               "regression in JAX vs sklearn), cnn (the study's CNN in Flax).\n"
               "Exit codes: 0 ok, 1 a stage failed, 2 bad arguments, data, --out or --resume state, 130 "
               "interrupted (finished stages are kept for --resume).\n"
               "--out is replaced only when it is a report folder this command made.")
    p.add_argument("--data", default="default",
                   help="'default' (embedded synthetic set), emnist-<split>.mat, a folder of IDX files, "
                        "matlab.zip or gzip.zip (default: %(default)s)")
    p.add_argument("--split", default=None, help="EMNIST split (default: from the .mat name, else byclass)")
    p.add_argument("--profile", default="quick", choices=list(PROFILES), help=f"{profiles} (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<data>-<split>-<profile>)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of every split, forest and network, 0..2**32-1 (default: the profile's)")
    p.add_argument("--only", default=None,
                   help=f"comma-separated stages to run, from {','.join(STAGE_NAMES)} (default: all)")
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"], default=None,
                   help="JAX platform (default: JAX's choice: an accelerator if one is present)")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="compile without JAX's persistent cache (default: on, in ~/.cache/emnist_jax/jax or "
                        "$EMNIST_JAX_COMPILATION_CACHE; 0 there turns it off too)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the stages an interrupted run of the same --out finished (and the CNN's last "
                        "checkpoint), if data, profile, seed and package version are the same")
    return p


def _command(argv: list[str]) -> str:
    """The command that reproduces the report (``--resume`` changes no result, so it is left out)."""
    return " ".join(["python -m emnist_jax.report", *(a for a in argv if a != "--resume")])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2

    only = STAGE_NAMES if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in STAGE_NAMES]
    if unknown or not only:
        return fail(f"--only: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(STAGE_NAMES)}")
    profile = PROFILES[args.profile]
    if args.seed is not None:
        if not 0 <= args.seed < SEED_LIMIT:
            return fail(f"--seed {args.seed}: must lie in 0..{SEED_LIMIT - 1}")
        profile = profile.with_seed(args.seed)

    from emnist_jax import devices

    try:  # before anything touches a JAX backend
        devices.setup(args.device, compilation_cache=not args.no_compilation_cache)
    except devices.DeviceError as error:
        return fail(str(error))
    from emnist_jax.report.runner import run

    # A warning (e.g. an unusable data cache) is one line, like the errors.
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)

    return run(Options(args.data, args.split, profile, args.out, only, args.resume, _command(argv)))
