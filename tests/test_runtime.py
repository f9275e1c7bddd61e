"""The process settings of emnist_jax.runtime: the same in every command line, scoped where forests grow.

The allocator settings are process-wide, so each case that changes them runs in a process of its own.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from emnist_jax import runtime
from emnist_jax.cnn.__main__ import CONFIG_FIELDS
from emnist_jax.profiles import PROFILES

from test_cnn import write_small

GLIBC = runtime._glibc() is not None

#: runs one command line (argv[1]: "report" or "cnn", then its arguments) and prints, as the CNN
#: starts training, the allocator settings in force, and after it the parameters and test results
PROBE = textwrap.dedent("""
    import hashlib, json, sys
    from emnist_jax import runtime
    from emnist_jax.cnn import train

    trained = train.train_and_evaluate

    def probe(*args, **kwargs):
        import jax
        import numpy as np

        settings = runtime.applied()
        result = trained(*args, **kwargs)
        leaves = jax.tree_util.tree_leaves(result.state.params)
        test = result.evaluations["test"]
        print("PROBE " + json.dumps({
            "settings": settings, "test": [test.accuracy, test.loss],
            "params": hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()}))
        return result

    train.train_and_evaluate = probe
    if sys.argv[1] == "report":
        from emnist_jax.report.cli import main
    else:
        from emnist_jax.cnn.__main__ import main
    sys.exit(main(sys.argv[2:]))
""")


def probed(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(next(line for line in out.splitlines() if line.startswith("PROBE "))[len("PROBE "):])


def test_report_and_cnn_command_lines_train_under_the_same_settings_to_the_same_parameters(tiny_dataset, tmp_path):
    data = write_small(tiny_dataset, tmp_path / "small.mat")
    smoke = dataclasses.asdict(PROFILES["smoke"].cnn)   # all rows of the small file: smoke takes up to 2,000
    config = [arg for field in CONFIG_FIELDS if smoke[field.name] is not None
              for arg in (f"--{field.name.replace('_', '-')}", str(smoke[field.name]))]
    commands = {"report": ["--data", data, "--profile", "smoke", "--only", "cnn", "--out", str(tmp_path / "out")],
                "cnn": ["--data", data, "--no-progress", *config]}
    running = {name: subprocess.Popen([sys.executable, "-c", PROBE, name, *argv], cwd=tmp_path, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, argv in commands.items()}
    report, cnn = (probed(running[name]) for name in commands)
    assert report["settings"] == cnn["settings"] == (runtime.TUNED if GLIBC else {})
    assert report["params"] == cnn["params"]
    assert report["test"] == cnn["test"]


#: the allocator at each point: whether a block of 2 MiB and one of 512 KiB come from mmap
#: (glibc's count of mapped blocks, mallinfo2), and the settings runtime says it applied
ALLOCATOR = textwrap.dedent("""
    import ctypes, json, sys
    from emnist_jax import runtime

    libc = ctypes.CDLL(None)

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

    def mapped(size):
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        after = libc.mallinfo2().hblks
        libc.free(block)
        return after > before

    points = []
    def point(name):
        # glibc's own threshold moves as mapped blocks are freed: only a threshold set here is known
        fixed = bool(runtime.applied())
        points.append([name, mapped(2 << 20) if fixed else None, mapped(512 << 10) if fixed else None,
                       runtime.applied()])

    if sys.argv[1] == "setup":
        runtime.setup()
    point("start")
    with runtime.large_blocks_from_mmap():
        with runtime.large_blocks_from_mmap():
            point("two forests")
        point("one forest")
    point("after")
    print(json.dumps(points))
""")

TUNED, MIB = runtime.TUNED, 1 << 20
LIFTED = {**runtime.GLIBC_DEFAULTS, "M_MMAP_THRESHOLD": MIB}
ALLOCATOR_CASES = {
    "setup": [["start", False, False, TUNED], ["two forests", True, False, LIFTED],
              ["one forest", True, False, LIFTED], ["after", False, False, {**TUNED, "M_MMAP_THRESHOLD": 32 * MIB}]],
    # a library user who never called setup: glibc's own settings, but for the threshold
    "library": [["start", None, None, {}], ["two forests", True, False, {"M_MMAP_THRESHOLD": MIB}],
                ["one forest", True, False, {"M_MMAP_THRESHOLD": MIB}],
                ["after", False, False, {"M_MMAP_THRESHOLD": 32 * MIB}]],
}


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33 or later only")
@pytest.mark.parametrize("case", ALLOCATOR_CASES)
def test_forests_get_mmap_back_while_they_grow_and_the_process_settings_after(case):
    done = subprocess.run([sys.executable, "-c", ALLOCATOR, case], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ALLOCATOR_CASES[case]


def test_stop_signals_raise_keyboard_interrupt_inside_and_the_previous_handlers_come_back():
    seen: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: seen.append(signum))
                for signum in runtime.STOP_SIGNALS}
    try:
        for signum in runtime.STOP_SIGNALS:
            with pytest.raises(KeyboardInterrupt):
                with runtime.stop_signals_as_interrupt():
                    signal.raise_signal(signum)
            signal.raise_signal(signum)
        assert seen == list(runtime.STOP_SIGNALS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_stop_signals_are_left_alone_off_the_main_thread():
    handlers = []

    def worker():
        with runtime.stop_signals_as_interrupt():
            handlers.extend(signal.getsignal(signum) for signum in runtime.STOP_SIGNALS)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signum) for signum in runtime.STOP_SIGNALS]
