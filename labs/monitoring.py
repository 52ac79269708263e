"""A pool exporter for Prometheus: the pool's own statistics, the server's sessions, latencies.

Production watches a connection pool from outside: the application exposes
numbers on ``/metrics`` and Prometheus scrapes them.  :class:`PoolExporter` is
that exporter for a lesson: a ``prometheus_client`` registry of its own (not the
process-wide default, so two exporters and the tests never collide), served on
a free loopback port by ``prometheus_client.start_http_server`` (a WSGI server
on a daemon thread, which :meth:`PoolExporter.stop` shuts down and joins, so
nothing is left listening), holding custom collectors that read the real
objects *at scrape time*:

* a pool of any of three libraries, under one set of names with a ``pool`` label
  (:data:`POOL_METRICS`), read from what each library itself reports
  (the library's source is the reference, as for :mod:`simlib.pools`):

  metric (gauges, then counters)   QueuePool               psycopg_pool stats   asyncpg Pool
  -------------------------------  ----------------------  -------------------  --------------
  ``dbpool_size``                  size() + max_overflow   pool_max             get_max_size()
  ``dbpool_connections``           size() + overflow()     pool_size            get_size()
  ``dbpool_idle``                  checkedin()             pool_available       get_idle_size()
  ``dbpool_checked_out``           checkedout()            size - available     size - idle
  ``dbpool_overflow``              max(0, overflow())      --                   --
  ``dbpool_waiting``               measured (see below)    requests_waiting     measured
  ``dbpool_requests_total``        measured                requests_num         measured
  ``dbpool_requests_waited_total`` measured                requests_queued      measured
  ``dbpool_wait_seconds_total``    measured                requests_wait_ms     measured
  ``dbpool_checked_out_seconds_total``: ``dbpool_checked_out`` sampled every 10 ms, integrated

  ``rate(dbpool_checked_out_seconds_total)`` over ``dbpool_size`` is the pool's
  time-average utilisation, where ``avg_over_time`` of the once-a-second gauge
  is a mean of a few samples (:class:`PoolsCollector`).  A closed psycopg_pool
  reads as empty: its ``get_stats()`` keeps the count it had (see
  :func:`read_pool`).

  ``dbpool_size`` is the most connections the pool hands out at once (the *c*
  of M/M/c), so ``dbpool_checked_out / dbpool_size`` is the pool's saturation;
  QueuePool's own ``size()`` is only ``pool_size``, and its ``overflow()`` is
  ``connections - pool_size``, negative until the pool has filled (it starts
  at ``-pool_size``), hence the ``max(0, ...)``.  A QueuePool with
  ``pool_size = 0`` has no limit: ``dbpool_size`` is ``+Inf``.
  SQLAlchemy and asyncpg count no waits, so the exporter measures them by
  timing the pool's own "get a connection" call on that pool object --
  ``QueuePool._do_get`` (what every ``connect()`` and ``engine.connect()``
  calls; SQLAlchemy's pool events fire only once a connection is in hand, so
  none marks the start of a wait) and asyncpg's ``Pool._acquire`` (what
  ``acquire()`` awaits).  A checkout *waited* when the pool was at its limit
  as it began: for QueuePool the condition ``_do_get`` itself tests (no idle
  connection, overflow used up), for asyncpg an empty holder queue -- the
  same rules the live drivers use for ``p_wait`` (read without the pool's
  lock: a close approximation under contention).  psycopg_pool counts its own
  (``requests_queued``: a request that found no idle connection and joined the
  waiting queue), so its counters are the library's; the exporter times
  ``getconn`` only for the histogram.
* :class:`ActivityCollector`: ``pg_stat_activity`` through a separate admin
  connection: client backends by database and state (``active``, ``idle``,
  ``idle in transaction``, ...; its own session left out) as
  ``pg_stat_activity_count``, and ``max_connections`` as
  ``pg_settings_max_connections`` -- the names postgres_exporter uses, so the
  dashboard also works against a real one;
* two histograms with buckets for millisecond-scale database requests
  (:data:`LATENCY_BUCKETS`): ``dbpool_request_duration_seconds`` (arrival to
  response, fed by :meth:`PoolExporter.observe_request` or from a live run's
  records, :meth:`PoolExporter.observe_run`) and
  ``dbpool_checkout_wait_seconds`` (the pool's own get, from the timing above).

The PromQL a lesson asks and the dashboard draws is in one place,
:data:`QUERIES`; ``labs/grafana/dbpool-dashboard.json`` is generated from it by
:func:`dashboard` (``python -m labs.monitoring`` rewrites it; a test keeps it
current).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from labs.records import Record

__all__ = [
    "DASHBOARD_PATH",
    "LATENCY_BUCKETS",
    "POOL_METRICS",
    "QUERIES",
    "ActivityCollector",
    "PoolExporter",
    "PoolReading",
    "dashboard",
    "library_pool",
    "read_pool",
]

#: Histogram buckets (seconds) for database requests of a fraction of a ms to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)

#: The pool metrics every library's pool is exported as (see the module doc's table).
POOL_METRICS = {
    "dbpool_size": "most connections the pool hands out at once (QueuePool: pool_size + "
                   "max_overflow; psycopg_pool: max_size; asyncpg: max_size)",
    "dbpool_connections": "connections the pool holds open now, checked out or idle",
    "dbpool_idle": "open connections idle in the pool",
    "dbpool_checked_out": "connections checked out (busy) now",
    "dbpool_overflow": "QueuePool: overflow connections open beyond pool_size",
    "dbpool_waiting": "checkouts waiting for a connection now",
    "dbpool_requests": "checkouts asked of the pool",
    "dbpool_requests_waited": "checkouts that found the pool at its limit and waited",
    "dbpool_wait_seconds": "seconds checkouts spent waiting, summed",
    "dbpool_checked_out_seconds": "connections checked out, integrated over time (the "
                                  "exporter samples the pool every 10 ms): its rate() is the "
                                  "mean number busy",
}

#: The queries a lesson asks and the dashboard draws, by name (one place for both).
#: ``$window`` is a range, ``$threshold`` the alert's utilisation (labs.alerts).
QUERIES: dict[str, str] = {
    "p_wait": "sum by (pool) (rate(dbpool_requests_waited_total[$window])) / "
              "sum by (pool) (rate(dbpool_requests_total[$window]))",
    "saturation": "sum by (pool) (dbpool_checked_out) / sum by (pool) (dbpool_size)",
    "saturation_avg": "sum by (pool) (avg_over_time(dbpool_checked_out[$window])) / "
                      "sum by (pool) (dbpool_size)",
    "utilisation": "sum by (pool) (rate(dbpool_checked_out_seconds_total[$window])) / "
                   "sum by (pool) (dbpool_size)",
    "alert_threshold": "vector($threshold)",
    "server_connections": "sum(pg_stat_activity_count)",
    "max_connections": "max(pg_settings_max_connections)",
    "connections_share": "sum(pg_stat_activity_count) / max(pg_settings_max_connections)",
    "activity_ratio": "sum by (state) (pg_stat_activity_count) / "
                      "scalar(sum(pg_stat_activity_count))",
    "latency_p99_ms": "1000 * histogram_quantile(0.99, sum by (le, pool) "
                      "(rate(dbpool_request_duration_seconds_bucket[$window])))",
    "checkout_wait_p99_ms": "1000 * histogram_quantile(0.99, sum by (le, pool) "
                            "(rate(dbpool_checkout_wait_seconds_bucket[$window])))",
}


def query(name: str, window: str = "30s", threshold: float | None = None) -> str:
    """The PromQL of :data:`QUERIES` ``name`` with ``$window`` (and ``$threshold``) filled in."""
    if name not in QUERIES:
        raise KeyError(f"query: must be one of {', '.join(QUERIES)}, got {name!r}")
    if not re.fullmatch(r"[0-9]+(ms|s|m|h)", window):
        raise ValueError(f"window: must be a Prometheus duration such as 30s or 1m, "
                         f"got {window!r}")
    text = QUERIES[name].replace("$window", window)
    if "$threshold" in text:
        if threshold is None or not 0 < threshold <= 1:
            raise ValueError(f"threshold: must be a utilisation in (0, 1], got {threshold!r}")
        text = text.replace("$threshold", f"{threshold:.6g}")
    return text


# ---------------------------------------------------------------------------
# Reading a pool, whatever its library
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolReading:
    """One pool's numbers at one instant, under the exporter's names (None: not reported)."""

    library: str
    size: float
    connections: float
    idle: float
    checked_out: float
    overflow: float | None
    waiting: float
    requests: float
    waited: float
    wait_seconds: float


class CheckoutMeter:
    """Counts and times the checkouts of one pool whose library counts none itself."""

    def __init__(self, histogram: Histogram | None, pool_name: str) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.waited = 0
        self.waiting = 0
        self.wait_seconds = 0.0
        self._histogram = histogram.labels(pool=pool_name) if histogram is not None else None

    def begin(self, at_limit: bool) -> None:
        with self._lock:
            self.requests += 1
            if at_limit:
                self.waited += 1
                self.waiting += 1

    def end(self, at_limit: bool, seconds: float) -> None:
        with self._lock:
            if at_limit:
                self.waiting -= 1
                self.wait_seconds += seconds
        if self._histogram is not None:
            self._histogram.observe(seconds)


def _queuepool_at_limit(pool: Any) -> bool:
    """QueuePool's own "must wait" test in ``_do_get`` (see labs.drivers.sqlalchemy)."""
    return bool(pool._max_overflow > -1 and pool._overflow >= pool._max_overflow
                and pool._pool.qsize() == 0)


