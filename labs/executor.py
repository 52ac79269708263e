"""The live executor: run a scenario on real Postgres through the real pool library.

``run_live(scenario, dsn)`` does, in order:

1. if the query is ``cpu_bound``: calibrate the CPU-burn query on this server
   (:func:`labs.server_stats.calibrate_cpu`) so a service time of *s* seconds
   becomes a query that keeps one core busy for about *s*;
2. open the pool through its library (labs/drivers/), with an
   ``application_name`` unique to this run, so the server's view of *our*
   connections can be told apart from everything else;
3. start the monitor (pg_stat_activity every 50 ms) and the load generator
   (labs/loadgen.py): the open-loop Poisson schedule simlib uses for
   replication 0, or closed-loop clients;
4. after the window, let the window's requests finish (drain, up to
   ``max(60, duration)`` seconds as in simlib), stop, close the pool;
5. turn the per-request records into simlib's metrics, with the same rules.

Metrics, as simlib.metrics defines them (window ``[warmup, warmup+duration)``
of *scheduled* arrival times; latency and checkout measured from the scheduled
time, so client-side delays count, as they would for a user):

==========================  ====================================================
``throughput_rps``          window requests that succeeded / duration
``latency_*_ms``            scheduled arrival -> connection released, successes
``checkout_*_ms``           scheduled arrival -> connection in hand
``p_wait``                  share that found the pool at its limit and queued;
                            how each library's "at its limit" is read is in its
                            driver's docstring (psycopg2 and none: always 0)
``timeout_rate``            pool refused in time: QueuePool TimeoutError,
                            psycopg2 PoolError, psycopg_pool PoolTimeout /
                            TooManyRequests, asyncpg acquire timeout
``error_rate``              any other failure (e.g. 53300 too many clients)
``connections_opened_per_s`` client-side connects (each library's hook) whose
                            time falls in the window, per second
``connections_mean``        time average of our backends in pg_stat_activity,
                            sampled every 50 ms over the window
``offered_rps``             window arrivals / duration
``query_mean_ms``           connection in hand -> result back, successes
``connections_busy_mean``   time average of checked-out connections (client)
``in_flight_mean``          time average of requests between scheduled arrival
                            and finish (Little's L)
``incomplete_rate``         window requests unfinished at the drain limit
==========================  ====================================================

Extra live-only metrics: ``achieved_rate_rps`` (window requests the load
generator actually *started* within the window, per second) and
``scheduler_lag_p99_ms`` / ``scheduler_lag_mean_ms`` (how late requests
started compared with their schedule: large values mean the client, not the
database, was saturated).

One live run is one replication: ``scenario.replications`` is ignored and
``ci95`` is null.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from labs.access import is_keyed, keyed_driver, prepare_table, wait_for_replicas
from labs.drivers import ASYNC_KINDS, driver_class
from labs.drivers.common import (
    ERROR,
    OK,
    TIMEOUT,
    TOO_MANY_CONNECTIONS,
    QuerySpec,
    Record,
    RunContext,
)
from labs.loadgen import run_async, run_threaded, thread_count
from labs.server_stats import (
    CacheMonitor,
    Monitor,
    ReplicationMonitor,
    calibrate_cpu,
    cancel_backends,
    database_sessions,
)
from simlib.metrics import METRICS, metric_values
from simlib.scenario import Scenario
from simlib.simulation import DRAIN_FACTOR, DRAIN_MIN

__all__ = ["LIVE_METRICS", "LiveResult", "run_live"]

#: Metrics only a live run has, reported after simlib's.
LIVE_METRICS: tuple[str, ...] = (
    "achieved_rate_rps",
    "scheduler_lag_mean_ms",
    "scheduler_lag_p99_ms",
)


def json_safe(x: object) -> object:
    """JSON-safe: NaN and infinities become None; NumPy scalars become Python ones."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class LiveResult:
    """One live run: client-side metrics, the server's view, and how it was run."""

    scenario: Scenario
    metrics: dict[str, float]
    server: dict[str, float | int | None]
    details: dict = field(default_factory=dict)
    #: every request's record (labs.drivers.common.Record), for plots; not in the JSON
    records: list[Record] = field(default_factory=list, repr=False)
    #: seconds of every timed connect of the run (not in the JSON)
    connect_durations: list[float] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, object]:
        """The contract's JSON document (one run: every ``ci95`` is null)."""
        return {
            "executor": "labs",
            "scenario": self.scenario.name,
            "replications": 1,
            "seed": self.scenario.seed,
            "metrics": {
                name: {"value": json_safe(value), "ci95": None}
                for name, value in self.metrics.items()
            },
            "server": json_safe(dict(self.server)),
            "details": json_safe(dict(self.details)),
        }


