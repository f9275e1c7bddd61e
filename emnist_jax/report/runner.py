"""One report run: load the data, run (or reuse) each stage, write the report, swap it in.

Exit codes: 0 ok, 1 a stage failed (the others still ran; the report says which failed),
2 bad input (data, ``--out``, ``--resume`` state), 130 interrupted (Ctrl-C, SIGTERM or SIGHUP: the
partial output is removed, finished stages stay stored for ``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from emnist_jax.profiles import Profile
from emnist_jax.report.usage import usage
from emnist_jax.runtime import stop_signals_as_interrupt

if TYPE_CHECKING:
    from emnist_jax.data import Dataset
    from emnist_jax.report.output import Staging
    from emnist_jax.report.stages import Inputs
    from emnist_jax.report.store import StageResult, Store

STAGE_NAMES = ("data", "mi", "rf", "pca", "logreg", "cnn")
#: metrics.json keys that hold measurements (wall clock, CPU, memory); everything else is equal
#: between an uninterrupted run and a resumed one
TIMING_KEYS = ("seconds", "total_seconds", "jax_seconds", "eval_seconds", "compile_seconds", "images_per_second",
               "cpu_seconds", "peak_memory_bytes")


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asked for (validated)."""

    data: str
    split: str | None
    profile: Profile
    out: str | None
    only: tuple[str, ...]
    resume: bool
    command: str


class Log:
    """Lines on stdout prefixed with the seconds since the start."""

    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {message}", flush=True)


def default_out(source: str, split: str, profile: str) -> Path:
    name = "default" if source == "default" else Path(source).name.replace(".", "-")
    return Path("reports") / f"{name}-{split}-{profile}"


def _say(message: str) -> None:
    """A line on stderr, if there still is one: after SIGHUP the terminal may be gone (EIO)."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        with contextlib.suppress(OSError):  # nothing left to flush at exit, which would fail again
            sys.stderr = open(os.devnull, "w")


def _error(message: str) -> int:
    _say(f"error: {message}")
    return 2


@contextlib.contextmanager
def _library_log_held(held: list):
    """Hold the libraries' log records in ``held`` during a stage.

    A library that fails inside a stage may log its own tracebacks first (orbax logs one per
    thread when a checkpoint cannot be written). When the stage raises, they stay in ``held`` for
    its traceback file, under the one line that says it failed; otherwise they are printed as usual.
    """
    root = logging.getLogger()

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    handlers, root.handlers = root.handlers, [Hold()]
    failed = False
    try:
        yield
    except Exception:
        failed = True
        raise
    finally:
        root.handlers = handlers
        if not failed:
            for record in held:
                root.handle(record)
            held.clear()


def _failed(stage: str, error: Exception, status: dict, staging, held: list | None = None) -> None:
    status[stage] = f"failed: {type(error).__name__}: {error}".splitlines()[0]
    if staging:
        text = traceback.format_exc()
        if held:
            formatter = logging.Formatter("%(levelname)s:%(name)s:%(message)s")
            text += "\nThe libraries' log during the stage:\n" + "\n".join(formatter.format(r) for r in held) + "\n"
        (staging.folder / f"{stage}-error.txt").write_text(text)
    _say(f"           {stage} FAILED: {status[stage][8:]} (traceback in {stage}-error.txt)")


@dataclasses.dataclass
class _Job:
    """One run as it goes: what it was asked, where it writes, and what each stage gave."""

    options: Options
    log: Log
    writer: bool                      # process 0 writes the report; the others only compute
    current: str = "loading the data"  # what an interrupt interrupts
    dataset: Dataset | None = None
    target: Path | None = None
    key: dict | None = None
    state_folder: Path | None = None
    state: Store | None = None        # process 0
    staging: Staging | None = None    # process 0
    inputs: Inputs | None = None
    status: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)
    cpu_seconds: dict = dataclasses.field(default_factory=dict)
    sections: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    resumed: list = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [s for s, v in self.status.items() if v.startswith("failed")]


def run(options: Options) -> int:
    with stop_signals_as_interrupt():
        return _run(options)


def _run(options: Options) -> int:
    import jax

    from emnist_jax.data import EmnistDataError
    from emnist_jax.report import output, store

    job = _Job(options, Log(), writer=jax.process_index() == 0)
    try:
        try:
            _prepare(job)
        except (EmnistDataError, output.OutputError, store.StateError) as error:
            return _error(str(error))
        _state_folder_ready()
        _announce(job)
        for stage in STAGE_NAMES:
            _stage(job, stage)
        job.current = "writing the report"
        if not job.writer:
            return 1 if job.failed else 0
        if _write_report(job):
            _say(f"interrupted while writing; the report is complete in {job.target}")
            return 130
    except KeyboardInterrupt as interrupt:
        return _interrupted(job, interrupt)
    except output.OutputError as error:
        return _error(f"{error}; the finished stages are stored: rerun with --resume once --out is free")
    except OSError as error:
        where = getattr(error, "filename", None) or options.out
        return _error(f"cannot write the report: {error.strerror or error} ({where})")
    finally:
        if job.staging:
            job.staging.discard()  # nothing left once committed
        if job.state:
            job.state.release()
    job.log(f"wrote {job.target}/index.html" + (f"; FAILED stages: {', '.join(job.failed)}" if job.failed else ""))
    return 1 if job.failed else 0


def _prepare(job: _Job) -> None:
    """Load the data, check ``--out``, and (process 0) open the stored state and the staging folder."""
    from emnist_jax.data import load
    from emnist_jax.report import output, store
    from emnist_jax.report.stages import Inputs

    options, log = job.options, job.log
    if options.out is not None:
        output.check_target(options.out)  # before minutes of loading
    log(f"loading {options.data} ...")
    job.dataset = load(options.data, options.split)
    job.target = output.check_target(options.out or default_out(options.data, job.dataset.split,
                                                                options.profile.name))
    job.current = "setup"
    job.key = store.run_key(store.fingerprint(job.dataset), options.profile)
    job.state_folder = job.target.parent / f".{job.target.name}.state"
    if job.writer:
        output.clean_stale(job.target.parent, log)
        job.state = store.Store(job.state_folder, job.key, options.resume, log)
        job.staging = output.Staging(job.target)
    job.inputs = Inputs(job.dataset, options.profile, cnn_workdir=job.state_folder / "cnn", resume=options.resume,
                        on_epoch=lambda e: log(f"cnn {e}"))


def _state_folder_ready() -> None:
    """Process 0 has set up (or cleared) the state folder that holds the CNN's shared checkpoints;
    in a multi-process run nobody may touch it before that."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("emnist_jax.report: state folder ready")


