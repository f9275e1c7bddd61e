"""Reliability of ``python -m emnist_jax.report``: one table of faults, each with the exit code, a
fragment of the one-line message, and a snapshot check that nothing that existed before changed
and nothing partial was left (tests/fault_cases.py).

Cases that reach the stages use a stand-in data stage without figures (``light_data``): the
cases are about the command's edges, and the real stages run in tests/test_report.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

from fault_cases import snapshot, unchanged_except

from emnist_jax import report
from emnist_jax.profiles import PROFILES
from emnist_jax.report import output, sections, stages, store

REPO = Path(report.__file__).resolve().parents[2]
OUT = "out"
STATE = f".{OUT}.state"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple                               # after "--data TINY --profile smoke"; "{work}" is replaced
    code: int
    message: str
    setup: Callable | None = None             # (work folder, tiny dataset) -> None
    allowed_new: tuple = ()                   # new paths that are expected (the report, the resume state)
    replaced: tuple = ()                      # pre-existing paths the run may replace (its own report)
    how: str = "main"                         # "main" (in-process), "subprocess", or a fault below
    check: Callable | None = None             # (work folder) -> None: more assertions


# ---- setups -----------------------------------------------------------------------------------------

def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def our_marker(folder: Path, **fields) -> None:
    info = {"schema": output.SCHEMA, "state": "writing", "made_by": "python -m emnist_jax.report",
            "host": socket.gethostname()}
    write(folder / output.MARKER, json.dumps({**info, **fields}))


def stale_temp(work, tiny):
    pid = dead_pid()
    folder = work / f".{OUT}.tmp-{pid}-0badc0de"
    our_marker(folder, pid=pid)
    write(folder / "samples.png", "half a figure")


def lookalike_temp(work, tiny):
    write(work / f".{OUT}.tmp-{dead_pid()}-0badc0de" / "mine.txt", "not the report's")


def live_temp(work, tiny):
    folder = work / f".{OUT}.tmp-{os.getpid()}-0badc0de"  # this process is alive
    our_marker(folder, pid=os.getpid())


def stale_old(work, tiny):
    folder = work / f".{OUT}.old-{dead_pid()}-0badc0de"
    our_marker(folder, state="complete", files=["index.html"])
    write(folder / "index.html", "the previous report")


def own_report(work, tiny):
    our_marker(work / OUT, state="complete", files=["index.html", "samples.png"])
    write(work / OUT / "index.html")
    write(work / OUT / "samples.png")


def legacy_report(work, tiny, extra: str | None = None):
    write(work / OUT / "metrics.json", json.dumps({"schema_version": 1, "command": "python -m emnist_jax.report"}))
    write(work / OUT / "index.html")
    write(work / OUT / "pca.png")
    if extra:
        write(work / OUT / extra, "the user's")


def state(work, tiny, profile=PROFILES["smoke"], data=None, edit: Callable | None = None):
    key = store.run_key(data or store.fingerprint(tiny), profile)
    if edit:
        edit(key)
    s = store.Store(work / STATE, key, resume=False, log=lambda message: None)
    s.save("data", store.StageResult({"class_counts": {"train": [1], "test": [1]}}))
    s.release()


def unwritable_parent(work, tiny):
    if os.geteuid() != 0:
        (work / "ro").mkdir()
        (work / "ro").chmod(0o555)


def unwritable_out(work) -> str:
    return "/sys/emnist_jax_report_test" if os.geteuid() == 0 else str(work / "ro" / OUT)  # root ignores modes


def state_files(*names):
    def check(work):
        assert sorted(p.name for p in (work / STATE).glob("*.json")) == sorted(["key.json", *names])
    return check


def report_made(work):
    assert json.loads((work / OUT / "metrics.json").read_text())["stages"]["data"] == "ok"
    assert not [p for p in work.iterdir() if p.name.startswith(f".{OUT}.")]  # no temporary or state folder


# ---- the table ----------------------------------------------------------------------------------------

CASES = [
    # --out: only a folder the report made itself may be replaced
    Case("out-folder-of-user-files", ("--out", OUT), 2, "is not a report made by this command",
         lambda w, t: write(w / OUT / "thesis.tex")),
    Case("out-is-a-file", ("--out", OUT), 2, "is a file", lambda w, t: write(w / OUT)),
    Case("out-dot", ("--out", "."), 2, "is the current folder", lambda w, t: write(w / "thesis.tex")),
    Case("out-symlink-to-elsewhere", ("--out", OUT), 2, "is a symbolic link",
         lambda w, t: (write(w / "elsewhere" / "data.csv"), os.symlink(w / "elsewhere", w / OUT))),
    Case("out-empty-folder", ("--out", OUT), 2, "an empty folder", lambda w, t: (w / OUT).mkdir()),
    Case("out-a-repository-root", ("--out", OUT), 2, "is not a report made by this command",
         lambda w, t: (write(w / OUT / "pyproject.toml"), (w / OUT / ".git").mkdir())),
    Case("out-this-repository", ("--out", str(REPO)), 2, "is not a report made by this command",
         check=lambda w: not list(REPO.parent.glob(f".{REPO.name}.*"))),
    Case("out-report-plus-user-file", ("--out", OUT), 2, "holds 'notes.txt', which the report did not write",
         lambda w, t: (own_report(w, t), write(w / OUT / "notes.txt"))),
    Case("out-legacy-report-plus-user-file", ("--out", OUT), 2, "holds 'thesis.tex'",
         lambda w, t: legacy_report(w, t, extra="thesis.tex")),
    Case("out-unfinished-marker", ("--out", OUT), 2, "not a finished report's marker",
         lambda w, t: our_marker(w / OUT)),
    Case("out-parent-is-a-file", ("--out", "afile/out"), 2, "is not a folder", lambda w, t: write(w / "afile")),
    Case("out-empty-string", ("--out", ""), 2, "--out is empty"),
    Case("out-parent-unwritable", ("--out", "{unwritable}"), 2, "cannot write", unwritable_parent),
    Case("out-disk-full", ("--out", OUT, "--only", "data"), 2, "cannot write the report: File too large",
         allowed_new=(STATE,), how="disk-full", check=state_files("data.json")),
    # --out that the report made itself is replaced
    Case("out-own-report-replaced", ("--out", OUT, "--only", "data"), 0, "wrote", own_report,
         allowed_new=(OUT,), replaced=(OUT,), check=report_made),
    Case("out-legacy-report-replaced", ("--out", OUT, "--only", "data"), 0, "wrote", legacy_report,
         allowed_new=(OUT,), replaced=(OUT,), check=report_made),
    # other arguments: one line, exit 2, before any stage runs
    Case("only-unknown-stage", ("--out", OUT, "--only", "mi,bogus"), 2, "--only: unknown stage(s) bogus"),
    Case("only-empty", ("--out", OUT, "--only", ","), 2, "--only: unknown stage(s) (none given)"),
    Case("seed-negative", ("--out", OUT, "--seed", "-1"), 2, "--seed -1: must lie in 0..4294967295"),
    Case("seed-2**32", ("--out", OUT, "--seed", str(2**32)), 2, "--seed 4294967296: must lie in"),
    Case("seed-not-an-integer", ("--out", OUT, "--seed", "1.5"), 2, "invalid int value: '1.5'"),
    Case("profile-unknown", ("--out", OUT, "--profile", "huge"), 2, "invalid choice: 'huge'"),
    Case("data-missing", ("--out", OUT, "--data", "no/such/emnist-byclass.mat"), 2, "file not found"),
    Case("data-not-a-mat-file", ("--out", OUT, "--data", "emnist-byclass.mat"), 2, "not a readable MATLAB file",
         lambda w, t: write(w / "emnist-byclass.mat", "garbage")),
    Case("split-unknown", ("--out", OUT, "--data", "default", "--split", "nope"), 2, "nope"),
    Case("device-unavailable", ("--out", OUT, "--device", "tpu"), 2, "--device tpu: no tpu is available",
         how="subprocess"),
    # interrupts: exit 130, one line, no output folder, the finished stages stored for --resume
    Case("sigint-in-a-stage", ("--out", OUT, "--only", "data,mi"), 130,
         "interrupted during stage mi; rerun with --resume to continue", allowed_new=(STATE,), how="SIGINT",
         check=state_files("data.json")),
    Case("sigterm-in-a-stage", ("--out", OUT, "--only", "data,mi"), 130,
         "interrupted during stage mi; rerun with --resume to continue", allowed_new=(STATE,), how="SIGTERM",
         check=state_files("data.json")),
    Case("sigterm-while-the-report-is-swapped-in", ("--out", OUT, "--only", "data"), 130,
         "interrupted while writing; the report is complete in", allowed_new=(OUT,), how="SIGTERM-in-commit",
         check=report_made),
    Case("sigkill-then-rerun", ("--out", OUT, "--only", "data"), 0, "left by an earlier run", allowed_new=(OUT,),
         how="SIGKILL", check=report_made),
    # hidden folders of earlier runs
    Case("stale-temp-of-a-dead-run-removed", ("--out", OUT, "--only", "data"), 0, "left by an earlier run (pid",
         stale_temp, allowed_new=(OUT,), replaced=(f".{OUT}.tmp-",), check=report_made),
    Case("lookalike-temp-without-marker-kept", ("--out", OUT, "--only", "data"), 0, "wrote", lookalike_temp,
         allowed_new=(OUT,)),
    Case("temp-of-a-live-run-kept", ("--out", OUT, "--only", "data"), 0, "wrote", live_temp, allowed_new=(OUT,)),
    Case("report-caught-mid-swap-put-back", ("--out", OUT, "--only", "data"), 0, "put back", stale_old,
         allowed_new=(OUT,), replaced=(f".{OUT}.old-",), check=report_made),
    # --resume: the stored results are reused only for the same inputs
    Case("resume-other-seed", ("--out", OUT, "--seed", "1", "--resume"), 2,
         "--resume: the stored results were made with different inputs (profile.classic.seed 0 -> 1",
         state, check=state_files("data.json")),
    Case("resume-other-profile", ("--out", OUT, "--profile", "quick", "--resume"), 2, "profile.name 'smoke' -> 'quick'",
         state, check=state_files("data.json")),
    Case("resume-other-data", ("--out", OUT, "--resume"), 2, "(data '0123", lambda w, t: state(w, t, data="0123"),
         check=state_files("data.json")),
    Case("resume-other-package-version", ("--out", OUT, "--resume"), 2, "package_version '0.0.0' ->",
         lambda w, t: state(w, t, edit=lambda key: key.update(package_version="0.0.0")),
         check=state_files("data.json")),
    Case("resume-same-inputs-reuses", ("--out", OUT, "--only", "data", "--resume"), 0,
         "--resume: reusing data", state, allowed_new=(OUT,), replaced=(STATE,),
         check=lambda w: json.loads((w / OUT / "metrics.json").read_text())["resumed_stages"] == ["data"]),
    Case("resume-without-state-starts-fresh", ("--out", OUT, "--only", "data", "--resume"), 0,
         "--resume: no stored results for this --out; starting fresh", allowed_new=(OUT,), check=report_made),
    Case("rerun-without-resume-starts-fresh", ("--out", OUT, "--only", "data"), 0,
         "starting fresh: discarding the stored results of an interrupted earlier run (data)", state,
         allowed_new=(OUT,), replaced=(STATE,), check=report_made),
    Case("state-folder-not-ours", ("--out", OUT), 2, "was not made by this command",
         lambda w, t: write(w / STATE / "notes.txt")),
    Case("another-report-on-the-same-out", ("--out", OUT), 2, "another report (pid", state, how="locked"),
]


# ---- running a case -------------------------------------------------------------------------------------

@pytest.fixture
def light_data(monkeypatch):
    """A data stage that draws no figures: the cases are about the command's edges."""
    def data(inputs):
        return store.StageResult({"class_counts": {"train": [1], "test": [1]}})

    def section(result, inputs, folder):
        return {"title": "Data", "text": ["stand-in"], "tables": [], "figures": []}

    monkeypatch.setitem(stages.STAGES, "data", data)
    monkeypatch.setitem(sections.SECTIONS, "data", section)
    monkeypatch.setattr(stages, "describe", lambda stage, inputs: "stand-in")


