"""What a stage costs beyond its wall clock: CPU seconds (this process and its workers) and peak memory."""

from __future__ import annotations

import os
import sys


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