def _announce(job: _Job) -> None:
    import jax

    d, profile = job.dataset, job.options.profile
    kind = "SYNTHETIC embedded default" if d.synthetic else "EMNIST"
    job.log(f"{kind} {d.split}: {len(d.train_labels):,} train, {len(d.test_labels):,} test; "
            f"profile {profile.name}, seed {profile.classic.seed}; "
            + (f"writing {job.target}" if job.writer else f"process {jax.process_index()} of {jax.process_count()}: "
               "runs every stage beside process 0 (the CNN together with it); process 0 writes the report"))


def _stage(job: _Job, stage: str) -> None:
    """Run (or reuse) one stage and draw its section; a failure is recorded in ``job.status``."""
    from emnist_jax.report import store

    options = job.options
    # Every process runs every stage, so all reach the CNN's collectives together instead of
    # waiting in them while process 0 runs minutes of scikit-learn; a stage that process 0
    # reuses from its store (--resume, read from the shared folder) the others skip too.
    if stage not in options.only or (not job.writer and options.resume
                                     and store.Store.finished(job.state_folder, job.key, stage)):
        job.status[stage] = "skipped"
        return
    job.current = stage
    started, cpu_started = time.perf_counter(), usage()[0]
    result = _stored(job, stage)
    if result is None:
        result = _computed(job, stage, started, cpu_started)
    if result is not None:
        _draw(job, stage, result)
    else:
        job.seconds[stage] = time.perf_counter() - started
    _log_stage(job, stage, started, cpu_started)


def _stored(job: _Job, stage: str) -> StageResult | None:
    """The stage's result stored by an earlier run (``--resume``), or None."""
    result = job.state.load(stage, job.log) if (job.state and job.options.resume) else None
    if result is not None:
        job.resumed.append(stage)
        job.log(f"{stage}: stored result of an earlier run ({result.seconds:.1f} s then)")
    return result


def _computed(job: _Job, stage: str, started: float, cpu_started: float) -> StageResult | None:
    """The stage's result, computed and stored; None when it failed (recorded in ``job.status``)."""
    from emnist_jax.report import store
    from emnist_jax.report.stages import STAGES, describe

    job.log(f"{stage}: {describe(stage, job.inputs)}")
    held: list = []
    try:
        with _library_log_held(held):
            result = STAGES[stage](job.inputs)
        result.metrics = store.jsonable(result.metrics)  # as a resumed run reads it back
    except Exception as error:  # a failed stage is reported; the others still run
        _failed(stage, error, job.status, job.staging, held)
        job.cpu_seconds[stage] = usage()[0] - cpu_started
        return None
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = usage()[0] - cpu_started
    if job.state:
        job.state.save(stage, result)  # an OSError here (a full disk) ends the run: exit 2
    return result


