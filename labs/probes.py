"""The servers' side of a run: probes that watch Postgres and Redis while the load runs.

A **probe** samples one server on its own connection and thread while a run
lasts, and sums up what it saw over the measured window.  Every probe has the
same three methods -- ``start()``, ``stop()`` and ``summary(start, end)``, a
dict of facts for the run's ``server`` document -- so the executor keeps a
list of them and a new tier brings its own (a PgBouncer ``SHOW POOLS`` probe
is one class here):

* :class:`Monitor` samples ``pg_stat_activity`` every ~50 ms (own
  application_name, so it never counts itself) and records, for the run's
  application_name: open backends, backends running a query (``state =
  'active'``), backends ``idle in transaction``, the count by every state,
  and every backend pid seen.  Time averages come from these samples as a
  step function; ``connections_mean`` and ``idle_in_transaction_mean`` are
  two.  The states come with the rows the connection count reads anyway
  (one query, the same 50 ms), so they cost nothing extra and are always
  sampled, leaks or not.
* :class:`ReplicaMonitors`: one :class:`Monitor` per streaming replica.
* :class:`ReplicationMonitor`: replication lag as the primary reports it.
* :class:`CacheMonitor`: keys held, evictions, expiries and memory in Redis.
* :class:`ServerMonitor`: every backend of the run's *user*, whoever opened
  it: the connections Postgres counts against ``max_connections`` when a
  fleet's processes or PgBouncer's servers stand between the run and the
  server (``server_connections_*``).
* :class:`PgBouncerMonitor`: PgBouncer's ``SHOW POOLS`` every ~50 ms
  (``cl_waiting``, ``sv_active``, ``maxwait``) and ``SHOW STATS`` every
  ~0.25 s, whose ``total_wait_time / total_xact_count`` over the window is
  ``pgbouncer_wait_mean_ms`` (and ``total_xact_time / total_xact_count``
  ``pgbouncer_xact_mean_ms``).

Two one-off reads complete the server's view: ``sessions`` of
``pg_stat_database`` (Postgres 14+) before and after the run
(:func:`database_sessions`: backends started meanwhile; it counts every
session on that database, ours and anyone else's, and is flushed by each
backend at exit at the latest, so it is read after the run's connections are
closed; :func:`session_counts` adds ``sessions_fatal``, the sessions a FATAL
error such as an idle-in-transaction timeout ended), and
:func:`cancel_backends`, which cancels our queries still running when a run
has to stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import psycopg2
import redis

from labs.pgbouncer_admin import Console, pool_of, stats_of

__all__ = [
    "BACKENDS",
    "IDLE_IN_TRANSACTION",
    "CacheMonitor",
    "Monitor",
    "PgBouncerMonitor",
    "Probe",
    "ReplicaMonitors",
    "ReplicationMonitor",
    "ServerMonitor",
    "cancel_backends",
    "database_sessions",
    "session_counts",
    "step_average",
]

SAMPLE_INTERVAL = 0.05

Clock = Callable[[], float]


class Probe(Protocol):
    """What the executor asks of a server-side sampler (the hooks a new probe implements)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def summary(self, start: float, end: float) -> dict[str, object]: ...


def _connect(dsn: str, app: str) -> Any:
    conn = psycopg2.connect(dsn, application_name=app)
    conn.autocommit = True  # every statement its own snapshot of the statistics
    return conn


def database_sessions(dsn: str) -> int | None:
    """``pg_stat_database.sessions`` for the DSN's database (None before Postgres 14)."""
    return session_counts(dsn)["sessions"]


