"""Choosing the JAX platform and joining a multi-process run, before anything touches a backend.

Both must happen before the first JAX computation: once a backend is initialised, JAX ignores a
new platform choice and ``jax.distributed.initialize`` refuses to run. So the command lines call
:func:`use_platform` and :func:`initialize_distributed` first, and nothing here calls
``jax.devices()`` or ``jax.process_count()`` before initialising.
"""

from __future__ import annotations

import os

#: ``--device`` names -> the JAX platforms that can provide them, tried in order. "gpu" is
#: whatever GPU plugin is installed: JAX knows "cuda" and "rocm", never a platform named "gpu".
PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DeviceError(RuntimeError):
    """A platform or multi-process setting that cannot be used; the message is one line."""


def _try_platform(platform: str) -> None:
    """Make ``platform`` JAX's only platform and start it; raises if it cannot start."""
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


def distributed_settings(environ: dict | None = None) -> tuple[str, int, int] | None:
    """(coordinator, number of processes, this process's id) from the environment, or None if unset."""
    env = os.environ if environ is None else environ
    if not env.get("JAX_COORDINATOR_ADDRESS"):
        return None
    missing = [name for name in ENVIRONMENT[1:] if not env.get(name)]
    if missing:
        raise DeviceError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not; "
                          "a multi-process run needs all of " + ", ".join(ENVIRONMENT))
    try:
        count, index = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
    except ValueError:
        raise DeviceError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                          f"{env['JAX_PROCESS_ID']!r} must be integers") from None
    if count < 1 or not 0 <= index < count:
        raise DeviceError(f"JAX_PROCESS_ID must lie in 0..JAX_NUM_PROCESSES-1, got {index} of {count}")
    return env["JAX_COORDINATOR_ADDRESS"], count, index


def initialize_distributed(environ: dict | None = None) -> bool:
    """Join the multi-process run described by ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; True when this process is (now) part of one. Safe to call more than once.

    CPU processes exchange gradients through gloo collectives (JAX's CPU default has none).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(environ)
    if settings is None:
        return False
    coordinator, count, index = settings
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=count, process_id=index)
    except (RuntimeError, ValueError) as error:  # too late (a backend is up), or no coordinator to reach
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DeviceError(f"cannot join the multi-process run at {coordinator} as process {index} of {count}: "
                          f"{reason}") from None
    return True


def setup(device: str | None) -> None:
    """What every command line does first: join a multi-process run if the environment describes
    one, then pick the platform. Raises :class:`DeviceError` saying which of the two was wrong."""
    initialize_distributed()
    try:
        use_platform(device)
    except DeviceError as error:
        raise DeviceError(f"--device {device}: {error}") from None