def _metered_class(pool: Any, method: str, at_limit: Callable[[Any], bool],
                   meter: CheckoutMeter, asynchronous: bool) -> None:
    """Time ``pool.<method>`` -- the library's own "get a connection" -- on that one pool.

    The pool's class is swapped for a subclass of it (``__slots__ = ()``, so it
    fits asyncpg's slotted ``Pool`` too) whose ``method`` counts and times the
    call around the library's own; every other pool of the class is untouched.
    Watching a pool again replaces its meter.  A SQLAlchemy pool recreated by
    ``engine.dispose()`` (``self.__class__(...)``) keeps the meter.
    """
    base = getattr(type(pool), "_labs_base", type(pool))
    original = getattr(base, method)

    if asynchronous:
        async def timed_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            waits = at_limit(self)
            meter.begin(waits)
            t0 = time.perf_counter()
            try:
                return await original(self, *args, **kwargs)
            finally:
                meter.end(waits, time.perf_counter() - t0)

        timed: Callable[..., Any] = timed_async
    else:
        def timed_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
            waits = at_limit(self)
            meter.begin(waits)
            t0 = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                meter.end(waits, time.perf_counter() - t0)

        timed = timed_sync
    metered = type(base.__name__, (base,), {"__slots__": (), method: timed,
                                            "_labs_base": base, "_labs_meter": meter,
                                            "__module__": base.__module__})
    pool.__class__ = metered


