"""Train the original study's CNN on an EMNIST split and print its accuracy.

Prints one line per epoch (loss, accuracy, seconds, images/s), then the hold-out and
official-test accuracy. Options left out keep the study's recipe (emnist_jax.cnn.config);
convolution form, steps per call and loop are chosen per backend unless given.

With --workdir a checkpoint is written after every epoch and when Ctrl-C, SIGTERM or SIGHUP (a
closed terminal) stops the run; --resume continues from it to the same final parameters as an
uninterrupted run, and refuses a checkpoint of another run (other seed, batch size, protocol,
data, ...). One run at a time trains in a workdir: a second one is refused while the first runs.
Several processes form one data-parallel run when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID are set (EMNIST_JAX_COORDINATOR_TIMEOUT: seconds to wait for them, default 300).

exit codes: 0 ok, 2 bad input, data, device or workdir (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import warnings

from emnist_jax.cnn.config import ConfigError, TrainConfig
from emnist_jax.runtime import stop_signals_as_interrupt


def _option_type(field: dataclasses.Field) -> type:
    """int, float or str: what the command line parses a field's value as (``int | None`` is int)."""
    annotation = str(field.type)
    return next(kind for kind in (int, float, str) if kind.__name__ in annotation)


#: Every TrainConfig field is an option, with the field's own help; defaults are read from TrainConfig.
CONFIG_FIELDS = tuple(dataclasses.fields(TrainConfig))


def build_parser() -> argparse.ArgumentParser:
    lines = __doc__.strip().splitlines()
    parser = argparse.ArgumentParser(prog="python -m emnist_jax.cnn", description="\n".join(lines[:-1]).strip(),
                                     epilog=lines[-1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="default", metavar="SRC",
                        help="data source as emnist_jax.data.load takes it: a .mat file, a folder of IDX files, "
                             "or 'default' (the embedded synthetic set) (default: default)")
    parser.add_argument("--split", default=None, help="EMNIST split (default: from the file name, else byclass)")
    for field in CONFIG_FIELDS:
        shown = "per backend, see emnist_jax.cnn.config" if field.default in (None, "auto") else field.default
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=_option_type(field),
                            default=None, metavar=field.metadata["metavar"], choices=field.metadata["choices"],
                            help=f"{field.metadata['help']} (default: {shown})")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="folder for checkpoints (DIR/checkpoints): after every epoch and on Ctrl-C/SIGTERM/SIGHUP")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest intact checkpoint in --workdir (a fresh start if it has none)")
    parser.add_argument("--device", choices=["cpu", "gpu", "tpu"], default=None,
                        help="platform to run on; gpu is whichever GPU platform JAX has (default: JAX's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="compile without JAX's persistent cache (default: on, in ~/.cache/emnist_jax/jax or "
                             "$EMNIST_JAX_COMPILATION_CACHE; 0 there turns it off too)")
    return parser


def config_from(args: argparse.Namespace, base: TrainConfig = TrainConfig()) -> TrainConfig:
    """``base`` with the fields the command line set; raises ConfigError."""
    return dataclasses.replace(base, **{f.name: getattr(args, f.name) for f in CONFIG_FIELDS
                                        if getattr(args, f.name) is not None})


#: What a run needs before its data, in KiB as ``ulimit`` counts them: (the ulimit option, base, per
#: CPU core the process may run on). The smallest limits at which a 1-epoch run on 150 images worked
#: on the 2-core development machine: ``ulimit -v`` 1,450,000 on one core (``taskset -c 0``; 1,400,000
#: failed) and 1,740,000 on two (1,725,000 aborted); ``ulimit -d`` 460,000 and 550,000 (420,000 and
#: 520,000 failed). Below them JAX's CPU runtime aborts (std::bad_alloc, "LLVM ERROR: pthread_create
#: failed") or hangs. Only one and two cores were measured; the per-core part is extrapolated above.
MEMORY_NEEDS = {"RLIMIT_AS": ("ulimit -v", 1_160_000, 290_000), "RLIMIT_DATA": ("ulimit -d", 370_000, 90_000)}
#: The boundary moved from run to run by about a percent: a run is asked for a little more.
MEMORY_MARGIN = 1.05


def memory_problem(limits: dict[str, int | None], cores: int, data_bytes: int = 0) -> str | None:
    """The one line refusing a run whose soft memory ``limits`` (bytes; None: unlimited), by
    resource name, are below what it needs on ``cores`` cores with ``data_bytes`` of data; else None."""
    for name, limit in limits.items():
        option, base, per_core = MEMORY_NEEDS[name]
        need = int((base + per_core * cores) * 1024 * MEMORY_MARGIN) + data_bytes
        if limit is not None and limit < need:
            return (f"the memory limit {name} ({option}) allows {limit / 2**30:.2f} GiB, and this run needs about "
                    f"{need / 2**30:.2f} GiB (JAX's CPU runtime on {cores} core(s), and "
                    f"{data_bytes / 2**30:.2f} GiB of data); raise it ({option} {-(-need // 1024)} or more) "
                    "or run on fewer cores (taskset)")
    return None


