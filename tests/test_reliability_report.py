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
import logging
import os
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fault_cases import as_neighbour, shared_folder, snapshot, unchanged_except

from emnist_jax import report
from emnist_jax.profiles import PROFILES
from emnist_jax.report import output, sections, stages, store

REPO = Path(report.__file__).resolve().parents[2]
OUT = "out"
STATE = f".{OUT}.state"
SHARED = "shared"                             # a reports folder anyone may write (mode 1777, like /tmp)
VICTIM = "victim.txt"                         # a file of the user's that a planted link points at


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
    umask: int | None = None                  # the umask the run starts with


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


def state(work, tiny, profile=PROFILES["smoke"], data=None, edit: Callable | None = None, folder=STATE,
          result=store.StageResult({"class_counts": {"train": [1], "test": [1]}})):
    key = store.run_key(data or store.fingerprint(tiny), profile)
    if edit:
        edit(key)
    s = store.Store(work / folder, key, resume=False, log=lambda message: None)
    if result:
        s.save("data", result)
    s.release()


def damaged(name: str, content: str | None = None, link_to: str | None = None, **stored):
    """A stored state whose file ``name`` then holds ``content``, is removed (None), or is a link."""
    def setup(work, tiny):
        state(work, tiny, **stored)
        path = work / STATE / name
        path.unlink()
        if link_to is not None:
            write(work / link_to, path.name)
            path.symlink_to(work / link_to)
        elif content is not None:
            write(path, content)
    return setup


def truncated_npz(work, tiny):
    state(work, tiny, result=store.StageResult({"class_counts": {"train": [1], "test": [1]}},
                                               {"samples": np.arange(1000)}))
    npz = work / STATE / "data.npz"
    npz.write_bytes(npz.read_bytes()[:300])


def forged_stage(work, tiny):
    """data.json a link to a result the run never stored (different class counts)."""
    state(work, tiny)
    write(work / "forged.json", json.dumps({"metrics": {"class_counts": {"train": [7], "test": [7]}},
                                            "arrays": [], "seconds": 1.0, "cpu_seconds": 1.0}))
    (work / STATE / "data.json").unlink()
    (work / STATE / "data.json").symlink_to(work / "forged.json")


def cnn_checkpoints_only(work, tiny):
    state(work, tiny, result=None)
    write(work / STATE / "cnn" / "checkpoints" / "13" / "state", "a checkpoint")
    (work / STATE / "key.json").unlink()


def victim(work) -> Path:
    write(work / VICTIM, "the user's own file\n")
    return work / VICTIM


def own_state_with_link(name: str):
    """The user's own state folder, with ``name`` a link to another of the user's files."""
    def setup(work, tiny):
        state(work, tiny)
        (work / STATE / name).unlink()
        (work / STATE / name).symlink_to(victim(work))
    return setup


def state_under_umask_000(work, tiny):
    old = os.umask(0)
    try:
        state(work, tiny)
    finally:
        os.umask(old)


def own_state_mode(mode: int):
    def setup(work, tiny):
        state(work, tiny)
        os.chmod(work / STATE, mode)
    return setup


def planted(script: str, **stored):
    """A neighbour runs the shell ``script`` with $1 the shared reports folder, $2 a file of the user's,
    $3 the run key of the user's report and $4 a stage result the user's run never made."""
    def setup(work, tiny):
        shared = shared_folder(work / SHARED)
        key = store.run_key(store.fingerprint(tiny), PROFILES["smoke"])
        forged = {"metrics": {"class_counts": {"train": [7], "test": [7]}}, "arrays": [], "seconds": 1.0,
                  "cpu_seconds": 1.0}
        as_neighbour(script, str(shared), str(victim(work)), json.dumps(key), json.dumps(forged))
    return setup


def planted_link_to_own_state(work, tiny):
    state(work, tiny, folder=".mine.state")  # the user's resume state of another report
    shared = shared_folder(work / SHARED)
    as_neighbour('ln -s "$2" "$1/.out.state"', str(shared), str(work / ".mine.state"))


