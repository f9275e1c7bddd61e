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
import signal
import sys
import time
import traceback
from pathlib import Path

from emnist_jax.profiles import Profile

STAGE_NAMES = ("data", "mi", "rf", "pca", "logreg", "cnn")
#: a closed terminal or ssh connection (SIGHUP) and ``kill`` (SIGTERM) end a run like Ctrl-C
TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
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


def usage() -> tuple[float, int]:
    """(CPU seconds of this process and of its worker processes, this process's peak resident bytes).

    The CPU seconds over a stage's wall seconds say how many cores it kept busy, so a log shows
    what more cores would buy. Workers count whether they have ended (``RUSAGE_CHILDREN``) or
    still run (joblib's reusable workers: read from ``/proc`` where there is one); (0.0, 0) where
    the ``resource`` module is missing (Windows).
    """
    try:
        import resource
    except ImportError:
        return 0.0, 0
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime + _running_workers_cpu()
    return cpu, own.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _running_workers_cpu() -> float:
    """CPU seconds of this process's descendants that have not been waited for, with those of the
    processes they have reaped themselves (Linux; else 0)."""
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        names = [name for name in os.listdir("/proc") if name.isdigit()]
    except (OSError, ValueError, AttributeError):
        return 0.0
    for name in names:
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (command)", which may hold spaces
            parent, used = int(fields[1]), sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile, or not the layout we know
        children.setdefault(parent, []).append(int(name))
        seconds[int(name)] = used / ticks
    total, todo, seen = 0.0, list(children.get(os.getpid(), [])), set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            total += seconds[pid]
            todo += children.get(pid, [])
    return total


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
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP are handled like Ctrl-C: stop, keep what is stored, exit 130."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = {s: signal.signal(s, handler) for s in TERMINATING}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP while the finished report is swapped in; yields those received."""
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, *TERMINATING)}
    for s in previous:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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


def run(options: Options) -> int:
    with _terminate_as_interrupt():
        return _run(options)


