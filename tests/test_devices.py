"""Choosing the platform (--device) and reading the multi-process settings, without a GPU.

``devices._try_platform`` is the one place that asks JAX to start a platform; faking it stands in
for a machine whose JAX has CUDA, or ROCm, or neither.
"""

from __future__ import annotations

import socket

import pytest

from emnist_jax import devices


def platforms(*available: str):
    """A fake ``_try_platform`` for a JAX that can start only ``available``; records what was tried."""
    tried: list[str] = []

    def try_platform(platform: str) -> None:
        tried.append(platform)
        if platform not in available:
            raise RuntimeError(f"Unable to initialize backend '{platform}': Backend '{platform}' is not in the "
                               "list of known backends: ['cpu']\nmore detail on a second line")

    try_platform.tried = tried
    return try_platform


@pytest.mark.parametrize("available, expected", [(("cpu", "cuda"), "cuda"), (("cpu", "rocm"), "rocm")])
def test_gpu_is_whichever_gpu_platform_jax_has(monkeypatch, available, expected):
    fake = platforms(*available)
    monkeypatch.setattr(devices, "_try_platform", fake)
    assert devices.use_platform("gpu") == expected
    assert fake.tried[-1] == expected and "gpu" not in fake.tried   # JAX has no platform named "gpu"


def test_a_missing_platform_is_one_line_naming_what_was_tried(monkeypatch):
    monkeypatch.setattr(devices, "_try_platform", platforms("cpu"))
    with pytest.raises(devices.DeviceError) as error:
        devices.use_platform("gpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith("no gpu is available to JAX here")
    assert "cuda: Unable to initialize backend 'cuda'" in message and "rocm:" in message
    with pytest.raises(devices.DeviceError, match="unknown device 'npu'"):
        devices.use_platform("npu")


def test_no_device_keeps_jax_s_choice(monkeypatch):
    fake = platforms()
    monkeypatch.setattr(devices, "_try_platform", fake)
    assert devices.use_platform(None) is None and fake.tried == []


def test_cnn_cli_asks_for_cuda_first_when_given_gpu(monkeypatch, capsys):
    """--device gpu finds the NVIDIA GPU (CUDA) without asking JAX for ROCm first."""
    from emnist_jax.cnn.__main__ import main

    fake = platforms("cpu")
    monkeypatch.setattr(devices, "_try_platform", fake)
    assert main(["--device", "gpu", "--epochs", "1"]) == 2
    assert fake.tried == ["cuda", "rocm"]
    err = capsys.readouterr().err
    assert err.startswith("error: --device gpu: no gpu is available") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
     ("10.0.0.1:1234", 4, 3)),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID is not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be integers"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "got 2 of 2"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"}, "got -1 of 2"),
    ({"JAX_COORDINATOR_ADDRESS": "", "JAX_NUM_PROCESSES": "", "JAX_PROCESS_ID": ""}, None),
    ({"JAX_COORDINATOR_ADDRESS": "[::1]:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     ("[::1]:1234", 2, 0)),
    ({"JAX_COORDINATOR_ADDRESS": "my laptop", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     r"^JAX_COORDINATOR_ADDRESS='my laptop' must be host:port \(a port in 1..65535\), e.g. 10.0.0.1:1234$"),
    ({"JAX_COORDINATOR_ADDRESS": "h:70000", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     r"^JAX_COORDINATOR_ADDRESS='h:70000' must be host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     r"^JAX_COORDINATOR_ADDRESS='h' must be host:port"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     r"^JAX_NUM_PROCESSES and JAX_PROCESS_ID are set but JAX_COORDINATOR_ADDRESS is not; a multi-process run needs "
     r"all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID \(unset them to run alone\)$"),
    ({"JAX_PROCESS_ID": "0"}, r"^JAX_PROCESS_ID is set but JAX_COORDINATOR_ADDRESS is not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"},
     r"^JAX_NUM_PROCESSES must be >= 1, got 0$"),
    ({"EMNIST_JAX_COORDINATOR_TIMEOUT": "soon"},
     r"^EMNIST_JAX_COORDINATOR_TIMEOUT='soon' must be a whole number of seconds in 1..86400$"),
    ({"EMNIST_JAX_COORDINATOR_TIMEOUT": "0"}, r"^EMNIST_JAX_COORDINATOR_TIMEOUT='0' must be"),
    ({"EMNIST_JAX_COORDINATOR_TIMEOUT": "-5"}, r"^EMNIST_JAX_COORDINATOR_TIMEOUT='-5' must be"),
    ({"EMNIST_JAX_COORDINATOR_TIMEOUT": ""}, None),
])
def test_distributed_settings_come_from_the_three_variables(environ, expected):
    if expected is None or isinstance(expected, tuple):
        assert devices.distributed_settings(environ) == expected
        return
    with pytest.raises(devices.DeviceError, match=expected):
        devices.distributed_settings(environ)


def test_initialize_distributed_without_settings_touches_nothing():
    import jax

    assert devices.initialize_distributed({}) is False
    assert not jax.distributed.is_initialized()


def test_jax_platforms_that_cannot_start_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setattr(devices, "_try_platform", platforms("cpu"))
    with pytest.raises(devices.DeviceError) as error:
        devices.check_platforms({"JAX_PLATFORMS": "tpuu"})
    assert str(error.value) == ("JAX_PLATFORMS='tpuu': Unable to initialize backend 'tpuu': Backend 'tpuu' is not in "
                                "the list of known backends: ['cpu']")
    devices.check_platforms({"JAX_PLATFORMS": ""})  # empty: unset, JAX's own choice, nothing started
    devices.check_platforms({"JAX_PLATFORMS": "cpu"})


def test_an_absent_coordinator_is_waited_for_within_the_timeout_then_one_line(monkeypatch):
    """Process 1 knocks at the coordinator's port until the timeout, then says so; JAX itself would
    abort the process (SIGABRT) after 300 s. A fake clock: no real waiting."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    now = [0.0]
    monkeypatch.setattr(devices.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    run = devices.Distributed(f"127.0.0.1:{port}", 2, 1, timeout=3)
    with pytest.raises(devices.DeviceError) as error:
        devices.wait_for_coordinator(run, clock=lambda: now[0])
    assert str(error.value) == (f"no coordinator answered at 127.0.0.1:{port} within 3 s (Connection refused); "
                                "start process 0 of the run there, or raise EMNIST_JAX_COORDINATOR_TIMEOUT")
    assert now[0] == 3.0
    with socket.create_server(("127.0.0.1", 0)) as server:  # one that listens: the wait ends at once
        run = devices.Distributed(f"127.0.0.1:{server.getsockname()[1]}", 2, 1, timeout=3)
        assert devices.wait_for_coordinator(run, clock=lambda: now[0]) == 3.0
