"""Harness capacity: the fastest open-loop load the live harness keeps up with.

Goal (from the issue): the highest open-loop rate the harness sustains for
``SELECT 1`` with asyncpg, as a ratio to ``pgbench -S`` with the same number
of connections against the same server in the same run, is at least 0.3.

Why
---
A live lab measures the database only while the *client* keeps its
schedule.  Above some rate the load generator itself (one Python process, one
asyncio loop) falls behind: requests start late, the scheduler lag grows and
the latencies it reports are the client's, not the server's.  This benchmark
finds that rate with the cheapest query there is, so every per-request cost
is the harness's, and sets it beside ``pgbench``, Postgres's own C client, on
the same server in the same run, so the figure means something on any
machine.

What is measured
----------------
* **Server**: one throwaway Postgres from :func:`labs.services.throwaway`
  (no replicas, no Redis; loopback TCP, ``fsync`` off), started once for the
  whole benchmark and always stopped at the end (normal exit, error, Ctrl-C).
  Always throwaway, never ``LABS_*`` or ``labs services up`` servers, so
  nobody else's load shares it.
* **Harness**: the real live path, unchanged: :func:`labs.loadgen.drive`
  (the open-loop Poisson scheduler, latency from the *scheduled* time)
  driving :class:`labs.drivers.asyncpg.AsyncpgDriver` with an asyncpg
  pool of ``N`` connections (``min_size = max_size = N``, opened before the
  clock starts, ``timeout = inf``), on the event loop ``drive`` uses
  (uvloop when installed, see labs/loadgen.py).  The query is a plain
  ``SELECT 1`` without a parameter (``QuerySpec(select_one=True)``), which
  the driver sends with ``conn.execute``: asyncpg's simple-protocol path,
  one Query message per request, as ``pgbench``'s default query mode
  (``--extended-protocol`` sends it with ``conn.fetch`` instead, the
  Bind/Execute/Sync path the lessons' parameterised queries take).  By default the pool
  skips asyncpg's reset query on release (``reset_on_return = false``), so a
  request is one round trip, as a ``pgbench`` transaction is;
  ``--reset-variant`` adds a second search with asyncpg's default reset (two
  round trips per request, what the lessons' asyncpg scenarios use).
  Per trial: offered, achieved and completed rates, scheduler lag, latency,
  this process's CPU (``client cores``), the host's (``/proc/stat``) and
  the garbage collector's pauses (``gc.callbacks``).
* **asyncpg alone** (closed loop, 5 s): ``N`` tasks doing acquire / ``SELECT 1``
  / release flat out (the same call and event loop as the harness), without
  scheduler or records: what asyncpg on this event loop can do at all, to
  tell the load generator's cost from the library's.
* **pgbench** (same server, same role, ``-c N -j 2 -T 10 -n``, TCP to
  127.0.0.1): after ``pgbench -i -s 1``, the built-in ``-S`` (select-only:
  one ``SELECT abalance FROM pgbench_accounts WHERE aid = :aid`` per
  transaction, simple protocol), and a script holding just ``SELECT 1;``
  twice: simple protocol (the same messages as the harness's
  ``conn.execute``) and ``-M prepared`` (the closest match to
  ``--extended-protocol``: asyncpg prepares a statement once per connection
  and then sends Bind/Execute/Sync).  ``tps`` is pgbench's figure *without* initial
  connection time (the harness's pool is also opened before its clock).
  pgbench is a closed loop (each connection sends its next query as soon as
  the last answer arrives): the most a client can get out of the server.

Sustained
---------
One trial at nominal rate ``R``: ``warmup`` s (default 1) then a measured
window of ``window`` s (default 5); requests *scheduled* in the window count.
``offered`` = window arrivals / window (the Poisson schedule's own count, so
the criterion carries no Poisson noise).  ``R`` is **sustained** when all of

* ``achieved_rate >= 0.97 * offered``: the scheduler *started* 97% of the
  window's requests within the window;
* ``throughput >= 0.97 * offered``: 97% of them succeeded (counted against
  the window, as simlib's ``throughput_rps``);
* no incomplete request (all finished within ``drain_limit`` = 3 s after the
  window) and no error;
* scheduler lag p99 ``<= 10 ms`` (lag = actual start - scheduled start).

Why 10 ms: a healthy asyncio loop starts requests within the timer
granularity (epoll rounds waits up to 1 ms) plus whatever runs ahead of them
on the loop: p99 about 1.5 ms here.  10 ms is twice the mean query of the
course's asyncpg lesson (5 ms): a client that adds more than that to one
request in a hundred distorts the tail latencies the lessons read, so past
it the client, not the database, shapes the result.  Near the limit the client's CPU
(one core, ``client cores`` near 1.0) is what gives out: requests queue in
the pool, latency and lag grow, the drain limit is hit.  The garbage
collector used to set the limit first (a full collection walking tens of
thousands of live records stopped the loop for 40-50 ms); the load
generator now keeps those out of the collector's view during a run (see
labs/loadgen.py), and each trial still reports its longest collection
(``gc max``).  The figure is noisy by about +-10% between runs on a shared
machine.  ``--lag-p99-ms`` changes the bound.

Search: coarse from ``--start-rate`` (2000/s) doubling until a trial fails,
then bisection (geometric midpoints, rounded to 10/s) until the failing rate
is within 5% of the passing one; then the best rate is run once more.  If
that confirmation fails the rate counts as failed and the bisection resumes
below it (at most two confirmations; a rate still unconfirmed is reported as
such and gives no ratio).  The harness figure is the highest confirmed
nominal rate; its measured throughput is shown beside it.

More than one process
---------------------
``--processes P`` adds a search in which the same harness runs as ``P``
processes sharing one schedule (labs.loadgen's ``share``: process ``k``
issues the requests whose index is ``k`` modulo ``P``, from one time zero),
each with its own asyncpg pool holding its part of the ``N`` connections, so
the server sees the same ``N`` connections and the same arrivals; their
records are merged and judged by the same criterion, and their CPU is added
up.  That is how a load generator gets past one interpreter's CPU (and GIL);
the price is that one request's pool wait is only within its own process's
pool.

Caveats
-------
Client and server share the machine's cores (2 here): pgbench's two threads
and the harness's one process compete with the 8 backends, as any local
client does.  The harness is one Python process on one event loop (uvloop
when installed, else asyncio's; ``LABS_EVENT_LOOP=asyncio`` forces the
standard one, recorded under ``machine.event_loop``); its CPU use is reported
(``client cores``).  asyncpg's pool (acquire, release: asyncio.Queue,
a shielded release task, a timer per connection) costs most of the client's
CPU per request, the load generator (task, record, schedule) the rest.

Usage::

    python bench/bench_harness.py                    # full, about 2.5 min
    python bench/bench_harness.py --connections 16
    python bench/bench_harness.py --reset-variant    # also with asyncpg's reset query
    python bench/bench_harness.py --extended-protocol  # SELECT 1 via fetch, not execute
    python bench/bench_harness.py --processes 2      # also split over 2 processes (+1 min)
    python bench/bench_harness.py --quick            # smoke run, about 35 s
    python bench/bench_harness.py --check            # exit 1 if the ratio is below 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402

from labs.drivers.asyncpg import AsyncpgDriver  # noqa: E402
from labs.host import host_busy_seconds  # noqa: E402
from labs.json_out import json_safe  # noqa: E402
from labs.loadgen import drive, event_loop_factory, event_loop_name  # noqa: E402
from labs.query import QuerySpec  # noqa: E402
from labs.records import OK, Record, RunContext  # noqa: E402
from labs.services import find_bindir, throwaway  # noqa: E402
from labs.services.postgres import query_one  # noqa: E402
from simlib.files import atomic_write_text  # noqa: E402
from simlib.scenario import Scenario, parse_scenario  # noqa: E402

GOAL_RATIO = 0.3
SEED = 1


# ---------------------------------------------------------------------------
# The sustain criterion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """When a trial counts as sustained (see the module docstring)."""

    warmup_s: float = 1.0
    window_s: float = 5.0
    drain_limit_s: float = 3.0
    min_fraction: float = 0.97  # of offered, for achieved rate and throughput
    lag_p99_ms: float = 10.0

    def text(self) -> str:
        return (
            f"sustained = over a {self.window_s:g} s window after {self.warmup_s:g} s warm-up: "
            f"achieved rate and throughput >= {self.min_fraction:.0%} of offered, "
            f"no incomplete (drain limit {self.drain_limit_s:g} s) or failed request, "
            f"scheduler lag p99 <= {self.lag_p99_ms:g} ms"
        )

    def failures(self, t: dict[str, Any]) -> list[str]:
        """Why trial ``t`` is not sustained (empty: it is)."""
        why = []
        need = self.min_fraction * t["offered_rps"]
        if t["achieved_rps"] < need:
            why.append(f"achieved {t['achieved_rps']:.0f} < {need:.0f}")
        if t["throughput_rps"] < need:
            why.append(f"throughput {t['throughput_rps']:.0f} < {need:.0f}")
        if t["incomplete"]:
            why.append(f"{t['incomplete']} incomplete")
        if t["failed"]:
            why.append(f"{t['failed']} failed")
        lag = t["lag_p99_ms"]
        if not (lag is not None and lag <= self.lag_p99_ms):
            why.append(f"lag p99 {lag:.1f} ms > {self.lag_p99_ms:g}" if lag else "no lag data")
        return why


# ---------------------------------------------------------------------------
# One harness trial
# ---------------------------------------------------------------------------


def harness_scenario(rate: float, connections: int, reset: bool, crit: Criterion) -> Scenario:
    """The scenario the harness runs: open loop at ``rate``, asyncpg pool of ``connections``."""
    return parse_scenario(
        {
            "name": f"harness-{rate:g}",
            "seed": SEED,
            "replications": 1,
            "workload": {
                "kind": "open",
                "rate": rate,
                "duration": crit.window_s,
                "warmup": crit.warmup_s,
            },
            # SELECT 1 ignores the service time; the loadgen still draws one per request
            "query": {"service_time": {"dist": "constant", "value": 0.0}},
            "pool": {
                "kind": "asyncpg",
                "min_size": connections,
                "max_size": connections,
                "timeout": math.inf,
                "reset_on_return": reset,
            },
        }
    )


def _rate(a: float | None, b: float | None, wall: float) -> float | None:
    return None if a is None or b is None else (b - a) / wall


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _trial_part(
    dsn: str, rate: float, connections: int, reset: bool, crit: Criterion, simple: bool,
    share: tuple[int, int] | None = None, start_at: float | None = None,
) -> dict[str, Any]:
    """Run the harness once at ``rate`` (or one ``share`` of it) in this process.

    Returns the records, this process's CPU seconds and wall span from time
    zero to the end, and the garbage collector's pauses.
    """
    scenario = harness_scenario(rate, connections, reset, crit)
    query = QuerySpec(select_one=True)
    ctx = RunContext(dsn=dsn, application_name="labs-bench-harness", query=query)
    driver = AsyncpgDriver(scenario, ctx)
    driver.simple_select_one = simple
    marks: dict[str, float | None] = {}
    pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection

    def on_start() -> None:
        # the pool is open and the clock restarted: CPU is counted from here
        marks.update(cpu=time.process_time(), host=host_busy_seconds(), wall=time.perf_counter())

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # The garbage collector stops the loop; with tens of thousands of live
        # records a full collection is long enough to show in the lag p99.
        if phase == "start":
            marks["gc"] = time.perf_counter()
        elif marks.get("gc") is not None and marks.get("wall") is not None:
            pauses.append((info["generation"], time.perf_counter() - marks["gc"]))

    gc.collect()  # the previous trial's records are garbage: do not collect them in this one
    gc.callbacks.append(on_gc)
    try:
        records, facts = drive(
            driver, ctx, scenario, drain_limit=crit.drain_limit_s, on_start=on_start,
            share=share, start_at=start_at,
        )
    finally:
        gc.callbacks.remove(on_gc)
    return {
        "records": records,
        "facts": facts,
        "t0": marks["wall"],
        "t_end": time.perf_counter(),
        "cpu_s": time.process_time() - marks["cpu"],
        "host_start": marks["host"],
        "pauses": pauses,
    }


def _warm(_: int) -> int:
    """Nothing: makes a worker process import this module before the first trial."""
    return os.getpid()


def harness_trial(
    dsn: str, rate: float, connections: int, reset: bool, crit: Criterion, simple: bool = True,
    workers: Any = None, processes: int = 1,
) -> dict[str, Any]:
    """Run the harness once at ``rate`` and measure it (window metrics + CPU).

    ``simple``: SELECT 1 with ``conn.execute`` (simple protocol), else ``conn.fetch``.
    ``processes`` > 1 (with ``workers``, a process pool of that size): the one
    schedule is split over that many processes (labs.loadgen's ``share``),
    each with its own asyncpg pool holding its part of the ``connections``,
    all starting at one time zero; their records are merged and their CPU
    added up.
    """
    if processes <= 1:
        parts = [_trial_part(dsn, rate, connections, reset, crit, simple)]
    else:
        start_at = time.perf_counter() + 1.0  # time for every process to open its pool
        sizes = [connections // processes + (k < connections % processes)
                 for k in range(processes)]
        futures = [workers.submit(_trial_part, dsn, rate, sizes[k], reset, crit, simple,
                                  (k, processes), start_at) for k in range(processes)]
        parts = [f.result() for f in futures]
    records = [r for part in parts for r in part["records"]]
    t0 = min(part["t0"] for part in parts)
    wall = max(part["t_end"] for part in parts) - t0
    cpu = sum(part["cpu_s"] for part in parts)
    host = _rate(parts[0]["host_start"], host_busy_seconds(), wall)
    pauses = [x for part in parts for x in part["pauses"]]
    t = window_metrics(records, crit.warmup_s, crit.warmup_s + crit.window_s)
    t.update(
        rate=rate,
        reset_on_return=reset,
        processes=processes,
        drain_limit_hit=any(part["facts"].drain_limit_hit for part in parts),
        run_s=wall,
        client_cores=cpu / wall,
        host_busy_cores=host,
        gc_full_collections=sum(1 for g, _ in pauses if g == 2),
        gc_pause_max_ms=max((d for _, d in pauses), default=0.0) * 1000.0,
        gc_pause_total_ms=sum(d for _, d in pauses) * 1000.0,
    )
    t["failures"] = crit.failures(t)
    t["sustained"] = not t["failures"]
    return t


def window_metrics(records: list[Record], start: float, end: float) -> dict[str, Any]:
    """The trial's figures over requests *scheduled* in ``[start, end)`` (as labs.executor)."""
    duration = end - start
    window = [r for r in records if start <= r.scheduled < end]
    started = [r for r in window if r.started is not None]
    ok = [r for r in window if r.outcome == OK]
    lag = np.array([r.started - r.scheduled for r in started]) * 1000.0
    latency = np.array([r.finished - r.scheduled for r in ok]) * 1000.0
    return {
        "requests_window": len(window),
        "offered_rps": len(window) / duration,
        "achieved_rps": sum(1 for r in started if r.started < end) / duration,
        "throughput_rps": len(ok) / duration,
        "incomplete": sum(1 for r in window if r.outcome is None),
        "failed": sum(1 for r in window if r.outcome is not None and r.outcome != OK),
        "errors": sorted({r.error for r in window if r.error})[:3],
        "lag_mean_ms": float(lag.mean()) if lag.size else None,
        "lag_p50_ms": _pct(lag, 50),
        "lag_p99_ms": _pct(lag, 99),
        "lag_max_ms": float(lag.max()) if lag.size else None,
        "latency_p50_ms": _pct(latency, 50),
        "latency_p99_ms": _pct(latency, 99),
    }


async def _closed_loop(
    dsn: str, connections: int, seconds: float, reset: bool, simple: bool
) -> int:
    async def no_reset(conn: asyncpg.Connection) -> None:
        return None

    extra: dict[str, Any] = {} if reset else {"reset": no_reset}
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections, **extra)
    count = 0
    stop = False

    async def worker() -> None:
        nonlocal count
        while not stop:
            async with pool.acquire() as conn:
                if simple:  # as the harness's driver sends it
                    await conn.execute("SELECT 1")
                else:
                    await conn.fetch("SELECT 1")
            count += 1

    try:
        tasks = [asyncio.create_task(worker()) for _ in range(connections)]
        await asyncio.sleep(0.5)  # warm-up: statement prepared on every connection
        first = count
        await asyncio.sleep(seconds)
        done = count - first
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    return done


