"""Choosing the JAX platform and joining a multi-process run, before anything touches a backend.

Both must happen before the first JAX computation: once a backend is initialised, JAX ignores a
new platform choice and ``jax.distributed.initialize`` refuses to run. So the command lines call
:func:`use_platform` and :func:`initialize_distributed` first, and nothing here calls
``jax.devices()`` or ``jax.process_count()`` before initialising.

Every environment variable read here is checked first (an empty value is unset), and a bad one is
a one-line :class:`DeviceError` naming it. JAX's own wait for the processes of a run ends in an
abort of the whole process (SIGABRT, a C++ stack) after 300 s; here the processes meet on the
coordinator's port first, for EMNIST_JAX_COORDINATOR_TIMEOUT seconds, saying what they wait for.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import sys
import time
from typing import Callable

#: ``--device`` names -> the JAX platforms that can provide them, tried in order. "gpu" is
#: whatever GPU plugin is installed: JAX knows "cuda" and "rocm", never a platform named "gpu".
PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
#: Seconds a process waits for the others of a multi-process run (JAX's own default is 300).
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "EMNIST_JAX_COORDINATOR_TIMEOUT", 300
#: host:port, the host a name, an IPv4 address or an IPv6 address in brackets.
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


class DeviceError(RuntimeError):
    """A platform or multi-process setting that cannot be used; the message is one line."""


def _try_platform(platform: str) -> None:
    """Make ``platform`` (or a comma-separated list of them) JAX's platforms and start them; raises
    if they cannot start."""
    import jax

    jax.config.update("jax_platforms", platform)
    jax.devices()


def use_platform(name: str | None) -> str | None:
    """Run JAX on ``name`` ("cpu", "gpu" or "tpu"; None keeps JAX's own choice); returns the platform used."""
    if name is None:
        return None
    if name not in PLATFORMS:
        raise DeviceError(f"unknown device {name!r}; expected one of {', '.join(PLATFORMS)}")
    errors = []
    for platform in PLATFORMS[name]:
        try:
            _try_platform(platform)
            return platform
        except Exception as error:  # RuntimeError, or a bare assertion for a platform with no plugin
            reason = str(error).splitlines()[0] if str(error).strip() else "no plugin for it is installed"
            errors.append(f"{platform}: {reason}")
    raise DeviceError(f"no {name} is available to JAX here ({'; '.join(errors)})")


@dataclasses.dataclass(frozen=True)
class Distributed:
    """One process's part in a multi-process run, from the environment."""

    coordinator: str
    count: int
    index: int
    timeout: int          # seconds to wait for the coordinator and the other processes

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.coordinator.rsplit(":", 1)
        return host.strip("[]"), int(port)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read(env, name: str) -> str | None:
    """The variable's value; empty means unset."""
    return env.get(name) or None


def coordinator_timeout(environ: dict | None = None) -> int:
    """EMNIST_JAX_COORDINATOR_TIMEOUT in seconds (default 300); a DeviceError naming it when malformed."""
    value = _read(os.environ if environ is None else environ, TIMEOUT_VARIABLE)
    if value is None:
        return DEFAULT_TIMEOUT
    if not value.strip().isdigit() or not 1 <= int(value) <= 86_400:
        raise DeviceError(f"{TIMEOUT_VARIABLE}={value!r} must be a whole number of seconds in 1..86400")
    return int(value)


def distributed_settings(environ: dict | None = None) -> tuple[str, int, int] | None:
    """(coordinator, number of processes, this process's id) from the environment, or None if none
    of the three is set. Every variable is checked (and EMNIST_JAX_COORDINATOR_TIMEOUT); a bad one
    is a DeviceError naming it."""
    env = os.environ if environ is None else environ
    coordinator_timeout(env)
    values = {name: _read(env, name) for name in ENVIRONMENT}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if value is None]
    if values["JAX_COORDINATOR_ADDRESS"] is None:
        given = [name for name in ENVIRONMENT if values[name] is not None]
        raise DeviceError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but JAX_COORDINATOR_"
                          "ADDRESS is not; a multi-process run needs all of " + ", ".join(ENVIRONMENT) +
                          " (unset them to run alone)")
    if missing:
        raise DeviceError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not; "
                          "a multi-process run needs all of " + ", ".join(ENVIRONMENT))
    address = values["JAX_COORDINATOR_ADDRESS"]
    match = _ADDRESS.match(address)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise DeviceError(f"JAX_COORDINATOR_ADDRESS={address!r} must be host:port (a port in 1..65535), "
                          "e.g. 10.0.0.1:1234")
    try:
        count, index = int(values["JAX_NUM_PROCESSES"]), int(values["JAX_PROCESS_ID"])
    except ValueError:
        raise DeviceError(f"JAX_NUM_PROCESSES={values['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                          f"{values['JAX_PROCESS_ID']!r} must be integers") from None
    if count < 1:
        raise DeviceError(f"JAX_NUM_PROCESSES must be >= 1, got {count}")
    if not 0 <= index < count:
        raise DeviceError(f"JAX_PROCESS_ID must lie in 0..JAX_NUM_PROCESSES-1, got {index} of {count}")
    return address, count, index


def wait_for_coordinator(run: Distributed, clock: Callable[[], float] = time.monotonic) -> float:
    """Wait until the coordinator's port accepts a connection, for at most ``run.timeout`` seconds;
    returns the seconds left. JAX's own wait ends in an abort of the whole process (SIGABRT and a
    C++ stack) when no coordinator answers, so the processes other than 0 knock first (process 0
    counts the knocks, :func:`gather_processes`)."""
    deadline = clock() + run.timeout
    host, port = run.host_port
    reason = "no answer"
    while True:
        left = deadline - clock()
        if left <= 0:
            raise DeviceError(f"no coordinator answered at {run.coordinator} within {run.timeout} s ({reason}); "
                              f"start process 0 of the run there, or raise {TIMEOUT_VARIABLE}")
        try:
            with socket.create_connection((host, port), timeout=min(left, 2.0)):
                return deadline - clock()
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
        time.sleep(min(0.25, max(deadline - clock(), 0)))


def gather_processes(run: Distributed, clock: Callable[[], float] = time.monotonic) -> float:
    """Process 0: hold the coordinator's port until each other process has knocked once (see
    :func:`wait_for_coordinator`), for at most ``run.timeout`` seconds; returns the seconds left.
    JAX's own coordinator aborts the whole process when a process never joins; after this wait it
    only starts when all have come. The port is released for JAX's coordinator just before it binds."""
    deadline = clock() + run.timeout
    port = run.host_port[1]
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as error:
        raise DeviceError(f"cannot listen at JAX_COORDINATOR_ADDRESS={run.coordinator} as process 0 "
                          f"({error.strerror or error})") from None
    knocked = 0
    with server:
        while knocked < run.count - 1:
            left = deadline - clock()
            if left <= 0:
                raise DeviceError(f"only {knocked} of the other {run.count - 1} process(es) reached the coordinator at "
                                  f"{run.coordinator} within {run.timeout} s; start them with the same "
                                  f"JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, or raise {TIMEOUT_VARIABLE}")
            server.settimeout(min(left, 1.0))
            try:
                connection, _ = server.accept()
            except (socket.timeout, InterruptedError):
                continue
            with connection:  # the knocking process hangs up first: no TIME_WAIT left on this port
                connection.settimeout(2.0)
                try:
                    connection.recv(1)
                except OSError:
                    pass
            knocked += 1
    return deadline - clock()


def initialize_distributed(environ: dict | None = None, say: Callable[[str], None] | None = None) -> bool:
    """Join the multi-process run described by ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; True when this process is (now) part of one. Safe to call more than once.
    ``say`` (default: a line on stderr) is told what the process waits for.

    CPU processes exchange gradients through gloo collectives (JAX's CPU default has none).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(environ)
    if settings is None:
        return False
    run = Distributed(*settings, coordinator_timeout(environ))
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if run.index == 0:
        say(f"waiting up to {run.timeout} s for the other {run.count - 1} process(es) to join at {run.coordinator} "
            f"(process 0 of {run.count})")
        left = gather_processes(run)
    else:
        say(f"waiting up to {run.timeout} s for the coordinator at {run.coordinator} "
            f"(process {run.index} of {run.count})")
        left = wait_for_coordinator(run)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(run.coordinator, num_processes=run.count, process_id=run.index,
                                   initialization_timeout=max(1, math.ceil(left)))
    except (RuntimeError, ValueError) as error:  # too late (a backend is up), or no coordinator to reach
        raise DeviceError(f"cannot join the multi-process run at {run.coordinator} as process {run.index} of "
                          f"{run.count}: {_first_line(error)}") from None
    return True


def check_platforms(environ: dict | None = None) -> None:
    """Start the platforms JAX_PLATFORMS names, where it is set (and no --device overrides it); a
    DeviceError naming the variable when JAX cannot (an unknown or absent platform)."""
    value = _read(os.environ if environ is None else environ, "JAX_PLATFORMS")
    if value is None:
        return
    try:
        _try_platform(value)
    except Exception as error:  # RuntimeError, or a bare assertion for a platform with no plugin
        raise DeviceError(f"JAX_PLATFORMS={value!r}: {_first_line(error)}") from None


def setup(device: str | None, compilation_cache: bool = True) -> None:
    """What every command line does first: apply the process settings (:func:`emnist_jax.runtime.setup`),
    join a multi-process run if the environment describes one, pick the platform, and turn JAX's
    persistent compilation cache on (or off: ``--no-compilation-cache``; :mod:`emnist_jax.compilation_cache`).
    Raises :class:`DeviceError` saying what was wrong."""
    from emnist_jax import compilation_cache as cache
    from emnist_jax import runtime

    runtime.setup()  # first: the allocator settings hold for every block JAX and the data take
    initialize_distributed()
    try:
        use_platform(device)
    except DeviceError as error:
        raise DeviceError(f"--device {device}: {error}") from None
    if device is None:
        check_platforms()
    if compilation_cache:
        cache.enable()
    else:
        cache.disable()