def run_live(
    scenario: Scenario,
    dsn: str,
    *,
    progress: bool = False,
    drain_limit: float | None = None,
    admin_dsn: str | None = None,
    replicas: Sequence[str] = (),
    redis_url: str | None = None,
) -> LiveResult:
    """Run ``scenario`` once against the Postgres at ``dsn`` and measure it.

    With a ``[cache]``, ``[replicas]`` or writes the requests take the keyed
    path (labs/access.py): ``replicas`` are the streaming replicas' DSNs (at
    least ``[replicas].count``) and ``redis_url`` the Redis for the cache.

    ``drain_limit``: seconds after the window that its requests may still
    finish (default: simlib's ``max(60, duration)``).  ``admin_dsn``: where
    the monitor, the CPU calibration and the cancel at the drain limit
    connect (default ``dsn``).  On labs' own servers it is a superuser that
    uses the reserved connection slots, so the monitor never takes one of the
    ``max_connections`` the scenario's pool may use.
    """
    admin = admin_dsn or dsn
    w = scenario.workload
    keyed = is_keyed(scenario)
    replica_dsns = list(replicas)[: scenario.replicas.count] if scenario.replicas else []
    if scenario.replicas is not None and len(replica_dsns) < scenario.replicas.count:
        raise ValueError(
            f"replicas.count: the scenario needs {scenario.replicas.count} replica DSN(s), "
            f"got {len(replica_dsns)}"
        )
    if scenario.cache is not None and not redis_url:
        raise ValueError("cache: the scenario has a [cache] and needs a Redis URL, got none")
    start, end = w.warmup, w.warmup + w.duration
    if drain_limit is None:
        drain_limit = max(DRAIN_MIN, DRAIN_FACTOR * w.duration)
    app = f"labs-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    wall_start = time.time()

    details: dict = {
        "pool_kind": scenario.pool.kind,
        "workload_kind": w.kind,
        "application_name": app,
        "window_s": [start, end],
        "drain_limit_s": drain_limit,
        "client_cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "note": (
            "live runs use the server's real cores; database.cores, connect_time and "
            "network_rtt of the scenario are simlib inputs and are not imposed here"
        ),
    }
    query = QuerySpec()
    if scenario.query.cpu_bound:
        mean = (
            float(scenario.query.service_time.mean)
            if hasattr(scenario.query.service_time, "mean")
            else 0.01
        )
        calibration = calibrate_cpu(admin, target=min(0.05, max(0.002, mean)))
        details["cpu_calibration"] = calibration
        query = QuerySpec(cpu_bound=True, seconds_per_row=calibration["seconds_per_row"])
    details["query"] = query.sql("pyformat")

    ctx = RunContext(dsn=dsn, application_name=app, query=query)
    if keyed:
        prepare_table(dsn, w.keys)
        lag = getattr(scenario.replicas.lag, "mean", 1.0) if scenario.replicas else 0.0
        wait_for_replicas(dsn, replica_dsns, timeout=30.0 + 2 * float(lag))
        driver = keyed_driver(
            scenario,
            ctx,
            driver_class(scenario.pool.kind),
            replica_dsns,
            redis_url,
            scenario.pool.kind in ASYNC_KINDS,
        )
        details["keyed"] = {"keys": w.keys, "write_fraction": w.write_fraction}
    else:
        driver = driver_class(scenario.pool.kind)(scenario, ctx)
    sessions_before = database_sessions(admin)
    monitor = Monitor(admin, app, ctx.now)
    replica_monitors = [Monitor(r, app, ctx.now) for r in replica_dsns]
    lag_monitor = ReplicationMonitor(admin, ctx.now) if replica_dsns else None
    cache_monitor = (
        CacheMonitor(redis_url, driver.prefix, ctx.now) if scenario.cache is not None else None
    )
    watchers = [monitor, *replica_monitors]
    watchers += [m for m in (lag_monitor, cache_monitor) if m is not None]

    def start_monitors() -> None:
        for m in watchers:
            m.start()

    def on_stop() -> None:
        # Drain limit reached: cancel our queries still running on the server
        # so threads blocked in them come back (they count as incomplete).
        for _ in range(3):
            if cancel_backends(admin, app) == 0:
                break
            time.sleep(0.2)

    limit = getattr(driver, "limit", None)
    if limit is not None:
        limit *= 1 + len(replica_dsns)  # one pool per database
    threads = thread_count(limit, w.kind, w.clients)
    cpu = CpuMeter()
    try:
        if scenario.pool.kind in ASYNC_KINDS:
            records, facts = run_async(
                driver,
                ctx,
                scenario,
                drain_limit=drain_limit,
                progress=progress,
                on_stop=on_stop,
                on_start=start_monitors,
            )
        else:
            driver.open()
            try:
                ctx.restart_clock()
                start_monitors()
                records, facts = run_threaded(
                    driver,
                    ctx,
                    scenario,
                    threads=threads,
                    drain_limit=drain_limit,
                    progress=progress,
                    on_stop=on_stop,
                )
            finally:
                driver.close()
        run_end = ctx.now()
        cpu_used = cpu.read()
    finally:
        for m in watchers:
            m.stop()
    time.sleep(0.3)  # let exiting backends flush their statistics
    sessions_after = database_sessions(admin)

    details.update(facts)
    if getattr(driver, "capacity", None) is not None:
        # the Redis limit the keyed driver set for [cache] capacity (and then restored)
        details["cache_capacity"] = dataclasses.asdict(driver.capacity)
    details["cpu"] = cpu_used
    details["driver"] = driver.details()
    details["run_seconds"] = run_end
    details["wall_start"] = wall_start

    cutoff = end + drain_limit
    metrics = _metrics(records, ctx, monitor, start, end, cutoff, run_end, scenario)
    if replica_monitors:
        # connections_mean counts every database's connections, as simlib does
        metrics["connections_mean"] += sum(
            m.time_average(start, end) for m in replica_monitors
        )
    details.update(_extra_details(records, ctx, start, end))
    server = _server(records, monitor, start, end, sessions_before, sessions_after)
    if keyed:
        server.update(_keyed_server(records, start, end, replica_monitors, lag_monitor,
                                    cache_monitor))
    return LiveResult(scenario, metrics, server, details, records, list(ctx.connect_durations))