def asyncpg_ceiling(
    dsn: str, connections: int, seconds: float, reset: bool, simple: bool = True
) -> dict[str, Any]:
    """asyncpg alone, closed loop: ``connections`` tasks doing acquire/fetch/release flat out.

    No scheduler and no records: what asyncpg on this event loop can do at all,
    so the report separates the load generator's own cost from the library's.
    """
    cpu, host, wall = time.process_time(), host_busy_seconds(), time.perf_counter()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # the harness's loop
        done = runner.run(_closed_loop(dsn, connections, seconds, reset, simple))
    elapsed = time.perf_counter() - wall
    result = {
        "label": f"asyncpg closed loop, {'reset' if reset else 'no reset'}",
        "reset_on_return": reset,
        "tps": done / seconds,
        "client_cores": (time.process_time() - cpu) / elapsed,
        "host_busy_cores": _rate(host, host_busy_seconds(), elapsed),
    }
    print(
        f"  {result['label']:<30} {result['tps']:>10,.0f} tps   "
        f"client cores {result['client_cores']:.2f}  "
        f"host cores {_f(result['host_busy_cores'], '.2f')}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


def _round(rate: float) -> float:
    return float(max(10, round(rate / 10.0) * 10))


def search(
    measure: Callable[[float], dict[str, Any]],
    start: float,
    precision: float,
    max_rate: float = 200_000.0,
    confirmations: int = 2,
) -> dict[str, Any]:
    """Highest sustained rate: coarse doubling, bisection, then a confirmation run.

    ``measure(rate)`` runs one trial.  A rate that fails once counts as failed,
    so a confirmation failure moves the upper bound down and the bisection
    resumes between it and the highest rate that passed below it.
    """
    trials: list[dict[str, Any]] = []
    passed: set[float] = set()

    def run(rate: float, phase: str) -> bool:
        t = measure(rate)
        t["phase"] = phase
        trials.append(t)
        _print_trial(t)
        if t["sustained"]:
            passed.add(rate)
        return t["sustained"]

    lo: float | None = None
    hi: float | None = None
    rate = _round(start)
    # coarse: double until a trial fails (or halve until one passes)
    if run(rate, "coarse"):
        lo = rate
        while rate * 2 <= max_rate:
            rate = _round(rate * 2)
            if not run(rate, "coarse"):
                hi = rate
                break
            lo = rate
    else:
        hi = rate
        while rate / 2 >= 10:
            rate = _round(rate / 2)
            if run(rate, "coarse"):
                lo = rate
                break
            hi = rate
    if lo is None:
        return {"best_rps": None, "confirmed": False, "trials": trials}
    confirmed = hi is None  # max_rate reached: nothing failed
    while hi is not None:
        while hi / lo > 1 + precision:
            mid = _round(math.sqrt(lo * hi))
            if mid in (lo, hi):
                break
            if run(mid, "bisect"):
                lo = mid
            else:
                hi = mid
        if run(lo, "confirm"):
            confirmed = True
            break
        if confirmations <= 1:
            break
        confirmations -= 1
        hi = lo
        below = [r for r in passed if r < hi]
        if not below:
            break
        lo = max(below)
    best = next(t for t in reversed(trials) if t["rate"] == lo and t["sustained"])
    return {
        "best_rps": lo if confirmed else None,
        "best_unconfirmed_rps": lo,
        "confirmed": confirmed,
        "first_failing_rps": hi,
        "best_trial": best,
        "trials": trials,
    }


# ---------------------------------------------------------------------------
# pgbench
# ---------------------------------------------------------------------------


def pg_args(dsn: str) -> list[str]:
    """``-h -p -U dbname`` for a ``postgresql://user@host:port/db`` DSN."""
    u = urlsplit(dsn)
    args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432)]
    if u.username:
        args += ["-U", unquote(u.username)]
    return [*args, unquote(u.path.lstrip("/")) or "postgres"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_TXN = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def parse_pgbench(text: str) -> dict[str, float | int | None]:
    """tps (without initial connection time), mean latency and transactions from pgbench."""
    tps, lat, txn = _TPS.search(text), _LAT.search(text), _TXN.search(text)
    if tps is None:
        raise RuntimeError(f"no tps line in pgbench output:\n{text}")
    return {
        "tps": float(tps.group(1)),
        "latency_mean_ms": float(lat.group(1)) if lat else None,
        "transactions": int(txn.group(1)) if txn else None,
    }


def pgbench_run(
    pgbench: Path, dsn: str, label: str, extra: list[str], connections: int, seconds: int
) -> dict[str, Any]:
    """One ``pgbench -c N -j 2 -T seconds -n`` run; tps and who used the CPU."""
    threads = min(2, connections)  # pgbench needs -j <= -c
    cmd = [str(pgbench), *extra, "-c", str(connections), "-j", str(threads)]
    cmd += ["-T", str(seconds), "-n", *pg_args(dsn)]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    host0, wall0 = host_busy_seconds(), time.perf_counter()
    out = _run(cmd, timeout=seconds + 60)
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / wall
    result = {
        "label": label,
        "command": " ".join(["pgbench", *cmd[1:]]),
        **parse_pgbench(out.stdout),
        "client_cores": client,
        "host_busy_cores": _rate(host0, host_busy_seconds(), wall),
    }
    print(
        f"  pgbench {label:<22} {result['tps']:>10,.0f} tps   "
        f"pgbench cores {client:.2f}  host cores {result['host_busy_cores'] or 0:.2f}",
        flush=True,
    )
    return result


def run_pgbench(dsn: str, connections: int, seconds: int) -> list[dict[str, Any]]:
    """Initialise (-i -s 1), then -S, SELECT 1 (simple) and SELECT 1 (-M prepared)."""
    pgbench = find_bindir() / "pgbench"
    _run([str(pgbench), "-i", "-s", "1", "-q", *pg_args(dsn)], timeout=120)
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        script = Path(tmp) / "select1.sql"
        script.write_text("SELECT 1;\n")
        return [
            pgbench_run(pgbench, dsn, "-S", ["-S"], connections, seconds),
            pgbench_run(pgbench, dsn, "SELECT 1 (simple)", ["-f", str(script)],
                        connections, seconds),
            pgbench_run(pgbench, dsn, "SELECT 1 (-M prepared)",
                        ["-f", str(script), "-M", "prepared"], connections, seconds),
        ]


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _print_trial(t: dict[str, Any]) -> None:
    verdict = "ok" if t["sustained"] else "FAIL: " + "; ".join(t["failures"])
    print(
        f"  {'reset' if t['reset_on_return'] else 'no reset':<8} {t['rate']:>8,.0f}/s "
        f"offered {t['offered_rps']:>8,.0f} achieved {t['achieved_rps']:>8,.0f} "
        f"thru {t['throughput_rps']:>8,.0f} lag p50/p99 {_f(t['lag_p50_ms'], '.2f')}/"
        f"{_f(t['lag_p99_ms'], '.1f')} ms cpu {t['client_cores']:.2f}/"
        f"{_f(t['host_busy_cores'], '.2f')} gc max {t.get('gc_pause_max_ms', 0):.0f} ms  "
        f"{verdict}",
        flush=True,
    )


def _loop_description() -> str:
    if event_loop_name() == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio (default selector loop)"


def machine_info(admin_dsn: str) -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pgbench = subprocess.run(
        [str(find_bindir() / "pgbench"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "asyncpg": asyncpg.__version__,
        "event_loop": _loop_description(),
        "postgres": query_one(admin_dsn, "SHOW server_version"),
        "pgbench": pgbench,
    }


def report(doc: dict[str, Any]) -> str:
    n = doc["connections"]
    lines = [
        "",
        f"harness capacity: SELECT 1, {n} connections, one throwaway Postgres "
        f"{doc['machine']['postgres']}, {doc['machine']['cpu_count']} cores",
        doc["criterion_text"],
        "",
        f"{'client':<34} {'rate/s':>9} {'throughput':>11} {'lag p99 ms':>10} "
        f"{'client cores':>12} {'host cores':>10}",
        "-" * 91,
        f"{'':<34} {'sustained':>9} {'/ tps':>11}",
    ]
    for name, s in doc["harness"].items():
        label = f"harness, {name}"
        best = s.get("best_trial")
        if best is None:
            lines.append(f"{label:<34} {'none sustained':>9}")
            continue
        note = "" if s["confirmed"] else "  (not confirmed)"
        lines.append(
            f"{label:<34} {s['best_unconfirmed_rps']:>9,.0f} {best['throughput_rps']:>11,.0f} "
            f"{_f(best['lag_p99_ms'], '.2f'):>10} {best['client_cores']:>12.2f} "
            f"{_f(best['host_busy_cores'], '.2f'):>10}{note}"
        )
    closed = [(c["label"], c) for c in doc["asyncpg_closed_loop"]]
    closed += [(f"pgbench {p['label']} (closed)", p) for p in doc["pgbench"]]
    for label, c in closed:
        lines.append(
            f"{label:<34} {'-':>9} {c['tps']:>11,.0f} {'-':>10} {c['client_cores']:>12.2f} "
            f"{_f(c['host_busy_cores'], '.2f'):>10}"
        )
    lines += ["", "ratios (harness max sustained rate / pgbench tps):"]
    for key, value in doc["ratios"].items():
        lines.append(f"  {key:<52} {_f(value, '.3f')}")
    verdict = "meets" if doc["meets_goal"] else "MISSES"
    lines.append(
        f"\nheadline: {_f(doc['ratio'], '.3f')} of pgbench -S ({verdict} the goal >= {GOAL_RATIO})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=8, metavar="N",
                   help="asyncpg pool size and pgbench -c (default 8)")
    p.add_argument("--start-rate", type=float, default=2000.0,
                   help="first rate of the coarse search, requests/s (default 2000)")
    p.add_argument("--precision", type=float, default=0.05,
                   help="stop bisecting when failing/passing <= 1 + this (default 0.05)")
    p.add_argument("--window", type=float, default=5.0, help="measured seconds per trial")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per trial")
    p.add_argument("--lag-p99-ms", type=float, default=10.0,
                   help="largest scheduler lag p99 of a sustained rate (default 10)")
    p.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench -T (default 10)")
    p.add_argument("--reset-variant", action="store_true",
                   help="also search with asyncpg's reset query on release (+1.5 min)")
    p.add_argument("--extended-protocol", action="store_true",
                   help="send SELECT 1 with asyncpg's fetch (Bind/Execute/Sync, as the "
                   "lessons' queries) instead of execute (simple protocol)")
    p.add_argument("--processes", type=int, default=1, metavar="P",
                   help="also search with the schedule split over P load-generator processes "
                   "(each with its share of the connections); default 1: one process only")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s windows, 3 s pgbench, 10%% precision, no reset variant")
    p.add_argument("--json-out", type=Path, help="default bench/results/harness.json "
                   "(harness-quick.json with --quick)")
    p.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    p.add_argument("--check", action="store_true",
                   help=f"exit 1 if the ratio to pgbench -S is below {GOAL_RATIO}")
    args = p.parse_args(argv)
    if args.connections < 1:
        p.error("--connections must be >= 1")
    if not 1 <= args.processes <= args.connections:
        p.error(f"--processes must be between 1 and --connections ({args.connections})")
    if args.quick:
        args.window, args.warmup, args.pgbench_seconds = 2.0, 0.5, 3
        args.precision, args.reset_variant = 0.10, False
    crit = Criterion(warmup_s=args.warmup, window_s=args.window, lag_p99_ms=args.lag_p99_ms)
    n = args.connections
    simple = not args.extended_protocol
    began = time.perf_counter()
    print(crit.text(), flush=True)
    # Both clients and the server share this machine's cores: anything else running
    # lowers every figure (pgbench's most).  Measure it, record it, warn about it.
    idle0 = host_busy_seconds()
    time.sleep(1.0)
    busy_before = _rate(idle0, host_busy_seconds(), 1.0)
    if busy_before is not None and busy_before > 0.2:
        print(f"warning: the machine is busy before the start ({busy_before:.2f} cores in use); "
              "the figures will be low and noisy", file=sys.stderr, flush=True)

    # One server for everything; throwaway() stops it on exit, error, Ctrl-C or SIGTERM.
    with throwaway(max_connections=max(20, 2 * n)) as svc:
        machine = machine_info(svc.primary_admin)
        machine["host_busy_cores_before"] = busy_before
        print(f"postgres {machine['postgres']} on {svc.primary}; pgbench -c {n} -j 2; "
              f"harness on {machine['event_loop']}", flush=True)
        # pgbench first: the harness's trials then run on a server pgbench has warmed
        # (shared buffers, catalog caches) just as pgbench's own runs do.
        pgbench = run_pgbench(svc.primary, n, args.pgbench_seconds)
        variants = {"no reset": False, "reset": True} if args.reset_variant else {
            "no reset": False}
        ceiling = [
            asyncpg_ceiling(svc.primary, n, min(5.0, args.pgbench_seconds), reset, simple)
            for reset in variants.values()
        ]
        harness = {}
        for name, reset in variants.items():
            print(f"harness, asyncpg pool of {n}, {name} on release:", flush=True)
            harness[name] = search(
                lambda rate, reset=reset: harness_trial(
                    svc.primary, rate, n, reset, crit, simple
                ),
                args.start_rate,
                args.precision,
            )
        if args.processes > 1:
            k = args.processes
            name = f"no reset, {k} processes"
            print(f"harness, {k} processes sharing one schedule, asyncpg pools of "
                  f"{n // k}..{-(-n // k)} ({n} connections), no reset on release:", flush=True)
            spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's loop
            with ProcessPoolExecutor(max_workers=k, mp_context=spawn) as workers:
                for _ in workers.map(_warm, range(k)):  # imports done before any clock starts
                    pass
                harness[name] = search(
                    lambda rate: harness_trial(svc.primary, rate, n, False, crit, simple,
                                               workers=workers, processes=k),
                    args.start_rate,
                    args.precision,
                )
        machine["load_average_at_end"] = list(os.getloadavg())

    best = harness["no reset"]["best_rps"]
    tps = {x["label"]: x["tps"] for x in pgbench}

    def ratio(value: float | None, over: str) -> float | None:
        return None if value is None else value / tps[over]

    ratios = {
        "no reset / pgbench -S (headline)": ratio(best, "-S"),
        "no reset / pgbench SELECT 1 (simple)": ratio(best, "SELECT 1 (simple)"),
        "no reset / pgbench SELECT 1 (-M prepared)": ratio(best, "SELECT 1 (-M prepared)"),
    }
    for c in ceiling:
        name = "reset" if c["reset_on_return"] else "no reset"
        found = harness[name]["best_rps"]
        ratios[f"{name} / asyncpg closed loop, {name}"] = (
            None if found is None else found / c["tps"]
        )
    if "reset" in harness:
        ratios["reset / pgbench -S"] = ratio(harness["reset"]["best_rps"], "-S")
    if args.processes > 1:
        split = harness[f"no reset, {args.processes} processes"]["best_rps"]
        ratios[f"no reset, {args.processes} processes / pgbench -S"] = ratio(split, "-S")
    headline = ratios["no reset / pgbench -S (headline)"]
    doc = {
        "benchmark": "bench_harness",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/bench_harness.py", *(argv or sys.argv[1:])]),
        "connections": n,
        "query": (
            "SELECT 1 (asyncpg execute: simple protocol, no parameter)"
            if simple
            else "SELECT 1 (asyncpg fetch: prepared statement, Bind/Execute/Sync, no parameter)"
        ),
        "criterion": asdict(crit),
        "criterion_text": crit.text(),
        "search": {"start_rate": args.start_rate, "precision": args.precision},
        "machine": machine,
        "pgbench": pgbench,
        "asyncpg_closed_loop": ceiling,
        "harness": harness,
        "ratios": ratios,
        "ratio": headline,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": headline is not None and headline >= GOAL_RATIO,
        "elapsed_s": time.perf_counter() - began,
    }
    print(report(doc))
    print(f"elapsed {doc['elapsed_s']:.0f} s")
    if not args.no_json:
        default = "harness-quick.json" if args.quick else "harness.json"
        path = args.json_out or ROOT / "bench" / "results" / default
        atomic_write_text(path, json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")
        print(f"wrote {path}")
    return 1 if args.check and not doc["meets_goal"] else 0


if __name__ == "__main__":
    sys.exit(main())