def in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = report.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


KILL_IN_DATA = textwrap.dedent("""
    import os, signal, sys
    from emnist_jax.report import cli, stages
    stages.STAGES["data"] = lambda inputs: os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(cli.main(sys.argv[1:]))
""")


def signal_in_mi(signum: int):
    def stage(inputs):
        os.kill(os.getpid(), signum)
        time.sleep(30)  # the signal arrives before this ends
        raise AssertionError("no signal arrived")
    return stage


def run_case(case: Case, argv: list[str], work: Path, capsys, monkeypatch) -> tuple[int, str]:
    if case.how == "subprocess":
        done = subprocess.run([sys.executable, "-m", "emnist_jax.report", *argv], capture_output=True, text=True,
                              cwd=work, timeout=120)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.returncode, done.stdout + done.stderr
    if case.how == "SIGKILL":
        killed = subprocess.run([sys.executable, "-c", KILL_IN_DATA, *argv], capture_output=True, text=True,
                                cwd=work, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert list(work.glob(f".{OUT}.tmp-*")) and not (work / OUT).exists()  # what a SIGKILL leaves ...
        return in_process(argv, capsys)                                       # ... the next run removes
    if case.how == "SIGTERM-in-commit":
        commit = output.Staging.commit

        def interrupted_commit(self):
            os.kill(os.getpid(), signal.SIGTERM)  # held until the swap is done
            commit(self)

        monkeypatch.setattr(output.Staging, "commit", interrupted_commit)
        return in_process(argv, capsys)
    if case.how in ("SIGINT", "SIGTERM"):
        monkeypatch.setitem(stages.STAGES, "mi", signal_in_mi(getattr(signal, case.how)))
        return in_process(argv, capsys)
    if case.how == "locked":
        with open(work / STATE / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return in_process(argv, capsys)
    if case.how == "disk-full":
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, limits[1]))  # figures are larger than this
        try:
            return in_process(argv, capsys)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, previous)
    return in_process(argv, capsys)


def without(tree: dict, prefixes: tuple) -> dict:
    return {p: v for p, v in tree.items() if not p.startswith(prefixes)} if prefixes else tree


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_report_fault(case, tiny_dataset, tmp_path, monkeypatch, capsys, light_data):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    from emnist_jax.data import load

    load(tiny_dataset.source)  # fill this test's private cache before any fault (the disk-full case)
    if case.setup:
        case.setup(work, tiny_dataset)
    before = snapshot(work)
    argv = ["--data", tiny_dataset.source, "--profile", "smoke",
            *(a.replace("{unwritable}", unwritable_out(work)) for a in case.args)]
    code, text = run_case(case, argv, work, capsys, monkeypatch)
    assert code == case.code, text
    assert case.message in text, text
    assert "Traceback" not in text
    if code != 0:
        assert len([line for line in text.splitlines() if "error:" in line or line.startswith("interrupted")]) == 1, text
    problems = unchanged_except(without(before, case.replaced), without(snapshot(work), case.replaced),
                                case.allowed_new)
    assert not problems, problems
    if case.check:
        assert case.check(work) is not False


def test_the_table_is_large_enough():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