def memory_shortfall(data_bytes: int = 0) -> str | None:
    """:func:`memory_problem` for this process's limits and cores (Unix; elsewhere None)."""
    try:
        import resource
    except ImportError:
        return None
    limits = {}
    for name in MEMORY_NEEDS:
        soft = resource.getrlimit(getattr(resource, name))[0]
        limits[name] = None if soft == resource.RLIM_INFINITY else soft
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return memory_problem(limits, cores, data_bytes)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted_line(stop, argv: list[str], workdir: str | None) -> str:
    """The one line after an interrupt: where the run stopped (``stop``: a TrainingInterrupted, or
    None before training started) and how to continue it."""
    if stop is None:
        where = "interrupted before training started"
    else:
        where = f"interrupted{' during evaluation' if stop.during == 'evaluation' else ''} at epoch {stop.epoch}, " \
                f"step {stop.step}{'' if stop.checkpoint or not workdir else ' (nothing to save yet)'}"
    if not workdir:
        return f"{where}; nothing saved (no --workdir)"
    command = ["python", "-m", "emnist_jax.cnn", *argv] + ([] if "--resume" in argv else ["--resume"])
    return f"{where}; resume with: {shlex.join(command)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or argparse's own usage error (2)
        return int(done.code or 0)
    if args.workdir == "":
        return _fail("--workdir '' names no folder; give a folder, or leave --workdir out")
    if args.resume and not args.workdir:
        return _fail("--resume needs --workdir (the folder holding the checkpoints)")
    try:
        config = config_from(args)
    except ConfigError as error:
        return _fail(f"--{error.field.replace('_', '-')} {error.problem}")
    try:
        with stop_signals_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            return _run(args, argv, config)
    except KeyboardInterrupt as stop:
        from emnist_jax.cnn.interrupts import TrainingInterrupted

        try:
            print(interrupted_line(stop if isinstance(stop, TrainingInterrupted) else None, argv, args.workdir),
                  file=sys.stderr)
        except OSError:  # after SIGHUP the terminal may be gone: the checkpoint is what matters
            pass
        return 130


def _run(args: argparse.Namespace, argv: list[str], config: TrainConfig) -> int:
    from emnist_jax import devices

    shortfall = memory_shortfall()  # before JAX starts: below it, JAX's runtime aborts or hangs
    if shortfall:
        return _fail(shortfall)
    try:  # before anything touches a JAX backend; applies the process settings (emnist_jax.runtime)
        devices.setup(args.device, compilation_cache=not args.no_compilation_cache)
    except devices.DeviceError as error:
        return _fail(str(error))

    import jax

    from emnist_jax.cnn.train import train_and_evaluate
    from emnist_jax.data import EmnistDataError, load

    try:
        dataset = load(args.data, args.split)
        shortfall = memory_shortfall(data_bytes=sum(getattr(dataset, f"{part}_{kind}").nbytes
                                                    for part in ("train", "test") for kind in ("images", "labels")))
        if shortfall:
            return _fail(shortfall)
        main_process = jax.process_index() == 0
        result = train_and_evaluate(dataset, config, workdir=args.workdir, resume=args.resume,
                                    progress=not args.no_progress and main_process,
                                    on_epoch=lambda e: main_process and print(e, flush=True))
    except (EmnistDataError, ValueError) as error:  # ConfigError and CheckpointError are ValueErrors
        return _fail(str(error))
    except (MemoryError, jax.errors.JaxRuntimeError) as error:
        if not isinstance(error, MemoryError) and "RESOURCE_EXHAUSTED" not in str(error):
            raise
        return _fail(f"out of memory ({str(error).strip().splitlines()[0] if str(error).strip() else 'MemoryError'}); "
                     "raise the memory limit, or use a smaller --batch-size or --eval-batch-size")
    if not main_process:
        return 0
    c = result.config
    print(f"{'SYNTHETIC ' if dataset.synthetic else ''}{dataset.split}: {result.n_train:,} training images, "
          f"{result.n_params:,} parameters, {result.backend} x {result.devices} device(s) in {result.processes} "
          f"process(es), conv={c.conv_impl}, {c.steps_per_call} steps per call ({c.loop}), "
          f"compiled in {result.compile_seconds:.1f} s")
    if result.resumed_from:
        print(f"resumed from epoch {result.resumed_from.epoch}, step {result.resumed_from.step}")
    for name, evaluation in result.evaluations.items():
        print(f"{name:8s} accuracy {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}  ({evaluation.n:,} images)")
    print("config: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(c).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