def victim_unchanged(work):
    assert (work / VICTIM).read_text() == "the user's own file\n"


def private_state(work):
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [work / STATE, *(work / STATE).iterdir()]}
    assert modes == {STATE: 0o700, store.MARKER: 0o600, "lock": 0o600, "key.json": 0o600, "data.json": 0o600}, modes


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


def stage_ran_again(work):
    report_made(work)
    metrics = json.loads((work / OUT / "metrics.json").read_text())
    assert metrics["resumed_stages"] == [] and metrics["class_counts"] == {"train": [1], "test": [1]}


def library_log_kept(work):
    text = (work / OUT / "data-error.txt").read_text()
    assert "RuntimeError: cannot write checkpoint 13" in text
    assert "WARNING:absl:the file system is slow\nERROR:absl:a thread raised an exception\nTraceback" in text
    assert "OSError: [Errno 27] File too large" in text


def interrupted_in_mi(id: str, how: str) -> Case:
    """A signal (or a fault) during stage mi: exit 130, one line, the data stage kept for --resume."""
    return Case(id, ("--out", OUT, "--only", "data,mi"), 130,
                "interrupted during stage mi; rerun with --resume to continue", allowed_new=(STATE,), how=how,
                check=state_files("data.json"))


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
    interrupted_in_mi("sigint-in-a-stage", "SIGINT"),
    interrupted_in_mi("sigterm-in-a-stage", "SIGTERM"),
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
    # --resume never discards what it cannot read: a damaged key beside stored results is refused
    Case("resume-key-not-json", ("--out", OUT, "--only", "data", "--resume"), 2,
         "key.json is not JSON, so the stored results (data) cannot be checked against this run; they are kept",
         damaged("key.json", "{half a key")),
    Case("resume-key-not-an-object", ("--out", OUT, "--only", "data", "--resume"), 2,
         "key.json is not a JSON object, so the stored results (data)", damaged("key.json", "[1, 2]")),
    Case("resume-key-a-link", ("--out", OUT, "--only", "data", "--resume"), 2,
         "key.json is a symbolic link; not followed, so the stored results (data)",
         damaged("key.json", link_to="elsewhere.json")),
    Case("resume-key-missing-beside-stages", ("--out", OUT, "--only", "data", "--resume"), 2,
         "key.json is missing, so the stored results (data) cannot be checked", damaged("key.json")),
    Case("resume-key-missing-beside-cnn-checkpoints", ("--out", OUT, "--only", "data", "--resume"), 2,
         "key.json is missing, so the stored results (the CNN's checkpoints) cannot be checked",
         cnn_checkpoints_only),
    Case("resume-damaged-key-and-nothing-stored-starts-fresh", ("--out", OUT, "--only", "data", "--resume"), 0,
         "--resume: no stored results for this --out; starting fresh", damaged("key.json", "{", result=None),
         allowed_new=(OUT,), replaced=(STATE,), check=report_made),
    # a stored stage that cannot be read back runs again, in one line, without numpy's traceback
    Case("resume-truncated-npz-runs-the-stage-again", ("--out", OUT, "--only", "data", "--resume"), 0,
         "data: the stored result cannot be read (data.npz is damaged (", truncated_npz,
         allowed_new=(OUT,), replaced=(STATE,), check=stage_ran_again),
    Case("resume-stage-json-not-a-result-runs-the-stage-again", ("--out", OUT, "--only", "data", "--resume"), 0,
         "data: the stored result cannot be read (data.json is not a stored stage result)",
         damaged("data.json", '{"metrics": 1}'), allowed_new=(OUT,), replaced=(STATE,), check=stage_ran_again),
    Case("resume-stage-json-a-link-not-followed", ("--out", OUT, "--only", "data", "--resume"), 0,
         "data.json: is a symbolic link; not followed); running the stage again", forged_stage,
         allowed_new=(OUT,), replaced=(STATE,), check=stage_ran_again),
    # the state folder is private and never followed through a link
    Case("state-folder-private-under-umask-000", ("--out", OUT, "--only", "data,mi"), 130,
         "interrupted during stage mi", allowed_new=(STATE,), how="SIGINT", umask=0, check=private_state),
    Case("resume-after-a-run-under-umask-000", ("--out", OUT, "--only", "data", "--resume"), 0,
         "--resume: reusing data", state_under_umask_000, allowed_new=(OUT,), replaced=(STATE,),
         check=lambda w: json.loads((w / OUT / "metrics.json").read_text())["resumed_stages"] == ["data"]),
    Case("state-marker-a-link", ("--out", OUT, "--only", "data"), 2,
         f"{store.MARKER}: is a symbolic link; not followed; the resume state is used only when this command made it",
         own_state_with_link(store.MARKER), check=victim_unchanged),
    Case("state-lock-a-link", ("--out", OUT, "--only", "data"), 2, "lock: is a symbolic link; not followed",
         own_state_with_link("lock"), check=victim_unchanged),
    Case("state-folder-writable-by-others", ("--out", OUT, "--only", "data"), 2,
         f"{STATE}: is writable by others (mode 0777); not trusted", own_state_mode(0o777)),
    Case("state-folder-writable-by-its-group", ("--out", OUT, "--only", "data"), 2,
         f"{STATE}: is writable by its group (mode 0770); not trusted", own_state_mode(0o770)),
    # a neighbour on a shared machine plants the state folder of a report in a shared reports folder
    Case("neighbour-state-with-marker-linked-to-a-user-file", ("--out", f"{SHARED}/{OUT}", "--only", "data"), 2,
         f"{STATE}: is owned by another user (uid 65534); not trusted",
         planted('mkdir "$1/.out.state" && ln -s "$2" "$1/.out.state/.emnist_jax_report_state"'),
         check=victim_unchanged),
    Case("neighbour-state-with-lock-linked-to-a-user-file", ("--out", f"{SHARED}/{OUT}", "--only", "data"), 2,
         f"{STATE}: is owned by another user (uid 65534); not trusted",
         planted('mkdir "$1/.out.state" && echo 1 > "$1/.out.state/.emnist_jax_report_state" '
                 '&& ln -s "$2" "$1/.out.state/lock"'), check=victim_unchanged),
    Case("neighbour-state-folder-a-link-to-the-users-own-state", ("--out", f"{SHARED}/{OUT}", "--only", "data"), 2,
         f"{STATE}: is a symbolic link; not followed", planted_link_to_own_state),
    Case("neighbour-state-with-forged-results-not-reused",
         ("--out", f"{SHARED}/{OUT}", "--only", "data", "--resume"), 2,
         f"{STATE}: is owned by another user (uid 65534); not trusted",
         planted('umask 022 && mkdir "$1/.out.state" && cd "$1/.out.state" && echo 1 > .emnist_jax_report_state '
                 '&& printf %s "$3" > key.json && printf %s "$4" > data.json')),
    # a closed terminal or ssh connection (SIGHUP) ends a run like Ctrl-C
    interrupted_in_mi("sighup-in-a-stage", "SIGHUP"),
    Case("sighup-while-the-report-is-swapped-in", ("--out", OUT, "--only", "data"), 130,
         "interrupted while writing; the report is complete in", allowed_new=(OUT,), how="SIGHUP-in-commit",
         check=report_made),
    interrupted_in_mi("terminal-closed-in-a-stage", "hangup"),
    # a library's own log in a failing stage goes to the stage's traceback file, not to stderr
    Case("library-traceback-in-a-failing-stage", ("--out", OUT, "--only", "data"), 1,
         "data FAILED: RuntimeError: cannot write checkpoint 13 (traceback in data-error.txt)",
         allowed_new=(OUT,), how="library-log-fail", check=library_log_kept),
    Case("library-warning-in-a-finished-stage-printed", ("--out", OUT, "--only", "data"), 0,
         "the file system is slow", allowed_new=(OUT,), how="library-log-ok", check=report_made),
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


