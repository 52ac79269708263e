"""A live run's records turned into simlib's metrics, with simlib's rules.

The metrics, as simlib.metrics defines them (window ``[warmup, warmup+duration)``
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
                            sampled every 50 ms over the window (labs/probes.py)
``offered_rps``             window arrivals / duration
``query_mean_ms``           connection in hand -> result back, successes
``connections_busy_mean``   time average of checked-out connections (client)
``in_flight_mean``          time average of requests between scheduled arrival
                            and finish (Little's L)
``incomplete_rate``         window requests unfinished at the drain limit
``checkout_p99_ms``         as checkout_*: scheduled arrival -> connection in hand
``overtaken_ratio``         simlib's ``overtaken_counts`` over the finished
                            window requests that asked a pool: ``(asked, got or
                            gave up, waited, got)``; ``asked`` is when the
                            request path called the pool's checkout
``leaked_rate``             window requests that answered and left their
                            connection to the closer ([client] leak_fraction)
``idle_in_transaction_mean`` time average of our backends ``idle in
                            transaction`` in pg_stat_activity (the monitor's
                            50 ms samples over the window)
``sessions_terminated_per_s`` leaked sessions the server had ended when the
                            closer gave them back, counted at ``query_done +
                            idle_in_transaction_session_timeout`` (when
                            Postgres ended them) if that falls in the window
==========================  ====================================================

Extra live-only metrics: ``achieved_rate_rps`` (window requests the load
generator actually *started* within the window, per second) and
``scheduler_lag_p99_ms`` / ``scheduler_lag_mean_ms`` (how late requests
started compared with their schedule: large values mean the client, not the
database, was saturated).

The keyed path's counts (cache hits, stale reads, reads by destination) are
counted as simlib.access counts them (:func:`keyed_counts`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labs.drivers.base import TOO_MANY_CONNECTIONS
from labs.records import ERROR, OK, TIMEOUT, Record
from simlib.metrics import METRICS, Handoff, WindowCounts, overtaken_counts, window_metrics
from simlib.scenario import Scenario

__all__ = ["LIVE_METRICS", "Window", "handoffs", "keyed_counts", "leak_facts", "metrics",
           "overtaken", "request_facts", "terminated_at"]

#: Metrics only a live run has, reported after simlib's.
LIVE_METRICS: tuple[str, ...] = (
    "achieved_rate_rps",
    "scheduler_lag_mean_ms",
    "scheduler_lag_p99_ms",
)


@dataclass(frozen=True, slots=True)
class Window:
    """The measured window ``[start, end)``, the drain's cutoff, and when the run ended."""

    start: float
    end: float
    cutoff: float
    run_end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def holds(self, rec: Record) -> bool:
        return self.start <= rec.scheduled < self.end

    def overlap(self, a: float, b: float) -> float:
        return max(0.0, min(b, self.end) - max(a, self.start))