def _run(options: Options) -> int:
    import jax

    from emnist_jax.data import EmnistDataError, load
    from emnist_jax.report import output, store
    from emnist_jax.report.comparison import comparison
    from emnist_jax.report.sections import SECTIONS
    from emnist_jax.report.stages import STAGES, Inputs, describe
    from emnist_jax.report.writers import environment, write_documents, write_metrics

    log = Log()
    writer = jax.process_index() == 0
    profile = options.profile
    state = staging = None
    current = "loading the data"
    try:
        try:
            if options.out is not None:
                output.check_target(options.out)  # before minutes of loading
            log(f"loading {options.data} ...")
            dataset = load(options.data, options.split)
            target = output.check_target(options.out or default_out(options.data, dataset.split, profile.name))
            current = "setup"
            key = store.run_key(store.fingerprint(dataset), profile)
            state_folder = target.parent / f".{target.name}.state"
            if writer:
                output.clean_stale(target.parent, log)
                state = store.Store(state_folder, key, options.resume, log)
                staging = output.Staging(target)
        except (EmnistDataError, output.OutputError, store.StateError) as error:
            return _error(str(error))
        if jax.process_count() > 1:
            # Process 0 has set up (or cleared) the state folder that holds the CNN's shared
            # checkpoints; nobody may touch it before that.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("emnist_jax.report: state folder ready")
        inputs = Inputs(dataset, profile, cnn_workdir=state_folder / "cnn", resume=options.resume,
                        on_epoch=lambda e: log(f"cnn {e}"))
        kind = "SYNTHETIC embedded default" if dataset.synthetic else "EMNIST"
        log(f"{kind} {dataset.split}: {len(dataset.train_labels):,} train, {len(dataset.test_labels):,} test; "
            f"profile {profile.name}, seed {profile.classic.seed}; "
            + (f"writing {target}" if writer else f"process {jax.process_index()} of {jax.process_count()}: "
               "runs every stage beside process 0 (the CNN together with it); process 0 writes the report"))
        status, seconds, cpu_seconds, sections, metrics, resumed = {}, {}, {}, {}, {}, []
        for stage in STAGE_NAMES:
            # Every process runs every stage, so all reach the CNN's collectives together instead of
            # waiting in them while process 0 runs minutes of scikit-learn; a stage that process 0
            # reuses from its store (--resume, read from the shared folder) the others skip too.
            if stage not in options.only or (not writer and options.resume
                                             and store.Store.finished(state_folder, key, stage)):
                status[stage] = "skipped"
                continue
            current = stage
            started, cpu_started = time.perf_counter(), usage()[0]
            result = state.load(stage, log) if (state and options.resume) else None
            if result is not None:
                resumed.append(stage)
                log(f"{stage}: stored result of an earlier run ({result.seconds:.1f} s then)")
            else:
                log(f"{stage}: {describe(stage, inputs)}")
                held: list = []
                try:
                    with _library_log_held(held):
                        result = STAGES[stage](inputs)
                    result.metrics = store.jsonable(result.metrics)  # as a resumed run reads it back
                except Exception as error:  # a failed stage is reported; the others still run
                    _failed(stage, error, status, staging, held)
                    cpu_seconds[stage] = usage()[0] - cpu_started
                else:
                    result.seconds = time.perf_counter() - started
                    result.cpu_seconds = usage()[0] - cpu_started
                    if state:
                        state.save(stage, result)  # an OSError here (a full disk) ends the run: exit 2
            if stage not in status:
                metrics.update(result.metrics)
                drawn, cpu_drawn = time.perf_counter(), usage()[0]
                try:
                    if writer:
                        sections[stage] = SECTIONS[stage](result, inputs, staging.folder)
                    status[stage] = "ok"
                except OSError:
                    raise  # cannot write the figures: ends the run, exit 2
                except Exception as error:
                    _failed(stage, error, status, staging)
                seconds[stage] = result.seconds + time.perf_counter() - drawn  # the work and its figures
                cpu_seconds[stage] = (None if result.cpu_seconds is None  # stored by a version without it
                                      else result.cpu_seconds + usage()[0] - cpu_drawn)
            else:
                seconds[stage] = time.perf_counter() - started
            cpu, peak = usage()
            wall = time.perf_counter() - started
            cores = (cpu - cpu_started) / max(wall, 1e-9)
            log(f"{stage} {status[stage].split(':')[0]} in {wall:.1f} s"
                + (f" (stored result; it took {seconds[stage]:.1f} s)" if stage in resumed else
                   f" (CPU {cpu - cpu_started:,.0f} s: {cores:.1f} cores busy; peak memory so far "
                   f"{peak / 2**30:.2f} GiB)" if peak else ""))
        current = "writing the report"
        if not writer:
            return 1 if any(v.startswith("failed") for v in status.values()) else 0
        from emnist_jax import plots

        plots.save(plots.stage_times(seconds, status), staging.folder / "timings.png")
        d = dataset
        metrics = {
            "schema_version": 1, "command": options.command, "profile": profile.name, "seed": profile.classic.seed,
            "stages": status, "seconds": seconds, "total_seconds": time.perf_counter() - log.started,
            "cpu_seconds": cpu_seconds, "peak_memory_bytes": usage()[1],
            "resumed_stages": resumed,
            "dataset": {"source": d.source, "split": d.split, "synthetic": d.synthetic, "n_train": len(d.train_labels),
                        "n_test": len(d.test_labels), "n_classes": d.n_classes, "classes": list(d.classes)},
            "environment": environment(), **metrics}
        metrics = store.jsonable(metrics)
        write_metrics(staging.folder, metrics)
        failed_sections = [{"id": s, "title": s, "status": status[s], "text": [], "tables": [], "figures": []}
                           for s in STAGE_NAMES if s not in sections and status[s].startswith("failed")]
        write_documents(staging.folder, {
            "metrics": metrics, "status": status, "seconds": seconds, "command": options.command,
            "profile": profile.name, "split": d.split, "synthetic": d.synthetic,
            "sections": [dict(sections[s], id=s, status=status[s]) for s in STAGE_NAMES if s in sections]
            + failed_sections, "comparison": comparison(metrics)})
        with _signals_deferred() as pending:
            staging.commit()
            state.remove()
        if pending:
            _say(f"interrupted while writing; the report is complete in {target}")
            return 130
    except KeyboardInterrupt as interrupt:
        where = f"stage {current}" if current in STAGE_NAMES else current
        if getattr(interrupt, "checkpoint", None):  # the CNN stopped at a checkpoint (TrainingInterrupted)
            where += f" (CNN epoch {interrupt.epoch}, step {interrupt.step}, checkpoint saved)"
        hint = "; rerun with --resume to continue" if state else "; nothing was written"
        _say(f"interrupted during {where}{hint}")
        return 130
    except output.OutputError as error:
        return _error(f"{error}; the finished stages are stored: rerun with --resume once --out is free")
    except OSError as error:
        where = getattr(error, "filename", None) or options.out
        return _error(f"cannot write the report: {error.strerror or error} ({where})")
    finally:
        if staging:
            staging.discard()  # nothing left once committed
        if state:
            state.release()
    failed = [s for s, v in status.items() if v.startswith("failed")]
    log(f"wrote {target}/index.html" + (f"; FAILED stages: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