WAIT_IN_MI = textwrap.dedent("""
    import fcntl, sys, termios, time
    fcntl.ioctl(1, termios.TIOCSCTTY, 0)  # the terminal on stdout becomes this process's controlling terminal
    from emnist_jax.report import cli, sections, stages, store
    stages.STAGES["data"] = lambda inputs: store.StageResult({"class_counts": {"train": [1], "test": [1]}})
    sections.SECTIONS["data"] = lambda result, inputs, folder: {"title": "Data", "text": [], "tables": [],
                                                                "figures": []}
    def waiting(inputs):
        print("in stage mi", flush=True)
        time.sleep(60)
    stages.STAGES["mi"] = waiting
    sys.exit(cli.main(sys.argv[1:]))
""")


def hang_up_in_mi(argv: list[str], work: Path) -> tuple[int, str]:
    """The report on a terminal (a pseudo-terminal) that closes during stage mi, as when an ssh
    connection drops; its stderr goes to a pipe, where its last line can be read."""
    terminal, child_end = os.openpty()
    child = subprocess.Popen([sys.executable, "-c", WAIT_IN_MI, *argv], stdin=subprocess.DEVNULL, stdout=child_end,
                             stderr=subprocess.PIPE, text=True, cwd=work, start_new_session=True)
    os.close(child_end)
    seen, deadline = b"", time.monotonic() + 120
    try:
        while b"in stage mi" not in seen and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                seen += os.read(terminal, 4096)
    except OSError:  # the child ended and the terminal with it
        pass
    finally:
        os.close(terminal)  # the kernel sends SIGHUP to the process this terminal controls
    err = child.communicate(timeout=120)[1]
    return child.returncode, seen.decode(errors="replace") + err


