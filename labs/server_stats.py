"""The server's side of a run: what Postgres itself saw, plus CPU-burn calibration.

* :class:`Monitor` samples ``pg_stat_activity`` every ~50 ms on its own
  connection (own application_name, so it never counts itself) and records,
  for the run's application_name: open backends, backends running a query
  (``state = 'active'``), and every backend pid seen.  Time averages come
  from these samples as a step function.
* ``sessions`` of ``pg_stat_database`` (Postgres 14+) before and after the
  run: backends started on the database meanwhile.  It counts every session
  on that database, ours and anyone else's, and is flushed by each backend at
  exit at the latest, so it is read after the run's connections are closed.
* :func:`cancel_backends` cancels our queries still running when a run has to
  stop at the drain limit.
* :func:`calibrate_cpu` times ``SELECT count(*) FROM (SELECT generate_series(1, n)) s``
  for a few n and fits a line: the slope is the server's CPU seconds per row,
  used to turn a cpu_bound service time into n.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg2

from labs.drivers.common import QuerySpec

__all__ = [
    "CacheMonitor",
    "Monitor",
    "ReplicationMonitor",
    "calibrate_cpu",
    "cancel_backends",
    "database_sessions",
]

SAMPLE_INTERVAL = 0.05


def _connect(dsn: str, app: str):
    conn = psycopg2.connect(dsn, application_name=app)
    conn.autocommit = True  # every statement its own snapshot of the statistics
    return conn


def database_sessions(dsn: str) -> int | None:
    """``pg_stat_database.sessions`` for the DSN's database (None before Postgres 14)."""
    conn = _connect(dsn, "labs-stats")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            try:
                cur.execute(
                    "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
                )
            except psycopg2.Error:
                return None
            row = cur.fetchone()
            return int(row[0]) if row else None
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


class Monitor:
    """Samples our backends in pg_stat_activity on a background thread."""

    def __init__(self, dsn: str, app: str, clock, interval: float = SAMPLE_INTERVAL) -> None:
        self.dsn = dsn
        self.app = app
        self.clock = clock  # () -> run-relative seconds
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (t, backends, active)
        self.pids: set[int] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labs-monitor", daemon=True)
        self._conn = _connect(dsn, app + "-monitor")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # not started when the run failed before it began
            self._thread.join(timeout=5.0)
        try:
            self._conn.close()
        except psycopg2.Error:
            pass

    def _loop(self) -> None:
        sql = "SELECT pid, state = 'active' FROM pg_stat_activity WHERE application_name = %s"
        next_t = time.perf_counter()
        with self._conn.cursor() as cur:
            while not self._stop.is_set():
                try:
                    cur.execute(sql, (self.app,))
                    rows = cur.fetchall()
                except psycopg2.Error:
                    self.errors += 1
                    rows = None
                if rows is not None:
                    self.samples.append(
                        (self.clock(), len(rows), sum(1 for _, active in rows if active))
                    )
                    self.pids.update(pid for pid, _ in rows)
                next_t += self.interval
                delay = next_t - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_t = time.perf_counter()

    # -- summaries ------------------------------------------------------------
    def time_average(self, start: float, end: float, column: int = 1) -> float:
        """Time average of a sampled column over [start, end), samples held as steps."""
        if not self.samples or end <= start:
            return float("nan")
        times = np.array([s[0] for s in self.samples])
        values = np.array([s[column] for s in self.samples], dtype=float)
        # Each sample holds until the next one (the last until ``end``); the
        # first also stands for the time before it.
        t = times.copy()
        t[0] = min(t[0], start)
        nxt = np.append(t[1:], max(end, t[-1]))
        widths = np.clip(np.minimum(nxt, end) - np.maximum(t, start), 0.0, None)
        covered = widths.sum()
        return float((values * widths).sum() / covered) if covered > 0 else float("nan")

    def peak(self, start: float = -np.inf, end: float = np.inf, column: int = 1) -> int:
        vals = [s[column] for s in self.samples if start <= s[0] < end]
        return int(max(vals)) if vals else 0