def _unmetered(pool: Any) -> None:
    """Give a watched pool its own class back."""
    base = getattr(type(pool), "_labs_base", None)
    if base is not None:
        pool.__class__ = base


def _library(obj: Any) -> str:
    module = type(obj).__module__
    if module.startswith("sqlalchemy"):
        return "sqlalchemy"
    if module.startswith("psycopg_pool"):
        return "psycopg_pool"
    if module.startswith("asyncpg"):
        return "asyncpg"
    raise TypeError(f"pool: must be a SQLAlchemy Engine/AsyncEngine/QueuePool, a psycopg_pool "
                    f"ConnectionPool or an asyncpg Pool, got {type(obj).__module__}."
                    f"{type(obj).__name__}")


def _queuepool(obj: Any) -> Any:
    """The QueuePool behind an Engine, an AsyncEngine or the pool itself (read each time:
    ``engine.dispose()`` replaces ``engine.pool``)."""
    obj = getattr(obj, "sync_engine", obj)
    pool = getattr(obj, "pool", obj)
    if not hasattr(pool, "_do_get") or not hasattr(pool, "checkedout"):
        raise TypeError(f"pool: a SQLAlchemy pool must be a QueuePool (or an engine using "
                        f"one), got {type(pool).__name__}")
    return pool


