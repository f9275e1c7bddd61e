"""Two processes on this machine train the CNN as one data-parallel job.

Each process is ``python -m emnist_jax.cnn`` with JAX_COORDINATOR_ADDRESS (a free port on
127.0.0.1), JAX_NUM_PROCESSES=2 and its JAX_PROCESS_ID, on one CPU device each, exchanging
gradients through gloo: a mesh of 2 devices over 2 processes, each device computing half of every
global batch of 16. The checkpoint they write together (orbax's multi-process support) must hold
the parameters one process reaches with the same global batch.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from emnist_jax.cnn import train_and_evaluate
from test_cnn import CFG, SMALL_CONFIG_ARGS, flat, small, small_file  # noqa: F401  (fixtures)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_reach_the_one_process_parameters(small_file, small, tmp_path):
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "emnist_jax.cnn", "--data", small_file, "--epochs", "1", *SMALL_CONFIG_ARGS,
               "--workdir", str(workdir)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
           "JAX_NUM_PROCESSES": "2", "EMNIST_JAX_CACHE": str(tmp_path / "cache")}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    processes = [subprocess.Popen(command, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=180) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "cpu x 2 device(s) in 2 process(es)" in outputs[0][0], outputs[0][0]
    # only process 0 reports (gloo itself prints a line on each)
    assert [line for line in outputs[1][0].splitlines() if not line.startswith("[Gloo]")] == []

    config = dataclasses.replace(CFG, epochs=1)
    one = train_and_evaluate(small, config, progress=False)
    two = train_and_evaluate(small, config, workdir=str(workdir), resume=True, progress=False)  # reads, trains nothing
    assert two.resumed_from.epoch == 2 and int(two.state.step) == int(one.state.step) == 7
    # Two devices sum each batch's gradient in two halves and all-reduce them, one device sums it
    # at once: fp32 rounding differs in the last bits, so equality holds only to a tolerance. Single
    # parameters can differ by far more than an ulp (Adam divides by the root of tiny second
    # moments), so the 362,942 parameters are compared as one vector: measured 1.1e-7 relative after
    # these 7 steps (the epoch's mean loss agreed exactly); the bound leaves 10x.
    np.testing.assert_allclose(two.history[0].loss, one.history[0].loss, rtol=1e-6)
    a, b = flat(one.state.params), flat(two.state.params)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6, np.linalg.norm(a - b) / np.linalg.norm(a)


ALONE_CASES = [
    # id, environment, stderr lines (exactly)
    ("process-0-without-the-others", {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
                                      "EMNIST_JAX_COORDINATOR_TIMEOUT": "1"},
     ["waiting up to 1 s for the other 1 process(es) to join at {address} (process 0 of 2)",
      "error: only 0 of the other 1 process(es) reached the coordinator at {address} within 1 s; start them with the "
      "same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, or raise EMNIST_JAX_COORDINATOR_TIMEOUT"]),
    ("process-1-without-its-coordinator", {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
                                           "EMNIST_JAX_COORDINATOR_TIMEOUT": "1"},
     ["waiting up to 1 s for the coordinator at {address} (process 1 of 2)",
      "error: no coordinator answered at {address} within 1 s (Connection refused); start process 0 of the run "
      "there, or raise EMNIST_JAX_COORDINATOR_TIMEOUT"]),
]


@pytest.mark.parametrize("case", ALONE_CASES, ids=[c[0] for c in ALONE_CASES])
def test_a_run_that_cannot_start_says_why_in_one_line_and_exits_2(case, small_file, tmp_path):
    """No C++ abort (JAX aborts a process whose coordinator never answers) and no traceback."""
    name, environment, expected = case
    address = f"127.0.0.1:{free_port()}"
    if "JAX_NUM_PROCESSES" in environment:
        environment = {**environment, "JAX_COORDINATOR_ADDRESS": address}
    done = subprocess.run([sys.executable, "-m", "emnist_jax.cnn", "--data", small_file, "--epochs", "1",
                           *SMALL_CONFIG_ARGS], env={**os.environ, **environment}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert done.stderr.splitlines() == [line.format(address=address) for line in expected]