def metrics(
    records: Sequence[Record],
    scenario: Scenario,
    window: Window,
    connects: Sequence[float],
    connections_mean: float,
    idle_in_transaction_mean: float = 0.0,
) -> dict[str, float]:
    """Every simlib metric and the live-only ones, from the run's records."""
    duration = window.duration
    nan = math.nan
    inside = [r for r in records if window.holds(r)]
    finished = [r for r in inside if r.outcome is not None and r.finished is not None
                and r.finished <= window.cutoff]
    ok = [r for r in finished if r.outcome == OK]
    starts = [(r.started, r.scheduled) for r in inside if r.started is not None]
    lag = np.array([started - scheduled for started, scheduled in starts]) * 1000.0
    run_end = window.run_end
    busy = sum(window.overlap(r.got, r.released if r.released is not None
                              else (r.finished or run_end))
               for r in records if r.got is not None)
    in_flight = sum(window.overlap(r.scheduled, r.finished if r.finished is not None else run_end)
                    for r in records)
    counts = WindowCounts(
        arrivals=len(inside),
        completed=len(ok),
        waited=sum(1 for r in finished if r.waited),
        timeouts=sum(1 for r in finished if r.outcome == TIMEOUT),
        errors=sum(1 for r in finished if r.outcome == ERROR),
        opened=sum(1 for t in connects if window.start <= t < window.end),
        latency=[r.finished - r.scheduled for r in ok],  # type: ignore[operator]
        checkout=[r.got - r.scheduled for r in finished if r.got is not None],
        query=[r.query_done - r.got for r in ok  # type: ignore[operator]
               if r.query_done is not None],
        handoffs=handoffs(finished),
        leaked=sum(1 for r in inside if r.leaked),
        terminated=_terminated(records, window,
                               scenario.database.idle_in_transaction_session_timeout),
        **(keyed_counts(scenario, finished) if scenario.keyed else {}),
    )
    values = window_metrics(counts, duration=duration, connections_mean=connections_mean,
                            busy_mean=busy / duration, in_flight_mean=in_flight / duration,
                            idle_in_transaction_mean=idle_in_transaction_mean)
    values.update(
        achieved_rate_rps=sum(1 for started, _ in starts if started < window.end) / duration,
        scheduler_lag_mean_ms=float(lag.mean()) if lag.size else nan,
        scheduler_lag_p99_ms=float(np.percentile(lag, 99)) if lag.size else nan,
    )
    assert set(METRICS) <= set(values)
    return values


def handoffs(records: Sequence[Record]) -> list[Handoff]:
    """simlib's hand-off facts of the requests that asked a pool for a connection.

    ``(asked, at, waited, got)``: when it asked, when it got a connection or
    gave up (the checkout raising; else when it finished), whether the pool
    made it wait, whether it got one.  A record without ``asked`` that got a
    connection (made before ``asked`` was recorded) stands in with ``started``.
    """
    out: list[Handoff] = []
    for r in records:
        asked = r.asked if r.asked is not None else (r.started if r.got is not None else None)
        if asked is None:
            continue  # never asked a pool (a cache hit)
        if r.got is not None:
            out.append((asked, r.got, r.waited, True))
            continue
        at = r.gave_up if r.gave_up is not None else r.finished
        if at is not None:
            out.append((asked, at, r.waited, False))
    return out


def overtaken(records: Sequence[Record], start: float, end: float) -> dict[str, float | int]:
    """How FIFO the pool's waiting really was: waiting requests overtaken by later askers.

    The counts of ``overtaken_ratio`` (simlib.metrics.overtaken_counts, the one
    definition) over the window's finished requests.  A waiting request is
    *overtaken* when some request that asked later got a connection more
    than ``OVERTAKE_EPS`` before it got one (or gave up).  In a FIFO pool
    (psycopg_pool) that cannot happen.  SQLAlchemy's QueuePool hands a
    returned connection to its queue and notifies one waiter, but a thread
    that calls ``get()`` before the woken waiter has re-taken the lock (and
    the GIL) takes it first: the waiter goes back to waiting.
    """
    inside = [r for r in records if start <= r.scheduled < end
              and r.outcome is not None and r.finished is not None]
    waited, count = overtaken_counts(handoffs(inside))
    return {"waited": waited, "overtaken": count,
            "share": count / waited if waited else 0.0}


def terminated_at(rec: Record, timeout: float) -> float | None:
    """When the server ended ``rec``'s leaked session (None: it did not).

    Postgres ends a session ``idle_in_transaction_session_timeout`` after it
    went idle in its transaction, i.e. after the request's statement; the
    closer only finds out later, when it gives the connection back.
    """
    if not rec.terminated:
        return None
    if timeout > 0 and rec.query_done is not None:
        end = rec.query_done + timeout
        return end if rec.released is None else min(end, rec.released)
    return rec.released


def _terminated(records: Sequence[Record], window: Window, timeout: float) -> int:
    times = (terminated_at(r, timeout) for r in records if r.terminated)
    return sum(1 for t in times if t is not None and window.start <= t < window.end)


