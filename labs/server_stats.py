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

__all__ = ["Monitor", "calibrate_cpu", "cancel_backends", "database_sessions"]

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

    Sizes grow until one takes about 4x ``target``; each size is timed three
    times and the fastest kept (least disturbed by other work on the machine).
    ``seconds_per_row`` is ``b``.  The check runs the query for ``target`` seconds once more and
    reports what it took (``check_ms``), minus the fit's fixed part ``a``
    (round trip, parse, plan), which is what the service time stands for.
    """
    spec = QuerySpec(cpu_bound=True, seconds_per_row=1.0)
    sql = spec.sql("pyformat")
    conn = _connect(dsn, "labs-calibrate")
    try:
        with conn.cursor() as cur:

            def timed(n: int, repeats: int = 3) -> float:
                best = np.inf
                for _ in range(repeats):
                    t = time.perf_counter()
                    cur.execute(sql, (n,))
                    cur.fetchall()
                    best = min(best, time.perf_counter() - t)
                return float(best)

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
            check_n = max(1, round(target / b))
            check = timed(check_n, repeats=7)
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
        "check_server_ms": (check - max(0.0, float(a))) * 1000.0,
    }