def session_counts(dsn: str) -> dict[str, int | None]:
    """``pg_stat_database``'s ``sessions`` and ``sessions_fatal`` for the DSN's database.

    ``sessions_fatal`` counts the sessions a FATAL error ended -- an
    idle-in-transaction timeout is one -- on the whole database, ours and
    anyone else's.  None before Postgres 14.
    """
    conn = _connect(dsn, "labs-stats")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            try:
                cur.execute(
                    "SELECT sessions, sessions_fatal FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            except psycopg2.Error:
                return {"sessions": None, "sessions_fatal": None}
            row = cur.fetchone()
            if not row:
                return {"sessions": None, "sessions_fatal": None}
            return {"sessions": int(row[0]), "sessions_fatal": int(row[1])}
    finally:
        conn.close()


def cancel_backends(dsn: str, app: str) -> int:
    """Cancel the running queries of our run's backends; returns how many."""
    conn = _connect(dsn, "labs-stop")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND state = 'active'",
                (app,),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


class _Sampler:
    """A background thread calling ``sample()`` every ``interval`` seconds until stopped.

    Subclasses implement ``sample()`` (a tuple, or None to skip), ``close()``
    and ``summary()``.  Samples are ``(time, *values)``; a failed sample (a
    server gone, in a fault test) is counted in ``errors``.
    """

    def __init__(self, clock: Clock, interval: float) -> None:
        self.clock = clock  # () -> run-relative seconds
        self.interval = interval
        self.samples: list[tuple[Any, ...]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labs-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # not started when the run failed before it began
            self._thread.join(timeout=5.0)
        self.close()

    def close(self) -> None:
        pass

    def sample(self) -> tuple[Any, ...] | None:
        raise NotImplementedError

    def _loop(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            try:
                row = self.sample()
            except Exception:  # noqa: BLE001 - a server gone (fault tests) is counted
                self.errors += 1
                row = None
            if row is not None:
                self.samples.append((self.clock(), *row))
            # Every ``interval`` from the first sample on, however long one took.
            next_t += self.interval
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.perf_counter()

    def _window(self, start: float, end: float) -> list[tuple[Any, ...]]:
        return [s for s in self.samples if start <= s[0] < end]


def step_average(times: Sequence[float], values: Sequence[float], start: float,
                 end: float) -> float:
    """Time average over [start, end) of samples held as steps (NaN without any).

    Each sample holds until the next one (the last until ``end``); the first
    also stands for the time before it.
    """
    if not times or end <= start:
        return float("nan")
    t = np.array(times, dtype=float)
    v = np.array(values, dtype=float)
    t[0] = min(t[0], start)
    nxt = np.append(t[1:], max(end, t[-1]))
    widths = np.clip(np.minimum(nxt, end) - np.maximum(t, start), 0.0, None)
    covered = widths.sum()
    return float((v * widths).sum() / covered) if covered > 0 else float("nan")


#: The columns of a :class:`Monitor` sample after its time.
BACKENDS, ACTIVE, IDLE_IN_TRANSACTION, STATES = 1, 2, 3, 4


class Monitor(_Sampler):
    """Samples our backends in pg_stat_activity.

    A sample is ``(t, backends, active, idle in transaction, states)``,
    ``states`` a tuple of ``(state, count)`` pairs (a backend still starting
    has no state yet: ``"starting"``).
    """

    SQL = "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s"

    def __init__(self, dsn: str, app: str, clock: Clock, interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(clock, interval)
        self.dsn = dsn
        self.app = app
        self.pids: set[int] = set()
        self._conn = _connect(dsn, app + "-monitor")
        self._cur = self._conn.cursor()

    @property
    def connection(self) -> Any:
        """The monitor's session (a superuser's, in the slot labs sets aside)."""
        return self._conn

    def close(self) -> None:
        try:
            self._conn.close()
        except psycopg2.Error:
            pass

    def sample(self) -> tuple[int, int, int, tuple[tuple[str, int], ...]]:
        self._cur.execute(self.SQL, (self.app,))
        rows = self._cur.fetchall()
        self.pids.update(pid for pid, _ in rows)
        states: dict[str, int] = {}
        for _, state in rows:
            key = state or "starting"
            states[key] = states.get(key, 0) + 1
        return (len(rows), states.get("active", 0), states.get("idle in transaction", 0),
                tuple(sorted(states.items())))

    def time_average(self, start: float, end: float, column: int = 1) -> float:
        """Time average of a sampled column over [start, end), samples held as steps."""
        return step_average([s[0] for s in self.samples], [s[column] for s in self.samples],
                            start, end)

    def peak(self, start: float = -np.inf, end: float = np.inf, column: int = 1) -> int:
        vals = [s[column] for s in self.samples if start <= s[0] < end]
        return int(max(vals)) if vals else 0

    def idle_in_transaction_mean(self, start: float, end: float) -> float:
        """Time average of our backends ``idle in transaction`` over [start, end); 0 unsampled."""
        if not self.samples or len(self.samples[0]) <= IDLE_IN_TRANSACTION:
            return 0.0
        mean = self.time_average(start, end, column=IDLE_IN_TRANSACTION)
        return 0.0 if np.isnan(mean) else mean

    def states(self, start: float, end: float) -> dict[str, object]:
        """Our backends by ``pg_stat_activity.state`` over [start, end): time averages, peaks.

        Each state's count is held, like every column, from one sample to the
        next; a state missing from a sample counts 0 there.
        """
        rows = [s for s in self.samples if len(s) > STATES]
        if not rows:
            return {"idle_in_transaction_mean": 0.0, "idle_in_transaction_peak": 0,
                    "by_state_mean": {}, "by_state_peak": {}, "samples": 0}
        names = sorted({name for s in rows for name, _ in s[STATES]})
        times = [s[0] for s in rows]
        by_state = [dict(s[STATES]) for s in rows]
        by_mean: dict[str, float] = {}
        by_peak: dict[str, int] = {}
        for name in names:
            counts = [states.get(name, 0) for states in by_state]
            by_mean[name] = step_average(times, counts, start, end)
            by_peak[name] = max((c for t, c in zip(times, counts) if start <= t < end),
                                default=0)
        return {
            "idle_in_transaction_mean": self.idle_in_transaction_mean(start, end),
            "idle_in_transaction_peak": self.peak(start, end, column=IDLE_IN_TRANSACTION),
            "by_state_mean": by_mean,
            "by_state_peak": by_peak,
            "samples": sum(1 for t in times if start <= t < end),
        }

    def summary(self, start: float, end: float) -> dict[str, object]:
        return {
            "connections_peak": self.peak(),
            "connections_peak_window": self.peak(start, end),
            "connections_mean_window": self.time_average(start, end),
            "active_mean_window": self.time_average(start, end, column=2),
            "backends_seen": len(self.pids),
            "monitor_samples": len(self.samples),
            "monitor_errors": self.errors,
        }


class ReplicaMonitors:
    """One :class:`Monitor` per streaming replica: our connections on each."""

    def __init__(self, dsns: Sequence[str], app: str, clock: Clock) -> None:
        self.monitors = [Monitor(dsn, app, clock) for dsn in dsns]

    def start(self) -> None:
        for m in self.monitors:
            m.start()

    def stop(self) -> None:
        for m in self.monitors:
            m.stop()

    def time_average(self, start: float, end: float) -> float:
        """Our connections on all replicas together, time average over [start, end)."""
        return sum(m.time_average(start, end) for m in self.monitors)

    def idle_in_transaction_mean(self, start: float, end: float) -> float:
        """Our backends idle in a transaction on all replicas together, time average."""
        return sum(m.idle_in_transaction_mean(start, end) for m in self.monitors)

    def summary(self, start: float, end: float) -> dict[str, object]:
        return {"replica_connections_mean": [m.time_average(start, end) for m in self.monitors]}


class ReplicationMonitor(_Sampler):
    """Replication lag as the primary reports it: ``pg_stat_replication`` every 0.2 s.

    ``replay_lag`` is the time from the primary flushing WAL to the standby
    confirming it has *applied* it; with ``recovery_min_apply_delay`` it
    includes the delay.  Postgres shows NULL once a standby has caught up
    and nothing new arrives, so the averages are over the samples with a value.
    """

    SQL = (
        "SELECT extract(epoch FROM replay_lag), "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
        "FROM pg_stat_replication ORDER BY application_name"
    )

    def __init__(self, dsn: str, clock: Clock, interval: float = 0.2) -> None:
        super().__init__(clock, interval)
        self._conn = _connect(dsn, "labs-replication-monitor")

    def close(self) -> None:
        try:
            self._conn.close()
        except psycopg2.Error:
            pass

    def sample(self) -> tuple[Any, ...]:
        with self._conn.cursor() as cur:
            cur.execute(self.SQL)
            rows = cur.fetchall()
        lags = [float(lag) for lag, _ in rows if lag is not None]
        behind = [float(b) for _, b in rows if b is not None]
        return (max(lags) if lags else None, max(behind) if behind else None, len(rows))

    def summary(self, start: float, end: float) -> dict[str, object]:
        window = self._window(start, end)
        lags = np.array([s[1] for s in window if s[1] is not None]) * 1000.0
        behind = [s[2] for s in window if s[2] is not None]
        return {
            "replay_lag_mean_ms": float(lags.mean()) if lags.size else None,
            "replay_lag_max_ms": float(lags.max()) if lags.size else None,
            "replay_bytes_behind_max": max(behind) if behind else None,
            "replicas_streaming_min": min((s[3] for s in window), default=None),
            "replication_samples": len(window),
        }


class CacheMonitor(_Sampler):
    """The Redis side of a run: keys held, evictions, expiries, memory; every 0.2 s.

    ``keys_held`` counts the run's keys (``DBSIZE``: labs' Redis holds only
    the run's own); evictions and expiries are the growth of ``INFO stats``
    ``evicted_keys`` / ``expired_keys`` over the window.
    """

    def __init__(self, url: str, prefix: str, clock: Clock, interval: float = 0.2) -> None:
        super().__init__(clock, interval)
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=1.0)
        # Connected now, before the run sizes maxmemory: its buffers count too.
        self.sample()

    def close(self) -> None:
        self._redis.close()

    def sample(self) -> tuple[Any, ...]:
        stats = self._redis.info("stats")
        memory = self._redis.info("memory")
        return (
            int(self._redis.dbsize()),
            int(stats.get("evicted_keys", 0)),
            int(stats.get("expired_keys", 0)),
            int(memory.get("used_memory", 0)),
            int(memory.get("maxmemory", 0)),
        )

    def summary(self, start: float, end: float) -> dict[str, object]:
        window = self._window(start, end)
        if not window:
            return {"cache_samples": 0, "cache_monitor_errors": self.errors}
        held = [s[1] for s in window]
        span = max(1e-9, window[-1][0] - window[0][0])
        return {
            "cache_keys_held_mean": float(np.mean(held)),
            "cache_keys_held_max": int(max(held)),
            "cache_evicted_per_s": (window[-1][2] - window[0][2]) / span,
            "cache_expired_per_s": (window[-1][3] - window[0][3]) / span,
            "redis_used_memory_max": int(max(s[4] for s in window)),
            "redis_maxmemory": int(window[-1][5]),
            "cache_samples": len(window),
            "cache_monitor_errors": self.errors,
        }


class ServerMonitor(_Sampler):
    """Every client backend of ``user`` on the primary but the monitors: what Postgres counts.

    A sample is ``(t, backends)``; each pid's first sighting is kept, so the
    backends *opened* in a window are the pids first seen in it.  At 50 ms a
    backend that lives shorter may be missed: the count of opened ones is
    for long-lived connections (PgBouncer's servers, a fleet's pools).
    """

    SQL = ("SELECT pid FROM pg_stat_activity WHERE usename = %s "
           "AND backend_type = 'client backend' AND application_name NOT LIKE '%%-monitor'")

    def __init__(self, monitor: Monitor, user: str, clock: Clock,
                 interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(clock, interval)
        self.user = user
        self.first_seen: dict[int, float] = {}
        # On the pg_stat_activity monitor's own session (psycopg2 lets threads
        # share a connection, each with its cursor): every admin session open
        # during a run takes one of Postgres's slots from the run's role, and
        # the server sets aside exactly one for labs (labs.services.postgres).
        self._cur = monitor.connection.cursor()

    def close(self) -> None:
        try:
            self._cur.close()
        except psycopg2.Error:
            pass

    def sample(self) -> tuple[int]:
        self._cur.execute(self.SQL, (self.user,))
        pids = [pid for (pid,) in self._cur.fetchall()]
        now = self.clock()
        for pid in pids:
            self.first_seen.setdefault(pid, now)
        return (len(pids),)

    def summary(self, start: float, end: float) -> dict[str, object]:
        rows = self._window(start, end)
        return {
            "server_connections_mean": step_average([r[0] for r in self.samples],
                                                    [r[1] for r in self.samples], start, end),
            "server_connections_max": max((r[1] for r in rows), default=0),
            "server_connections_opened": sum(1 for t in self.first_seen.values()
                                             if start <= t < end),
            "server_monitor_samples": len(rows),
        }


class PgBouncerMonitor(_Sampler):
    """PgBouncer's admin console: ``SHOW POOLS`` every ``interval``, ``SHOW STATS`` every 5th.

    A sample is ``(t, cl_waiting, cl_active, sv_active, sv_idle, servers,
    maxwait_s, stats)``, ``stats`` ``(total_xact_count, total_wait_time µs,
    total_xact_time µs)`` or None between stats reads, for the run's database.
    """

    def __init__(self, dsn: str, database: str, clock: Clock,
                 interval: float = SAMPLE_INTERVAL) -> None:
        super().__init__(clock, interval)
        self.database = database
        self._console = Console.open(dsn)
        self._n = 0

    def close(self) -> None:
        try:
            self._console.close()
        except psycopg2.Error:
            pass

    def sample(self) -> tuple[Any, ...] | None:
        pool = pool_of(self._console.pools(), self.database)
        stats = None
        if self._n % 5 == 0:
            row = stats_of(self._console.stats(), self.database)
            stats = None if row is None else (row.total_xact_count, row.total_wait_time,
                                              row.total_xact_time)
        self._n += 1
        if pool is None:
            return None
        return (pool.cl_waiting, pool.cl_active, pool.sv_active, pool.sv_idle, pool.servers,
                pool.wait, stats)

    def wait_mean_ms(self, start: float, end: float) -> float:
        """Mean wait per transaction over [start, end), from SHOW STATS (NaN: too few reads)."""
        return self._per_xact_ms(start, end, 1)

    def xact_mean_ms(self, start: float, end: float) -> float:
        """Mean transaction time over [start, end), from SHOW STATS (the wait included)."""
        return self._per_xact_ms(start, end, 2)

    def _per_xact_ms(self, start: float, end: float, column: int) -> float:
        """A SHOW STATS total (µs) per transaction between the reads around [start, end)."""
        reads = [(r[0], r[7]) for r in self.samples if r[7] is not None]
        before = [s for t, s in reads if t <= start]
        after = [s for t, s in reads if t >= end]
        first = before[-1] if before else next((s for t, s in reads if t > start), None)
        last = after[0] if after else (reads[-1][1] if reads else None)
        if first is None or last is None or last[0] <= first[0]:
            return float("nan")
        return (last[column] - first[column]) / 1000.0 / (last[0] - first[0])

    def summary(self, start: float, end: float) -> dict[str, object]:
        rows = self._window(start, end)
        times = [r[0] for r in self.samples]

        def mean(col: int) -> float:
            return step_average(times, [r[col] for r in self.samples], start, end)

        return {
            "pgbouncer_cl_waiting_mean": mean(1),
            "pgbouncer_cl_waiting_max": max((r[1] for r in rows), default=0),
            "pgbouncer_sv_active_mean": mean(3),
            "pgbouncer_servers_max": max((r[5] for r in rows), default=0),
            "pgbouncer_maxwait_max_s": max((r[6] for r in rows), default=0.0),
            "pgbouncer_wait_mean_ms": self.wait_mean_ms(start, end),
            "pgbouncer_xact_mean_ms": self.xact_mean_ms(start, end),
            "pgbouncer_samples": len(rows),
        }
