"""How a service time becomes SQL: ``pg_sleep(s)``, or a CPU-burning query calibrated here.

A scenario says how long each query takes on the server (``[query]
service_time``) and whether it waits (``cpu_bound = false``: ``pg_sleep``, as
a query waiting on a lock or on I/O does) or computes (``cpu_bound = true``:
it needs a core, and queries running at once share the server's cores).  The
live run sends ``SELECT pg_sleep(s)`` for the first, and for the second a
query that counts ``n`` rows of ``generate_series``, with ``n`` chosen so it
keeps one core busy for ``s``: :func:`calibrate_cpu` measures this server's
seconds per row before the run.

The keyed path (labs/access.py) reads and writes versions of keys in one
table, :data:`KEYED_TABLE`, in the same statement that does the work
(:meth:`QuerySpec.keyed_sql`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg2

__all__ = ["KEYED_TABLE", "QuerySpec", "calibrate_cpu", "one"]

#: The keyed path's table: one row per key, ``(key int, version bigint)``.
KEYED_TABLE = "labs_kv"


def one(cur: Any) -> Any:
    """The first column of the cursor's next row (every query that calls this returns one)."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row")
    return row[0]


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """How a service time becomes SQL: ``pg_sleep(s)`` or a calibrated CPU burn.

    ``select_one`` (bench/bench_harness.py) replaces both with a plain
    ``SELECT 1`` without a parameter, so the harness can be timed against
    ``pgbench`` on the cheapest possible query.  Only the asyncpg driver
    supports it (it sends :meth:`params`); the thread-based drivers always
    pass one parameter.
    """

    cpu_bound: bool = False
    seconds_per_row: float = 0.0  # from calibration (cpu_bound only)
    select_one: bool = False  # plain SELECT 1, no parameter (service time ignored)

    def argument(self, service: float) -> float | int:
        """The query's single parameter for ``service`` seconds of database time."""
        if not self.cpu_bound:
            return max(0.0, float(service))
        return max(1, min(2_000_000_000, round(service / self.seconds_per_row)))

    def params(self, service: float) -> tuple[float | int, ...]:
        """The query's parameters: ``(argument(service),)``, or none for ``select_one``."""
        return () if self.select_one else (self.argument(service),)

    def keyed_sql(self, write: bool, style: str) -> str:
        """The keyed path's statement, with placeholders for ``key`` and ``arg``.

        A read returns the key's version as of the statement's start (its
        snapshot) and then does the service time's work, in one statement::

            SELECT (SELECT version FROM labs_kv WHERE key = :key), pg_sleep(:arg)

        A write does the work first and then bumps the version, so the row
        lock is held only from the update to the commit, not for the whole
        service time (hot keys would otherwise serialise their writers)::

            WITH work AS MATERIALIZED (SELECT pg_sleep(:arg))
            UPDATE labs_kv SET version = version + 1 FROM work
            WHERE key = :key RETURNING version

        Parameters: ``{"key": k, "arg": a}`` for 'pyformat' and 'named'
        (:meth:`keyed_params`), ``(k, a)`` for 'dollar' (:meth:`keyed_args`).
        """
        key, arg = {
            "pyformat": ("%(key)s", "%(arg)s"),
            "named": (":key", ":arg"),
            "dollar": ("$1", "$2"),
        }[style]
        if self.cpu_bound:
            cast = "::int" if style == "dollar" else ""
            work = f"(SELECT count(*) FROM (SELECT generate_series(1, {arg}{cast})) AS s)"
        else:
            work = f"pg_sleep({arg})"
        if write:
            return (
                f"WITH work AS MATERIALIZED (SELECT {work}) "
                f"UPDATE {KEYED_TABLE} SET version = version + 1 FROM work "
                f"WHERE key = {key} RETURNING version"
            )
        return f"SELECT (SELECT version FROM {KEYED_TABLE} WHERE key = {key}), {work}"

    def keyed_params(self, key: int, service: float) -> dict[str, float | int]:
        """The parameters of :meth:`keyed_sql` for ``key`` and ``service`` seconds (by name).

        In the 'dollar' style the same values go by position: ``(key, arg)``
        (:meth:`keyed_args`).
        """
        return {"key": key, "arg": self.argument(service)}

    def keyed_args(self, key: int, service: float) -> tuple[float | int, ...]:
        """:meth:`keyed_params` by position, for the 'dollar' style (asyncpg)."""
        return (key, self.argument(service))

    def sql(self, style: str) -> str:
        """The statement with a placeholder in ``style``: 'pyformat', 'named' or 'dollar'."""
        if self.select_one:
            return "SELECT 1"
        ph = {"pyformat": "%s", "named": ":arg", "dollar": "$1"}[style]
        if not self.cpu_bound:
            return f"SELECT pg_sleep({ph})"
        cast = "::int" if style == "dollar" else ""
        # generate_series in the select list streams (ProjectSet): no tuplestore,
        # so the cost stays linear in n and never spills to disk.
        return f"SELECT count(*) FROM (SELECT generate_series(1, {ph}{cast})) AS s"


