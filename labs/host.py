"""The machine a live run shares: CPU used by the client and by the whole host.

The load generator, the local servers and everything else on this 2-core
machine share its cores, so when a live result falls short of its prediction
the first question is whether the machine, rather than the database, was the
bottleneck.  :class:`CpuMeter` answers it for one run; :func:`busy_cores`
tells whether the machine is quiet before a run starts (``labs validate``
warns, the lessons wait).
"""

from __future__ import annotations

import os
import time

__all__ = ["CpuMeter", "busy_cores", "host_busy_seconds"]


class CpuMeter:
    """CPU used while a run lasts: by this (client) process, and by the whole host.

    ``client_cores`` is this process's CPU seconds per wall second (all
    threads; 1.0 = one core busy, and with the GIL one Python process cannot
    go far beyond it); ``host_busy_cores`` is the same for everything on the
    host, from ``/proc/stat`` (None where there is no /proc).
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.process = time.process_time()
        self.host = host_busy_seconds()

    def read(self) -> dict[str, float | int | None]:
        wall = max(1e-9, time.perf_counter() - self.wall)
        host = host_busy_seconds()
        client = time.process_time() - self.process
        return {
            "wall_s": wall,
            "client_cpu_s": client,
            "client_cores": client / wall,
            "host_busy_cores": (
                None if host is None or self.host is None else (host - self.host) / wall
            ),
            "host_cores": os.cpu_count(),
        }


def host_busy_seconds() -> float | None:
    """Seconds of non-idle CPU time summed over all cores since boot (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user..steal; guest time is already in user
    return busy / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy on the host over ``seconds`` (None where /proc/stat is missing)."""
    a = host_busy_seconds()
    time.sleep(seconds)
    b = host_busy_seconds()
    return None if a is None or b is None else (b - a) / seconds