def leak_facts(records: Sequence[Record], window: Window) -> dict[str, Any]:
    """The leaks of a run, for its details: how many, how long held, what their release met."""
    leaked = [r for r in records if r.leaked]
    inside = [r for r in leaked if window.holds(r)]
    held = np.array([r.released - r.query_done for r in leaked
                     if r.released is not None and r.query_done is not None]) * 1000.0
    errors = collections.Counter(r.leak_error for r in leaked if r.leak_error)
    return {
        "leaked_total": len(leaked),
        "leaked_window": len(inside),
        "terminated_total": sum(1 for r in leaked if r.terminated),
        "terminated_window_requests": sum(1 for r in inside if r.terminated),
        "unreleased": sum(1 for r in leaked if r.released is None),
        "held_ms_mean": float(held.mean()) if held.size else None,
        "held_ms_max": float(held.max()) if held.size else None,
        "release_errors_top": [{"error": e, "count": c} for e, c in errors.most_common(3)],
    }


def request_facts(
    records: Sequence[Record], window: Window, connects: Sequence[float],
    connect_durations: Sequence[float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(details, server)`` facts of the requests: counts, connects, errors, refusals."""
    inside = [r for r in records if window.holds(r)]
    errors = collections.Counter(r.error for r in inside if r.error)
    connect = np.array(connect_durations) * 1000.0
    details = {
        "requests_total": len(records),
        "requests_window": len(inside),
        "connects_total": len(connects),
        "connect_ms": {
            "count": int(connect.size),
            "mean": float(connect.mean()) if connect.size else None,
            "p50": float(np.percentile(connect, 50)) if connect.size else None,
            "p95": float(np.percentile(connect, 95)) if connect.size else None,
        },
        "errors_top": [{"error": e, "count": c} for e, c in errors.most_common(5)],
        "overtaken": overtaken(records, window.start, window.end),
    }
    server = {
        "refusals": sum(1 for r in inside if r.sqlstate == TOO_MANY_CONNECTIONS),
        "refusals_total": sum(1 for r in records if r.sqlstate == TOO_MANY_CONNECTIONS),
    }
    return details, server


def keyed_counts(scenario: Scenario, finished: Sequence[Record]) -> dict[str, Any]:
    """simlib's cache, staleness and routing counts, from the window's finished records.

    As simlib.access counts them: every read asks the cache (a failed Redis
    call is a miss: the read went to the database); a read that returned a
    value is stale when its version is older than the newest committed when
    it began; reads by destination count where they were sent, a failover
    counting for the primary that served it.
    """
    reads = [r for r in finished if r.key >= 0 and not r.write]
    counts: dict[str, Any] = {"db_queries": sum(1 for r in finished if r.got is not None)}
    if scenario.cache is not None:
        counts["cache_lookups"] = len(reads)
        counts["cache_hits"] = sum(1 for r in reads if r.source == "cache")
        if scenario.cache.single_flight:
            counts["cache_coalesced"] = sum(1 for r in reads if r.source == "coalesced")
    if scenario.workload.write_fraction > 0:
        returned = [r for r in reads if r.outcome == OK and r.version is not None]
        counts["reads_returned"] = len(returned)
        counts["stale_reads"] = sum(1 for r in returned
                                    if r.version is not None and r.version < r.newest)
    if scenario.replicas is not None:
        sources = collections.Counter(r.source for r in reads)
        counts["primary_reads"] = sources.get("primary", 0)
        counts["replica_reads"] = [sources.get(f"replica{i}", 0)
                                   for i in range(scenario.replicas.count)]
    return counts


def keyed_faults(records: Sequence[Record], window: Window) -> dict[str, int]:
    """The keyed path's faults in the window: failed Redis calls, replica failovers."""
    inside = [r for r in records if window.holds(r)]
    return {
        "cache_errors": sum(1 for r in inside if r.cache_error),
        "replica_failovers": sum(1 for r in inside if r.failover),
    }