def _draw(job: _Job, stage: str, result: StageResult) -> None:
    """Take the stage's metrics and (process 0) draw its section; its seconds count the work and its figures."""
    from emnist_jax.report.sections import SECTIONS

    job.metrics.update(result.metrics)
    drawn, cpu_drawn = time.perf_counter(), usage()[0]
    try:
        if job.writer:
            job.sections[stage] = SECTIONS[stage](result, job.inputs, job.staging.folder)
        job.status[stage] = "ok"
    except OSError:
        raise  # cannot write the figures: ends the run, exit 2
    except Exception as error:
        _failed(stage, error, job.status, job.staging)
    job.seconds[stage] = result.seconds + time.perf_counter() - drawn
    job.cpu_seconds[stage] = (None if result.cpu_seconds is None  # stored by a version without it
                              else result.cpu_seconds + usage()[0] - cpu_drawn)


def _log_stage(job: _Job, stage: str, started: float, cpu_started: float) -> None:
    cpu, peak = usage()
    wall = time.perf_counter() - started
    cores = (cpu - cpu_started) / max(wall, 1e-9)
    job.log(f"{stage} {job.status[stage].split(':')[0]} in {wall:.1f} s"
            + (f" (stored result; it took {job.seconds[stage]:.1f} s)" if stage in job.resumed else
               f" (CPU {cpu - cpu_started:,.0f} s: {cores:.1f} cores busy; peak memory so far "
               f"{peak / 2**30:.2f} GiB)" if peak else ""))


def _write_report(job: _Job) -> bool:
    """Write the figures, metrics.json and the documents, then swap the report in; True when a signal
    came meanwhile (held until the report was complete)."""
    from emnist_jax import plots
    from emnist_jax.cnn.interrupts import DeferredSignals
    from emnist_jax.report.comparison import comparison
    from emnist_jax.report.writers import write_documents, write_metrics

    folder = job.staging.folder
    plots.save(plots.stage_times(job.seconds, job.status), folder / "timings.png")
    metrics = _metrics_json(job)
    write_metrics(folder, metrics)
    failed_sections = [{"id": s, "title": s, "status": job.status[s], "text": [], "tables": [], "figures": []}
                       for s in STAGE_NAMES if s not in job.sections and job.status[s].startswith("failed")]
    write_documents(folder, {
        "metrics": metrics, "status": job.status, "seconds": job.seconds, "command": job.options.command,
        "profile": job.options.profile.name, "split": job.dataset.split, "synthetic": job.dataset.synthetic,
        "sections": [dict(job.sections[s], id=s, status=job.status[s]) for s in STAGE_NAMES if s in job.sections]
        + failed_sections, "comparison": comparison(metrics)})
    with DeferredSignals() as signals, signals.critical():
        job.staging.commit()
        job.state.remove()
    return signals.received is not None


def _metrics_json(job: _Job) -> dict:
    from emnist_jax.report import store
    from emnist_jax.report.writers import environment

    d, profile = job.dataset, job.options.profile
    return store.jsonable({
        "schema_version": 1, "command": job.options.command, "profile": profile.name, "seed": profile.classic.seed,
        "stages": job.status, "seconds": job.seconds, "total_seconds": time.perf_counter() - job.log.started,
        "cpu_seconds": job.cpu_seconds, "peak_memory_bytes": usage()[1],
        "resumed_stages": job.resumed,
        "dataset": {"source": d.source, "split": d.split, "synthetic": d.synthetic, "n_train": len(d.train_labels),
                    "n_test": len(d.test_labels), "n_classes": d.n_classes, "classes": list(d.classes)},
        "environment": environment(), **job.metrics})


def _interrupted(job: _Job, interrupt: KeyboardInterrupt) -> int:
    where = f"stage {job.current}" if job.current in STAGE_NAMES else job.current
    if getattr(interrupt, "checkpoint", None):  # the CNN stopped at a checkpoint (TrainingInterrupted)
        where += f" (CNN epoch {interrupt.epoch}, step {interrupt.step}, checkpoint saved)"
    hint = "; rerun with --resume to continue" if job.state else "; nothing was written"
    _say(f"interrupted during {where}{hint}")
    return 130