def logging_library(fails: bool):
    """A data stage in which a library logs as orbax does (a warning; a traceback when it fails)."""
    def data(inputs):
        logging.getLogger("absl").warning("the file system is slow")
        if fails:
            try:
                raise OSError(27, "File too large")
            except OSError:
                logging.getLogger("absl").exception("a thread raised an exception")
            raise RuntimeError("cannot write checkpoint 13")
        return store.StageResult({"class_counts": {"train": [1], "test": [1]}})
    return data


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
    if case.how.endswith("-in-commit"):
        commit = output.Staging.commit
        signum = getattr(signal, case.how.split("-")[0])

        def interrupted_commit(self):
            os.kill(os.getpid(), signum)  # held until the swap is done
            commit(self)

        monkeypatch.setattr(output.Staging, "commit", interrupted_commit)
        return in_process(argv, capsys)
    if case.how.startswith("library-log-"):
        monkeypatch.setitem(stages.STAGES, "data", logging_library(fails=case.how.endswith("fail")))
        printed = logging.StreamHandler(sys.stderr)  # where a library's log goes unless told otherwise
        logging.getLogger().addHandler(printed)
        try:
            return in_process(argv, capsys)
        finally:
            logging.getLogger().removeHandler(printed)
    if case.how == "hangup":
        return hang_up_in_mi(argv, work)
    if case.how in ("SIGINT", "SIGTERM", "SIGHUP"):
        monkeypatch.setitem(stages.STAGES, "mi", signal_in_mi(getattr(signal, case.how)))
        # a shell starts a background job with SIGINT ignored, and Python then leaves it so: Ctrl-C
        # as a terminal delivers it needs Python's own handler
        if case.how == "SIGINT" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                return in_process(argv, capsys)
            finally:
                signal.signal(signal.SIGINT, previous)
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
    umask = os.umask(case.umask) if case.umask is not None else None
    try:
        code, text = run_case(case, argv, work, capsys, monkeypatch)
    finally:
        if umask is not None:
            os.umask(umask)
    assert code == case.code, text
    assert case.message in text, text
    assert "Traceback" not in text
    if code != 0:
        assert len([line for line in text.splitlines()
                    if "error:" in line or line.startswith("interrupted") or " FAILED: " in line]) == 1, text
    problems = unchanged_except(without(before, case.replaced), without(snapshot(work), case.replaced),
                                case.allowed_new)
    assert not problems, problems
    if case.check:
        assert case.check(work) is not False


def test_the_table_is_large_enough():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
