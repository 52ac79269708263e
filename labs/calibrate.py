"""Calibrate what a scenario leaves to the machine, on a live loopback Postgres.

``calibrate(dsn)`` measures three things ``labs compare`` feeds into simlib:

``connect_times``   seconds for ``psycopg2.connect(dsn)`` (then closed), one
                    sample per fresh connection: TCP handshake, startup packet,
                    authentication and the backend fork.
``rtt``             median seconds of ``SELECT 1`` round trips on one connection.
``query_overhead``  median of ``SELECT pg_sleep(0.005)`` minus 0.005 minus
                    ``rtt``, floored at 0: what the server adds to a waiting
                    query beyond its sleep and the round trip (parse/plan,
                    timer slack).

It is bounded in time: every connect has a 3 s timeout and sampling stops at
``deadline`` seconds (default 15) with whatever it has (at least one sample of
each, or an error).  It refuses DSNs that are not loopback (127.0.0.0/8, ::1,
localhost or a Unix socket): calibration numbers from a remote server would
not describe this machine's live runs and would load someone else's server.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from dataclasses import asdict, dataclass

SLEEP = 0.005
CONNECT_TIMEOUT = 3


@dataclass(frozen=True)
class Calibration:
    connect_times: list[float]
    rtt: float
    query_overhead: float

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["connect_times"] = list(self.connect_times)
        d["connect_time_median"] = statistics.median(self.connect_times)
        d["samples"] = len(self.connect_times)
        return d


def _is_loopback(dsn: str) -> bool:
    from psycopg2.extensions import parse_dsn

    host = parse_dsn(dsn).get("host") or ""
    for h in host.split(","):
        h = h.strip()
        if not h or h.startswith("/") or h == "localhost":
            continue
        try:
            if not ipaddress.ip_address(h).is_loopback:
                return False
        except ValueError:
            return False
    return True


def calibrate(dsn: str, samples: int = 50, *, deadline: float = 15.0) -> Calibration:
    """Measure connect time, round trip and query overhead at ``dsn`` (loopback only)."""
    import psycopg2

    if samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples}")
    if not _is_loopback(dsn):
        raise ValueError(f"calibrate: only loopback servers are calibrated, got {dsn!r}")
    stop = time.perf_counter() + deadline
    # Each measurement phase gets a third of the budget.
    phase = deadline / 3

    connect_times: list[float] = []
    phase_end = min(stop, time.perf_counter() + phase)
    for _ in range(samples):
        t0 = time.perf_counter()
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
        t1 = time.perf_counter()
        conn.close()
        connect_times.append(t1 - t0)
        if t1 >= phase_end:
            break

    conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # warm the backend (catalog caches) first
            cur.fetchone()
            rtts: list[float] = []
            phase_end = min(stop, time.perf_counter() + phase)
            for _ in range(samples):
                t0 = time.perf_counter()
                cur.execute("SELECT 1")
                cur.fetchone()
                t1 = time.perf_counter()
                rtts.append(t1 - t0)
                if t1 >= phase_end:
                    break
            sleeps: list[float] = []
            phase_end = stop
            for _ in range(samples):
                t0 = time.perf_counter()
                cur.execute("SELECT pg_sleep(%s)", (SLEEP,))
                cur.fetchone()
                t1 = time.perf_counter()
                sleeps.append(t1 - t0)
                if t1 >= phase_end:
                    break
    finally:
        conn.close()

    rtt = statistics.median(rtts)
    overhead = max(0.0, statistics.median(sleeps) - SLEEP - rtt)
    return Calibration(connect_times=connect_times, rtt=rtt, query_overhead=overhead)