def read_pool(obj: Any, meter: CheckoutMeter | None = None) -> PoolReading:
    """What the pool ``obj`` reports now, under the exporter's names (see the module doc).

    ``meter``: the waits measured for a library that counts none (SQLAlchemy,
    asyncpg); without one they read 0.
    """
    library = _library(obj)
    m = meter or CheckoutMeter(None, "")
    if library == "sqlalchemy":
        pool = _queuepool(obj)
        size, overflow = pool.size(), pool.overflow()
        limit = (math.inf if pool._max_overflow == -1 else float(size + pool._max_overflow))
        return PoolReading(library, limit, float(size + overflow), float(pool.checkedin()),
                           float(pool.checkedout()), float(max(0, overflow)), float(m.waiting),
                           float(m.requests), float(m.waited), m.wait_seconds)
    if library == "psycopg_pool":
        stats = obj.get_stats()
        n, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        if obj.closed:
            # close() empties the pool but leaves its count (_nconns) as it was, so
            # get_stats() of a closed pool says pool_size N, pool_available 0: read
            # naively, every connection of a closed pool would look checked out
            n = idle = 0
        return PoolReading(library, float(stats.get("pool_max", 0)), float(n), float(idle),
                           float(n - idle), None, float(stats.get("requests_waiting", 0)),
                           float(stats.get("requests_num", 0)),
                           float(stats.get("requests_queued", 0)),
                           stats.get("requests_wait_ms", 0) / 1000.0)
    n, idle = obj.get_size(), obj.get_idle_size()
    return PoolReading(library, float(obj.get_max_size()), float(n), float(idle),
                       float(n - idle), None, float(m.waiting), float(m.requests),
                       float(m.waited), m.wait_seconds)


def library_pool(driver: Any) -> Any:
    """The library's pool behind a live driver (labs.drivers), for :meth:`PoolExporter.watch`.

    The keyed path's driver gives its primary's; SQLAlchemy drivers give the
    engine (its pool is read through it).
    """
    driver = getattr(driver, "primary", driver)
    for attr in ("engine", "pool"):
        found = getattr(driver, attr, None)
        if found is not None:
            return found
    raise TypeError(f"driver: must have an open pool (.engine or .pool), got "
                    f"{type(driver).__name__} with none; watch it after it is opened")


class PoolsCollector(Collector):
    """Every watched pool's :class:`PoolReading`, one metric family per name, ``pool`` label.

    Besides what a scrape reads, a sampler thread reads every pool's checked-out
    count every ``interval`` s (10 ms) and integrates it over time into
    ``dbpool_checked_out_seconds_total``.  Why: Prometheus scrapes a gauge once a
    second, and the busy count of a pool with 20 ms holds changes fifty times
    between two scrapes, so ``avg_over_time`` of the gauge is the mean of a few
    random samples (its standard error over 12 s is tens of percent of a busy
    pool's utilisation); ``rate()`` of the integral is the time average itself,
    up to the 10 ms sampling.  The integral follows the *name*: watching another
    pool under the same name (a second run) continues the same counter.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self._pools: dict[str, tuple[Any, CheckoutMeter]] = {}
        self._lock = threading.Lock()
        self.interval = interval
        self._busy_seconds: dict[str, float] = {}
        self._last: dict[str, tuple[float, float]] = {}  # name -> (time, checked out)
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def add(self, name: str, obj: Any, meter: CheckoutMeter) -> None:
        with self._lock:
            self._pools[name] = (obj, meter)
            self._busy_seconds.setdefault(name, 0.0)
            self._last.pop(name, None)
            if self._sampler is None:
                self._sampler = threading.Thread(target=self._sample, daemon=True,
                                                 name="labs-exporter-sampler")
                self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()

    def sample_once(self) -> None:
        """Read every pool's checked-out count now and add the last count × elapsed time
        (left rectangles: the count held since the previous sample)."""
        with self._lock:
            pools = list(self._pools.items())
        for name, (obj, meter) in pools:
            try:
                busy = read_pool(obj, meter).checked_out
            except Exception:  # noqa: BLE001 - a pool that cannot be read has none busy
                busy = 0.0
            now = time.monotonic()
            with self._lock:
                last = self._last.get(name)
                if last is not None:
                    self._busy_seconds[name] += last[1] * (now - last[0])
                self._last[name] = (now, busy)

    def busy_seconds(self, name: str) -> float:
        """``dbpool_checked_out_seconds_total`` of ``name`` now (0 for an unknown name)."""
        with self._lock:
            return self._busy_seconds.get(name, 0.0)

    def stop(self) -> None:
        """Stop the sampler thread (joined)."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)

    def remove(self, name: str) -> Any:
        """Stop reading the pool ``name``; the pool object, or None if there was none."""
        with self._lock:
            entry = self._pools.pop(name, None)
        return entry[0] if entry is not None else None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._pools)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            pools = list(self._pools.items())
        gauges = {key: GaugeMetricFamily(key, POOL_METRICS[key], labels=["pool", "library"])
                  for key in ("dbpool_size", "dbpool_connections", "dbpool_idle",
                              "dbpool_checked_out", "dbpool_overflow", "dbpool_waiting")}
        counters = {key: CounterMetricFamily(key, POOL_METRICS[key], labels=["pool", "library"])
                    for key in ("dbpool_requests", "dbpool_requests_waited",
                                "dbpool_wait_seconds", "dbpool_checked_out_seconds")}
        for name, (obj, meter) in pools:
            try:
                r = read_pool(obj, meter)
            except Exception:  # noqa: BLE001 - a closed pool must not fail the whole scrape
                continue
            labels = [name, r.library]
            for key, value in (("dbpool_size", r.size), ("dbpool_connections", r.connections),
                               ("dbpool_idle", r.idle), ("dbpool_checked_out", r.checked_out),
                               ("dbpool_waiting", r.waiting)):
                gauges[key].add_metric(labels, value)
            if r.overflow is not None:
                gauges["dbpool_overflow"].add_metric(labels, r.overflow)
            counters["dbpool_requests"].add_metric(labels, r.requests)
            counters["dbpool_requests_waited"].add_metric(labels, r.waited)
            counters["dbpool_wait_seconds"].add_metric(labels, r.wait_seconds)
            counters["dbpool_checked_out_seconds"].add_metric(labels, self.busy_seconds(name))
        yield from gauges.values()
        yield from counters.values()