def calibrate_cpu(dsn: str, target: float = 0.01) -> dict:
    """Fit the CPU-burn query's time as ``a + b * n``; returns the fit and a check.

    Sizes grow until one takes about 4x ``target``; each size is timed five
    times and the median kept: the typical time, which is what a run's queries
    will see (the fastest of a few is biased low on a machine whose speed
    varies, and the check below would then come out short of its target).
    The check runs the query for ``target`` seconds once more (re-sized from
    its own result when it misses by over 10%) and reports what it took
    (``check_ms``) and that minus the fit's fixed part ``a`` -- round trip,
    parse, plan -- which is what the service time stands for
    (``check_server_ms``).  ``seconds_per_row`` comes from the last check.
    """
    spec = QuerySpec(cpu_bound=True, seconds_per_row=1.0)
    sql = spec.sql("pyformat")
    conn = _connect(dsn, "labs-calibrate")
    try:
        with conn.cursor() as cur:

            def timed(n: int, repeats: int = 5) -> float:
                samples = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    cur.execute(sql, (n,))
                    cur.fetchall()
                    samples.append(time.perf_counter() - t)
                return float(np.median(samples))

            timed(1000)  # warm the backend (plan cache, catalog)
            sizes, times = [], []
            n = 20_000
            while True:
                sizes.append(n)
                times.append(timed(n))
                if times[-1] >= 4 * target or n >= 200_000_000:
                    break
                n *= 2
            # Fit on the sizes that take at least 1 ms (the small ones are noise).
            keep = [i for i, t in enumerate(times) if t >= 0.001] or list(range(len(times)))
            if len(keep) < 2:
                keep = list(range(len(times)))
            # Weighted by 1/t: relative errors count, so the largest size does
            # not dominate the fit (and push the intercept below zero).
            ts = np.array(times)[keep]
            b, a = np.polyfit(np.array(sizes)[keep], ts, 1, w=1.0 / ts)
            if b <= 0:  # degenerate fit: fall back to the largest point
                b, a = times[-1] / sizes[-1], 0.0
            # Check at the size the fit predicts; where the check misses the
            # target by more than 10% (this VM's speed drifts by tens of
            # percent between consecutive tenths of a second), rescale the
            # size from the check itself and check again, at most twice.
            intercept = max(0.0, float(a))
            check_n = max(1, round(target / b))
            check = timed(check_n, repeats=9)
            for _ in range(2):
                on_server = max(check - intercept, 1e-6)
                if abs(on_server - target) <= 0.1 * target:
                    break
                check_n = max(1, round(check_n * target / on_server))
                check = timed(check_n, repeats=9)
            b = max(check - intercept, 1e-6) / check_n
    finally:
        conn.close()
    return {
        "query": sql.replace("%s", "n"),
        "seconds_per_row": float(b),
        "rows_per_second": float(1.0 / b),
        "intercept_ms": float(a) * 1000.0,
        "sizes": sizes,
        "times_ms": [t * 1000.0 for t in times],
        "target_ms": target * 1000.0,
        "check_rows": int(check_n),
        "check_ms": check * 1000.0,
        "check_server_ms": (check - intercept) * 1000.0,
    }


class _Sampler:
    """A background thread calling ``sample()`` every ``interval`` seconds until stopped."""

    def __init__(self, clock, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self.samples: list[tuple] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labs-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.close()

    def close(self) -> None:
        pass

    def sample(self) -> tuple | None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                row = self.sample()
            except Exception:  # noqa: BLE001 - a server gone (fault tests) is counted
                self.errors += 1
                row = None
            if row is not None:
                self.samples.append((self.clock(), *row))
            self._stop.wait(self.interval)

    def _window(self, start: float, end: float) -> list[tuple]:
        return [s for s in self.samples if start <= s[0] < end]


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

    def __init__(self, dsn: str, clock, interval: float = 0.2) -> None:
        super().__init__(clock, interval)
        self._conn = _connect(dsn, "labs-replication-monitor")

    def close(self) -> None:
        try:
            self._conn.close()
        except psycopg2.Error:
            pass

    def sample(self) -> tuple:
        with self._conn.cursor() as cur:
            cur.execute(self.SQL)
            rows = cur.fetchall()
        lags = [float(lag) for lag, _ in rows if lag is not None]
        behind = [float(b) for _, b in rows if b is not None]
        return (max(lags) if lags else None, max(behind) if behind else None, len(rows))

    def summary(self, start: float, end: float) -> dict:
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

    def __init__(self, url: str, prefix: str, clock, interval: float = 0.2) -> None:
        import redis

        super().__init__(clock, interval)
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=1.0)
        # Connected now, before the run sizes maxmemory: its buffers count too.
        self.sample()

    def close(self) -> None:
        self._redis.close()

    def sample(self) -> tuple:
        stats = self._redis.info("stats")
        memory = self._redis.info("memory")
        return (
            int(self._redis.dbsize()),
            int(stats.get("evicted_keys", 0)),
            int(stats.get("expired_keys", 0)),
            int(memory.get("used_memory", 0)),
            int(memory.get("maxmemory", 0)),
        )

    def summary(self, start: float, end: float) -> dict:
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