class CpuMeter:
    """CPU used while a run lasts: by this (client) process, and by the whole host.

    The client and a local server share the machine's cores, so when a live
    result falls short of its prediction the first question is whether the
    machine, rather than the database, was the bottleneck.  ``client_cores``
    is this process's CPU seconds per wall second (all threads; 1.0 = one
    core busy, and with the GIL one Python process cannot go far beyond it);
    ``host_busy_cores`` is the same for everything on the host, from
    ``/proc/stat`` (None where there is no /proc).
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


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def _metrics(
    records: list[Record],
    ctx: RunContext,
    monitor: Monitor,
    start: float,
    end: float,
    cutoff: float,
    run_end: float,
    scenario: Scenario | None = None,
) -> dict[str, float]:
    duration = end - start
    nan = math.nan
    window = [r for r in records if start <= r.scheduled < end]
    n = len(window)
    finished = [
        r
        for r in window
        if r.outcome is not None and r.finished is not None and r.finished <= cutoff
    ]
    ok = [r for r in finished if r.outcome == OK]
    started = [r for r in window if r.started is not None]
    lag = np.array([r.started - r.scheduled for r in started]) * 1000.0
    busy = sum(
        _overlap(
            r.got, r.released if r.released is not None else (r.finished or run_end), start, end
        )
        for r in records
        if r.got is not None
    )
    in_flight = sum(
        _overlap(r.scheduled, r.finished if r.finished is not None else run_end, start, end)
        for r in records
    )
    values = metric_values(
        duration=duration,
        arrivals=n,
        completed=len(ok),
        waited=sum(1 for r in finished if r.waited),
        timeouts=sum(1 for r in finished if r.outcome == TIMEOUT),
        errors=sum(1 for r in finished if r.outcome == ERROR),
        opened=sum(1 for t in ctx.connects if start <= t < end),
        latency=[r.finished - r.scheduled for r in ok],
        checkout=[r.got - r.scheduled for r in finished if r.got is not None],
        query=[r.query_done - r.got for r in ok if r.query_done is not None],
        connections_mean=monitor.time_average(start, end),
        busy_mean=busy / duration,
        in_flight_mean=in_flight / duration,
        **(_keyed_counts(scenario, finished) if scenario is not None and is_keyed(scenario)
           else {}),
    )
    values.update(
        achieved_rate_rps=sum(1 for r in started if r.started < end) / duration,
        scheduler_lag_mean_ms=float(lag.mean()) if lag.size else nan,
        scheduler_lag_p99_ms=float(np.percentile(lag, 99)) if lag.size else nan,
    )
    assert set(METRICS) <= set(values)
    return values


#: Two times closer than this are "the same moment" when judging overtaking.
OVERTAKE_EPS = 0.0002


def overtaken(records: list[Record], start: float, end: float) -> dict[str, float | int]:
    """How FIFO the pool's waiting really was: waiting requests overtaken by later ones.

    A window request that waited is *overtaken* when some request that
    started later got a connection more than ``OVERTAKE_EPS`` earlier.  In a
    FIFO pool (simlib's model, psycopg_pool, asyncpg) that cannot happen.
    SQLAlchemy's QueuePool hands a returned connection to its queue and
    notifies one waiter, but a thread that calls ``get()`` before the woken
    waiter has re-taken the lock (and the GIL) takes it first: the waiter
    goes back to waiting.
    """
    rs = sorted((r for r in records if start <= r.scheduled < end and r.got is not None),
                key=lambda r: r.started)
    waited = count = 0
    earliest_later = math.inf  # earliest connection time among later-started requests
    for r in reversed(rs):
        if r.waited:
            waited += 1
            count += earliest_later < r.got - OVERTAKE_EPS
        earliest_later = min(earliest_later, r.got)
    return {"waited": waited, "overtaken": count,
            "share": count / waited if waited else 0.0}


def _extra_details(records: list[Record], ctx: RunContext, start: float, end: float) -> dict:
    window = [r for r in records if start <= r.scheduled < end]
    errors = collections.Counter(r.error for r in window if r.error)
    connect = np.array(ctx.connect_durations) * 1000.0
    return {
        "requests_total": len(records),
        "requests_window": len(window),
        "connects_total": len(ctx.connects),
        "connect_ms": {
            "count": int(connect.size),
            "mean": float(connect.mean()) if connect.size else None,
            "p50": float(np.percentile(connect, 50)) if connect.size else None,
            "p95": float(np.percentile(connect, 95)) if connect.size else None,
        },
        "errors_top": [{"error": e, "count": c} for e, c in errors.most_common(5)],
        "overtaken": overtaken(records, start, end),
    }


def _server(
    records: list[Record],
    monitor: Monitor,
    start: float,
    end: float,
    sessions_before: int | None,
    sessions_after: int | None,
) -> dict[str, float | int | None]:
    window = [r for r in records if start <= r.scheduled < end]
    started = None
    if sessions_before is not None and sessions_after is not None:
        # minus the two short-lived helper sessions of run_live itself: the
        # monitor and the second sessions reading
        started = max(0, sessions_after - sessions_before - 2)
    return {
        "connections_peak": monitor.peak(),
        "connections_peak_window": monitor.peak(start, end),
        "connections_mean_window": monitor.time_average(start, end),
        "active_mean_window": monitor.time_average(start, end, column=2),
        "backends_seen": len(monitor.pids),
        "backends_started": started,
        "refusals": sum(1 for r in window if r.sqlstate == TOO_MANY_CONNECTIONS),
        "refusals_total": sum(1 for r in records if r.sqlstate == TOO_MANY_CONNECTIONS),
        "monitor_samples": len(monitor.samples),
        "monitor_errors": monitor.errors,
    }


def compare(scenario: Scenario, dsn: str, **kw) -> dict:
    """``labs compare``: see :mod:`labs.compare` (imported here for labs.cli)."""
    from labs.compare import compare as _compare

    return _compare(scenario, dsn, **kw)


def render_compare(doc: dict) -> str:
    """The readable ``labs compare`` table: see :func:`labs.compare.render_compare`."""
    from labs.compare import render_compare as _render

    return _render(doc)


def _keyed_counts(scenario: Scenario, finished: list[Record]) -> dict:
    """simlib's cache, staleness and routing counts, from the window's finished records.

    As simlib.access counts them: every read asks the cache (a failed Redis
    call is a miss: the read went to the database); a read that returned a
    value is stale when its version is older than the newest committed when
    it began; reads by destination count where they were sent, a failover
    counting for the primary that served it.
    """
    reads = [r for r in finished if r.key >= 0 and not r.write]
    counts: dict = {"db_queries": sum(1 for r in finished if r.got is not None)}
    if scenario.cache is not None:
        counts["cache_lookups"] = len(reads)
        counts["cache_hits"] = sum(1 for r in reads if r.source == "cache")
        if scenario.cache.single_flight:
            counts["cache_coalesced"] = sum(1 for r in reads if r.source == "coalesced")
    if scenario.workload.write_fraction > 0:
        returned = [r for r in reads if r.outcome == OK and r.version is not None]
        counts["reads_returned"] = len(returned)
        counts["stale_reads"] = sum(1 for r in returned if r.version < r.newest)
    if scenario.replicas is not None:
        n = scenario.replicas.count
        sources = collections.Counter(r.source for r in reads)
        counts["primary_reads"] = sources.get("primary", 0)
        counts["replica_reads"] = [sources.get(f"replica{i}", 0) for i in range(n)]
    return counts


def _keyed_server(records, start, end, replica_monitors, lag_monitor, cache_monitor) -> dict:
    """The keyed path's facts beside the client's metrics: faults, replicas, Redis."""
    window = [r for r in records if start <= r.scheduled < end]
    out: dict = {
        "cache_errors": sum(1 for r in window if r.cache_error),
        "replica_failovers": sum(1 for r in window if r.failover),
    }
    if replica_monitors:
        out["replica_connections_mean"] = [m.time_average(start, end) for m in replica_monitors]
    if lag_monitor is not None:
        out.update(lag_monitor.summary(start, end))
    if cache_monitor is not None:
        out.update(cache_monitor.summary(start, end))
    return out