def calibrate_cpu(dsn: str, target: float = 0.01) -> dict[str, Any]:
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
    sql = QuerySpec(cpu_bound=True, seconds_per_row=1.0).sql("pyformat")
    conn = psycopg2.connect(dsn, application_name="labs-calibrate")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            timed = _Timer(cur, sql)
            timed(1000)  # warm the backend (plan cache, catalog)
            sizes, times = _grow(timed, target)
            a, b = _fit(sizes, times)
            intercept = max(0.0, a)
            check_n, check = _check(timed, target, intercept, b)
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


class _Timer:
    """Median seconds of the CPU-burn query for ``n`` rows, over a few runs."""

    def __init__(self, cur: Any, sql: str) -> None:
        self.cur = cur
        self.sql = sql

    def __call__(self, n: int, repeats: int = 5) -> float:
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.cur.execute(self.sql, (n,))
            self.cur.fetchall()
            samples.append(time.perf_counter() - t)
        return float(np.median(samples))


def _grow(timed: _Timer, target: float) -> tuple[list[int], list[float]]:
    """Sizes doubling from 20,000 rows until one takes about 4x ``target``."""
    sizes: list[int] = []
    times: list[float] = []
    n = 20_000
    while True:
        sizes.append(n)
        times.append(timed(n))
        if times[-1] >= 4 * target or n >= 200_000_000:
            return sizes, times
        n *= 2


def _fit(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """``(a, b)`` of ``time = a + b * n``, on the sizes that take at least 1 ms."""
    # The small ones are noise.
    keep = [i for i, t in enumerate(times) if t >= 0.001] or list(range(len(times)))
    if len(keep) < 2:
        keep = list(range(len(times)))
    # Weighted by 1/t: relative errors count, so the largest size does not
    # dominate the fit (and push the intercept below zero).
    ts = np.array(times)[keep]
    b, a = np.polyfit(np.array(sizes)[keep], ts, 1, w=1.0 / ts)
    if b <= 0:  # degenerate fit: fall back to the largest point
        return 0.0, times[-1] / sizes[-1]
    return float(a), float(b)


def _check(timed: _Timer, target: float, intercept: float, b: float) -> tuple[int, float]:
    """Run the query at the size the fit predicts for ``target``: (rows, seconds).

    Where the check misses the target by more than 10% (this VM's speed
    drifts by tens of percent between consecutive tenths of a second), the
    size is rescaled from the check itself and checked again, at most twice.
    """
    check_n = max(1, round(target / b))
    check = timed(check_n, repeats=9)
    for _ in range(2):
        on_server = max(check - intercept, 1e-6)
        if abs(on_server - target) <= 0.1 * target:
            break
        check_n = max(1, round(check_n * target / on_server))
        check = timed(check_n, repeats=9)
    return check_n, check