# ---------------------------------------------------------------------------
# pg_stat_activity
# ---------------------------------------------------------------------------

#: The states of ``pg_stat_activity.state`` always exported (0 when none), so ratios exist.
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")

ACTIVITY_SQL = """
SELECT coalesce(datname, ''), coalesce(state, 'unknown'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""


class ActivityCollector(Collector):
    """``pg_stat_activity`` client backends by database and state, and ``max_connections``.

    Read at every scrape through one admin connection of its own (psycopg2,
    autocommit, reopened after a failure), which it leaves out of the counts.
    ``databases``: the databases whose states are always exported, zeros
    included (default: the admin connection's own).
    """

    def __init__(self, admin_dsn: str, databases: Sequence[str] | None = None) -> None:
        if not isinstance(admin_dsn, str) or not admin_dsn.strip():
            raise ValueError(f"admin_dsn: must be a Postgres connection string, got {admin_dsn!r}")
        self.admin_dsn = admin_dsn
        self._databases = list(databases) if databases is not None else None
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.admin_dsn, connect_timeout=3,
                                          application_name="labs-exporter")
            self._conn.autocommit = True
            if self._databases is None:
                with self._conn.cursor() as cur:
                    cur.execute("SELECT current_database()")
                    self._databases = [cur.fetchone()[0]]
        return self._conn

    def read(self) -> tuple[dict[tuple[str, str], int], int]:
        """``({(database, state): count}, max_connections)`` now."""
        with self._lock:
            try:
                with self._connection().cursor() as cur:
                    cur.execute(ACTIVITY_SQL)
                    rows = cur.fetchall()
                    cur.execute("SELECT current_setting('max_connections')::int")
                    limit = int(cur.fetchone()[0])
            except Exception:
                self.close()
                raise
        counts = {(db, state): 0 for db in self._databases or [] for state in STATES}
        for db, state, n in rows:
            counts[(db, state)] = int(n)
        return counts, limit

    def collect(self) -> Iterable[Metric]:
        try:
            counts, limit = self.read()
        except Exception:  # noqa: BLE001 - the server away: no series this scrape
            return
        activity = GaugeMetricFamily("pg_stat_activity_count",
                                     "client backends by database and state (pg_stat_activity)",
                                     labels=["datname", "state"])
        for (db, state), n in sorted(counts.items()):
            activity.add_metric([db, state], n)
        yield activity
        yield GaugeMetricFamily("pg_settings_max_connections",
                                "the server's max_connections setting", value=limit)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# ---------------------------------------------------------------------------
# The exporter
# ---------------------------------------------------------------------------


class PoolExporter:
    """A ``/metrics`` endpoint on 127.0.0.1 for the pools it watches (see the module doc).

    ::

        with PoolExporter() as exporter:          # serving on a free loopback port
            exporter.watch("app", engine)         # a SQLAlchemy engine, psycopg_pool, asyncpg
            exporter.watch_activity(admin_dsn)    # pg_stat_activity and max_connections
            prometheus.add_target("app", exporter.address)
    """

    def __init__(self, port: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.pools = PoolsCollector()
        self.registry.register(self.pools)
        self.latency = Histogram("dbpool_request_duration_seconds",
                                 "requests from arrival to response", ["pool"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.checkout_wait = Histogram("dbpool_checkout_wait_seconds",
                                       "the pool's own get of a connection (waiting, and "
                                       "opening one when it had to)", ["pool"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self._activity: list[ActivityCollector] = []
        self._runs: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._start(port)

    def _start(self, port: int) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port: must be 0 (a free one) or 1..65535, got {port!r}")
        self._server, self._thread = start_http_server(port, addr="127.0.0.1",
                                                       registry=self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what :meth:`PrometheusServer.add_target` takes."""
        return f"127.0.0.1:{self.port}"

    def watch(self, name: str, pool: Any) -> None:
        """Export ``pool`` (an engine or QueuePool, a psycopg_pool pool, an asyncpg pool,
        or a live driver) as ``pool=name``; measure its checkouts where the library
        counts none.  Watching another pool under the same name replaces it."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
            raise ValueError(f"name: must be 1-64 letters, digits or _.:-, got {name!r}")
        if hasattr(pool, "opening") and hasattr(pool, "details"):  # a labs driver
            pool = library_pool(pool)
        library = _library(pool)
        meter = CheckoutMeter(self.checkout_wait, name)
        if library == "sqlalchemy":
            _metered_class(_queuepool(pool), "_do_get", _queuepool_at_limit, meter, False)
        elif library == "psycopg_pool":  # counts its own waits: timed for the histogram
            _metered_class(pool, "getconn", lambda p: not p._pool, meter, False)
        else:
            _metered_class(pool, "_acquire", lambda p: bool(p._queue.empty()), meter, True)
        self.pools.add(name, pool, meter)

    def forget(self, name: str) -> None:
        """Stop exporting the pool ``name`` and give it its own class back."""
        obj = self.pools.remove(name)
        if obj is not None:
            with contextlib.suppress(TypeError):
                _unmetered(_queuepool(obj) if _library(obj) == "sqlalchemy" else obj)

    def watch_activity(self, admin_dsn: str, databases: Sequence[str] | None = None
                       ) -> ActivityCollector:
        """Export ``pg_stat_activity`` and ``max_connections`` read through ``admin_dsn``."""
        collector = ActivityCollector(admin_dsn, databases)
        self.registry.register(collector)
        self._activity.append(collector)
        return collector

    def observe_request(self, pool: str, seconds: float) -> None:
        """One request's latency (arrival to response), into the latency histogram."""
        if not seconds >= 0:
            raise ValueError(f"seconds: must be >= 0, got {seconds!r}")
        self.latency.labels(pool=pool).observe(seconds)

    def observe_run(self, name: str, records: Sequence[Record], interval: float = 0.25) -> None:
        """Feed the latency histogram from a live run's records as requests finish.

        ``records``: the list the load generator appends to (the executor's
        ``observe`` hook hands it over); a daemon thread looks at it every
        ``interval`` s and observes each finished successful request's
        ``finished - scheduled`` (the contract's latency), until :meth:`stop`.
        """
        child = self.latency.labels(pool=name)

        def follow() -> None:
            seen = 0
            pending: list[Record] = []
            while True:
                stopping = self._stopping.wait(interval)
                new = records[seen:]
                seen += len(new)
                still = []
                for rec in (*pending, *new):
                    if rec.finished is None:
                        still.append(rec)
                    elif rec.outcome == 0:
                        child.observe(max(0.0, rec.finished - rec.scheduled))
                pending = still
                if stopping:
                    return

        thread = threading.Thread(target=follow, name=f"labs-exporter-{name}", daemon=True)
        thread.start()
        self._runs.append(thread)

    def observer(self, name: str = "app") -> Callable[[Any, Sequence[Record]], None]:
        """A callback for ``run_live(..., observe=...)`` / ``Lab.measure(..., observe=...)``:
        watches the run's pool as ``name`` and follows its records' latencies."""

        def observe(driver: Any, records: Sequence[Record]) -> None:
            self.watch(name, driver)
            self.observe_run(name, records)

        return observe

    def text(self) -> str:
        """The exposition ``/metrics`` serves now (for a look without Prometheus)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def stop(self) -> None:
        """Shut the HTTP server down (its port is free afterwards), join its threads."""
        self._stopping.set()
        self.pools.stop()
        for thread in self._runs:
            thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for collector in self._activity:
            collector.close()

    def __enter__(self) -> PoolExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# The Grafana dashboard, from QUERIES
# ---------------------------------------------------------------------------

DASHBOARD_PATH = Path(__file__).with_name("grafana") / "dbpool-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

#: (title, unit, [(query name, legend)], max) of each panel, in order.
PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...], float | None], ...] = (
    ("P(wait): share of checkouts that waited", "percentunit",
     (("p_wait", "{{pool}}"),), 1.0),
    ("Saturation: checked out / pool size, with the alert threshold", "percentunit",
     (("saturation", "{{pool}}"), ("saturation_avg", "{{pool}} (avg $window)"),
      ("utilisation", "{{pool}} (time average, $window)"),
      ("alert_threshold", "alert threshold")), 1.0),
    ("Postgres connections against max_connections", "short",
     (("server_connections", "client backends"), ("max_connections", "max_connections")),
     None),
    ("pg_stat_activity: share of sessions by state", "percentunit",
     (("activity_ratio", "{{state}}"),), 1.0),
    ("Latency p99 (ms), from the histogram", "ms",
     (("latency_p99_ms", "{{pool}} p99"), ("checkout_wait_p99_ms", "{{pool}} checkout p99")),
     None),
)


def dashboard(threshold: float = 0.8, window: str = "30s") -> dict[str, Any]:
    """The Grafana dashboard (importable JSON) drawing :data:`QUERIES`.

    Every panel and target names the datasource ``${DS_PROMETHEUS}``, declared
    in ``__inputs`` so Grafana asks for a Prometheus datasource on import; the
    alert threshold is a dashboard constant ``threshold`` (``$threshold``).
    """
    panels = []
    for i, (title, unit, targets, top) in enumerate(PANELS):
        defaults: dict[str, Any] = {"unit": unit, "min": 0}
        if top is not None:
            defaults["max"] = top
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": dict(DATASOURCE),
                 "expr": QUERIES[name], "legendFormat": legend}
                for j, (name, legend) in enumerate(targets)
            ],
        })
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "datasource", "id": "prometheus", "name": "Prometheus",
                        "version": "1.0.0"},
                       {"type": "panel", "id": "timeseries", "name": "Time series",
                        "version": ""}],
        "title": "dbperf-course: a connection pool in production",
        "uid": "dbperf-dbpool",
        "schemaVersion": 38,
        "version": 1,
        "editable": True,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "tags": ["dbperf-course", "connection-pool"],
        "templating": {"list": [
            {"name": "window", "type": "constant", "query": window, "hide": 2,
             "label": "rate window"},
            {"name": "threshold", "type": "constant", "query": f"{threshold:g}", "hide": 2,
             "label": "alert threshold (utilisation, from labs.alerts)"},
        ]},
        "panels": panels,
    }


def dashboard_text(threshold: float = 0.8) -> str:
    """:func:`dashboard` as the committed file's text."""
    return json.dumps(dashboard(threshold), indent=2) + "\n"


def write_dashboard(path: Path = DASHBOARD_PATH) -> Path:
    """Rewrite the committed dashboard from :data:`QUERIES`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_text())
    return path


if __name__ == "__main__":
    print(write_dashboard())
