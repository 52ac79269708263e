"""Metrics: what a run measures, and how replications become confidence intervals.

Two kinds of measurement, both restricted to the measured window
``[warmup, warmup + duration)``:

* **per request** (latency, checkout time, outcome): over the requests that
  *arrive* in the window, as the scenario contract defines.  Requests that
  arrive in the warm-up are simulated but not counted, so the empty pool at
  time zero does not bias the results.
* **time averages** (open connections, busy connections, requests in flight):
  the area under a step curve between the window's ends, divided by its length.

The cache and replica metrics are ratios of counts that only reads by key
make (the simulator and the live labs count them alike); without those
counts they are NaN:

* ``cache_hit_ratio = cache_hits / cache_lookups``: of the reads that asked
  the cache, the share that found the key;
* ``cache_coalesced_ratio = cache_coalesced / cache_lookups``: the share that
  missed, then took the result of another read's query in flight (with
  ``single_flight``);
* ``stale_read_ratio = stale_reads / reads_returned``: of the reads that
  returned a value, the share older than the newest version committed on the
  primary when the read began;
* ``replica_read_share`` and ``replica_reads_max_share``, from
  ``primary_reads`` and ``replica_reads`` (one count per replica): the share
  of database reads sent to a replica, and the busiest replica's share of
  those, for how the read load spreads.

Connections as Postgres sees them (``server_connections_*``) differ from the
ones the applications open (``connections_*``) once something stands between
them: PgBouncer's server connections, or the connections reclaimed serverless
environments left open.  They are counted for scenarios with a ``[fleet]``,
``[pgbouncer]`` or ``[serverless]`` (NaN, and left out, otherwise), as are
``pgbouncer_wait_mean_ms`` (the mean over the window's transactions of the
time each waited in PgBouncer for a server, 0 for most: SHOW STATS's
``total_wait_time / total_xact_count``), ``pgbouncer_xact_mean_ms`` (the
mean time from a transaction's first statement at PgBouncer to its end, the
wait for a server included, as SHOW STATS's ``total_xact_time /
total_xact_count`` counts it; in transaction and statement mode: less the
wait, it is the time each transaction held a server) and the serverless
shares.

How fair the pool's hand-off was, ``overtaken_ratio`` (the contract's
definition): of the window's requests that waited for a connection, the
share that some request which *asked later* (by more than ``OVERTAKE_EPS``)
beat to a connection, by more than ``OVERTAKE_EPS``.  A waiter that timed
out counts as overtaken when a later asker got a connection before it gave
up.  A FIFO hand-off gives 0.
Each request contributes ``(asked, at, waited, got)`` to ``handoffs``: when it
asked the pool, when it got a connection or gave up, whether it waited, and
whether it got one.

One replication gives one number per metric.  Independent replications give
independent, identically distributed numbers, so a Student-t interval
``mean ± t(0.975, R-1) · s / √R`` is a 95% confidence interval for the
expected value.  Percentiles are handled the same way: each replication's p95
is one observation.  This is the method of independent replications taught in
every simulation course (and in Ciw's documentation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import stdtrit  # Student-t quantile; far lighter than scipy.stats

if TYPE_CHECKING:
    import simpy

#: Metric names in report order.  The first block is fixed by the contract.
CONTRACT_METRICS: tuple[str, ...] = (
    "throughput_rps",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "checkout_mean_ms",
    "checkout_p95_ms",
    "p_wait",
    "timeout_rate",
    "error_rate",
    "connections_opened_per_s",
    "connections_mean",
    "cache_hit_ratio",  # only with [cache]
    "stale_read_ratio",  # only when the workload writes
)
EXTRA_METRICS: tuple[str, ...] = (
    "offered_rps",  # requests arriving per second in the window
    "query_mean_ms",  # connection in hand until the query's result is back
    "connections_busy_mean",  # time-average connections checked out
    "in_flight_mean",  # time-average requests in the system (Little's L)
    "incomplete_rate",  # share still unfinished when the drain limit was reached
    "db_queries_per_s",  # queries sent to any database server (primary or replica)
    "cache_coalesced_ratio",  # [cache] single_flight: reads served by another's fill
    "replica_read_share",  # [replicas]: share of database reads sent to a replica
    "replica_reads_max_share",  # [replicas]: the busiest replica's share of replica reads
    "checkout_p99_ms",  # 99th percentile of the checkout time
    "overtaken_ratio",  # of the requests that waited, the share a later asker overtook
    "leaked_rate",  # share of requests that kept their connection after answering
    "idle_in_transaction_mean",  # time-average sessions idle in transaction
    "sessions_terminated_per_s",  # sessions Postgres ended (idle-in-transaction timeout)
    # Many processes, PgBouncer, serverless (shared/scenario-contract.md, "Additions"):
    "server_connections_mean",  # connections as Postgres sees them, time average
    "server_connections_max",  # ... their peak in the window
    "server_connections_opened_per_s",  # ... opened per second
    "server_refused_per_s",  # connection attempts Postgres refused per second
    "pgbouncer_wait_mean_ms",  # [pgbouncer]: mean wait for a server connection
    "pgbouncer_xact_mean_ms",  # [pgbouncer]: mean transaction time, the wait included
    "cold_start_rate",  # [serverless]: share of invocations that began with a cold start
    "throttle_rate",  # [serverless]: share refused at concurrency_limit
    "environments_mean",  # [serverless]: time-average environments alive
)
METRICS: tuple[str, ...] = CONTRACT_METRICS + EXTRA_METRICS

#: Metrics that only mean something when the scenario has a [cache], [replicas]
#: or writes.  Without them they are NaN, and a simulation's summary leaves
#: them out (the contract: "cache_hit_ratio ... when [cache] is present").
CONDITIONAL_METRICS: frozenset[str] = frozenset(
    {
        "cache_hit_ratio",
        "stale_read_ratio",
        "cache_coalesced_ratio",
        "replica_read_share",
        "replica_reads_max_share",
        "server_connections_mean",
        "server_connections_max",
        "server_connections_opened_per_s",
        "server_refused_per_s",
        "pgbouncer_wait_mean_ms",
        "pgbouncer_xact_mean_ms",
        "cold_start_rate",
        "throttle_rate",
        "environments_mean",
    }
)

# Outcomes of a request.
OK, TIMEOUT, ERROR = 0, 1, 2

#: Two moments closer than this are "the same" when judging overtaking: a live
#: run's clocks and thread wake-ups are not finer, so the simulator does not
#: count finer either.
OVERTAKE_EPS = 0.0002

#: One request's hand-off facts: (asked, got or gave up at, waited, got one).
Handoff = tuple[float, float, bool, bool]


def overtaken_counts(handoffs: Sequence[Handoff], eps: float = OVERTAKE_EPS) -> tuple[int, int]:
    """(requests that waited, of them overtaken by a later asker); see the module doc."""
    if not handoffs:
        return 0, 0
    a = np.asarray(handoffs, dtype=float).reshape(-1, 4)
    a = a[np.argsort(a[:, 0], kind="stable")]
    asked = a[:, 0]
    got_at = np.where(a[:, 3] > 0, a[:, 1], np.inf)
    # The earliest connection among the requests that asked strictly later
    # (by more than eps: requests asking at the same moment are not "later").
    suffix_min = np.append(np.minimum.accumulate(got_at[::-1])[::-1], np.inf)
    later = suffix_min[np.searchsorted(asked, asked + eps, side="right")]
    waited = a[:, 2] > 0
    overtaken = waited & (later < a[:, 1] - eps)
    return int(waited.sum()), int(overtaken.sum())


class Level:
    """A quantity that changes in steps; keeps the area under it for time averages."""

    __slots__ = ("value", "_t", "_area")

    def __init__(self) -> None:
        self.value = 0
        self._t = 0.0
        self._area = 0.0

    def set(self, now: float, value: int) -> None:
        self._area += self.value * (now - self._t)
        self._t = now
        self.value = value

    def area(self, now: float) -> float:
        return self._area + self.value * (now - self._t)


@dataclass(eq=False)
class TierCounts:
    """What fleets, PgBouncer and serverless add to a window's counts.

    None (and NaN) where the scenario has no such tier: their metrics are NaN
    then, and left out of the results.
    """

    server_opened: int | None = None  # connections Postgres accepted in the window
    server_refused: int = 0  # connection attempts Postgres refused in the window
    server_peak: float = math.nan  # most connections Postgres held at once in the window
    server_mean: float = math.nan  # connections Postgres held, time-averaged over the window
    pgbouncer_waits: list[float] | None = None  # each transaction's wait for a server
    pgbouncer_xacts: list[float] | None = None  # each transaction's time, its wait included
    cold_starts: int | None = None  # invocations that began with a cold start
    throttled: int = 0  # invocations refused at the concurrency limit
    environments_mean: float = math.nan  # serverless environments alive, time-averaged

    def metrics(self, duration: float, arrivals: int) -> dict[str, float]:
        """The tiers' metrics: NaN where a count is None (not counted)."""
        nan = math.nan
        server = self.server_opened is not None
        return {
            "server_connections_mean": self.server_mean if server else nan,
            "server_connections_max": self.server_peak if server else nan,
            "server_connections_opened_per_s": (self.server_opened or 0) / duration
            if server else nan,
            "server_refused_per_s": self.server_refused / duration if server else nan,
            "pgbouncer_wait_mean_ms": _mean_ms(self.pgbouncer_waits),
            "pgbouncer_xact_mean_ms": _mean_ms(self.pgbouncer_xacts),
            "cold_start_rate": _ratio(self.cold_starts, arrivals),
            "throttle_rate": nan if self.cold_starts is None
            else _ratio(self.throttled, arrivals),
            "environments_mean": self.environments_mean if self.cold_starts is not None else nan,
        }


def _mean_ms(seconds: Sequence[float] | None) -> float:
    return 1000.0 * sum(seconds) / len(seconds) if seconds else math.nan


@dataclass(eq=False)
class WindowCounts:
    """What one run counted over the measured window: the inputs of :func:`metric_values`.

    A simulated run's :class:`Recorder` is one (it counts as events happen); a
    live run builds one from its records.  The cache and replica counts stay
    None where they do not apply, and their metrics are then NaN.
    """

    arrivals: int = 0
    completed: int = 0
    waited: int = 0
    timeouts: int = 0
    errors: int = 0
    opened: int = 0
    latency: list[float] = field(default_factory=list)
    checkout: list[float] = field(default_factory=list)
    query: list[float] = field(default_factory=list)
    # Reads and writes by key (simlib/access.py); None = not applicable.
    db_queries: int | None = None  # None: one per completed request
    cache_lookups: int | None = None  # 0 and counting when there is a cache
    cache_hits: int = 0
    cache_coalesced: int | None = None  # 0 and counting with single_flight
    reads_returned: int | None = None  # 0 and counting when the workload writes
    stale_reads: int = 0
    primary_reads: int = 0
    replica_reads: list[int] | None = None  # one count per replica
    handoffs: list[Handoff] = field(default_factory=list)
    leaked: int = 0  # requests that kept their connection after answering
    terminated: int = 0  # sessions Postgres ended for idling in a transaction
    tiers: TierCounts = field(default_factory=lambda: TierCounts())


def window_metrics(
    counts: WindowCounts,
    *,
    duration: float,
    connections_mean: float,
    busy_mean: float,
    in_flight_mean: float,
    idle_in_transaction_mean: float = 0.0,
) -> dict[str, float]:
    """:func:`metric_values` of a run's counts and its time averages."""
    given = {f.name: getattr(counts, f.name) for f in dataclasses.fields(WindowCounts)}
    return metric_values(duration=duration, connections_mean=connections_mean,
                         busy_mean=busy_mean, in_flight_mean=in_flight_mean,
                         idle_in_transaction_mean=idle_in_transaction_mean, **given)


class Recorder(WindowCounts):
    """Collects one replication's observations.

    The model calls it at each event of interest; it keeps only what falls in
    the measured window.  ``now`` is read from the environment so callers do
    not have to pass it.
    """

    def __init__(self, env: simpy.Environment, start: float, end: float) -> None:
        super().__init__()
        self.env = env
        self.start = start
        self.end = end
        self.refusals = 0
        self.connections = Level()
        self.busy = Level()
        self.in_flight = Level()
        self.idle_in_tx = Level()
        self.server_connections = Level()  # as Postgres sees them
        self.environments = Level()  # serverless environments alive
        self._areas_at_start: tuple[float, ...] | None = None
        self._areas_at_end: tuple[float, ...] | None = None
        # Snapshot the step curves at both ends of the window.
        env.timeout(start).callbacks.append(lambda _e: self._snapshot("start"))
        env.timeout(end).callbacks.append(lambda _e: self._snapshot("end"))

    def _snapshot(self, which: str) -> None:
        now = self.env.now
        areas = self._areas(now)
        if which == "start":
            self._areas_at_start = areas
            if self.tiers.server_opened is not None:
                self.tiers.server_peak = self.server_connections.value
        else:
            self._areas_at_end = areas

    def _areas(self, now: float) -> tuple[float, ...]:
        return (self.connections.area(now), self.busy.area(now), self.in_flight.area(now),
                self.idle_in_tx.area(now), self.server_connections.area(now),
                self.environments.area(now))

    def measured(self, arrival: float) -> bool:
        return self.start <= arrival < self.end

    # -- connection events ------------------------------------------------
    # Counted across every database server (a primary and its replicas each
    # hold some of the application's connections), hence +1 / -1.
    def connection_opened(self, counted: bool = True) -> None:
        now = self.env.now
        self.connections.set(now, self.connections.value + 1)
        if counted and self.start <= now < self.end:
            self.opened += 1

    def connection_closed(self) -> None:
        self.connections.set(self.env.now, self.connections.value - 1)

    def refused(self) -> None:
        if self.start <= self.env.now < self.end:
            self.refusals += 1

    # Connections as Postgres sees them: counted only when a tier asked for
    # them (count_tiers), so plain scenarios keep their results as they were.
    def count_tiers(self, *, pgbouncer: bool = False, serverless: bool = False) -> None:
        """Count what fleets, PgBouncer and serverless add (their metrics are NaN otherwise)."""
        self.tiers.server_opened = 0
        if pgbouncer:
            self.tiers.pgbouncer_waits = []
            self.tiers.pgbouncer_xacts = []
        if serverless:
            self.tiers.cold_starts = 0

    def server_connection(self, delta: int) -> None:
        """Postgres accepted (+1) or closed (-1) a connection."""
        now = self.env.now
        level = self.server_connections
        level.set(now, level.value + delta)
        tiers = self.tiers
        if tiers.server_opened is not None and self.start <= now < self.end:
            if delta > 0:
                tiers.server_opened += 1
            if level.value > tiers.server_peak:
                tiers.server_peak = level.value

    def server_refusal(self) -> None:
        """Postgres refused a connection attempt (``max_connections``)."""
        if self.tiers.server_opened is not None and self.start <= self.env.now < self.end:
            self.tiers.server_refused += 1

    def pgbouncer_waited(self, asked: float, seconds: float) -> None:
        """A transaction asked PgBouncer for a server at ``asked`` and waited ``seconds``."""
        waits = self.tiers.pgbouncer_waits
        if waits is not None and self.start <= asked < self.end:
            waits.append(seconds)

    def pgbouncer_unlinked(self, started: float) -> None:
        """A transaction whose first statement reached PgBouncer at ``started`` is over.

        The span PgBouncer's ``SHOW STATS`` adds to ``total_xact_time``: its
        ``xact_start`` is set before ``find_server``, so a wait for a server
        is inside it (1.18, ``src/client.c``, ``handle_client_work``).
        """
        xacts = self.tiers.pgbouncer_xacts
        if xacts is not None and self.start <= started < self.end:
            xacts.append(self.env.now - started)

    def environment(self, delta: int) -> None:
        """A serverless environment was created (+1) or reclaimed (-1)."""
        self.environments.set(self.env.now, self.environments.value + delta)

    def invocation(self, arrival: float, *, cold: bool = False, throttled: bool = False) -> None:
        """A serverless invocation that arrived at ``arrival`` began cold, or was throttled."""
        tiers = self.tiers
        if tiers.cold_starts is not None and self.start <= arrival < self.end:
            tiers.cold_starts += cold
            tiers.throttled += throttled

    def idle_in_transaction(self, delta: int) -> None:
        """A session began (+1) or stopped (-1) idling in an open transaction."""
        self.idle_in_tx.set(self.env.now, self.idle_in_tx.value + delta)

    def session_terminated(self) -> None:
        """Postgres ended a session for idling in a transaction too long."""
        if self.start <= self.env.now < self.end:
            self.terminated += 1

    # -- request events ---------------------------------------------------
    def request_started(self) -> None:
        self.in_flight.set(self.env.now, self.in_flight.value + 1)

    def checked_out(self) -> None:
        self.busy.set(self.env.now, self.busy.value + 1)

    def checked_in(self) -> None:
        self.busy.set(self.env.now, self.busy.value - 1)

    def request_finished(
        self,
        arrival: float,
        outcome: int,
        waited: bool,
        got_connection: float | None,
        query_done: float | None,
        asked: float | None = None,
    ) -> None:
        """One request is over: record it if it arrived in the window.

        ``asked``: when it asked a pool for a connection (None: it never did,
        a cache hit).
        """
        now = self.env.now
        self.in_flight.set(now, self.in_flight.value - 1)
        if not (self.start <= arrival < self.end):
            return
        if asked is not None:
            got = got_connection is not None
            self.handoffs.append(
                (asked, got_connection if got else now, waited, got)  # type: ignore[arg-type]
            )
        if waited:
            self.waited += 1
        if got_connection is not None:
            self.checkout.append(got_connection - arrival)
        if outcome == OK:
            self.completed += 1
            self.latency.append(now - arrival)
            if query_done is not None and got_connection is not None:
                self.query.append(query_done - got_connection)
        elif outcome == TIMEOUT:
            self.timeouts += 1
        else:
            self.errors += 1

    # -- results ----------------------------------------------------------
    def results(self) -> dict[str, float]:
        """This replication's value of every metric that applies (NaN where undefined)."""
        duration = self.end - self.start
        start_areas = self._areas_at_start or (0.0,) * 6
        end_areas = self._areas_at_end or self._areas(self.end)
        conn_mean, busy_mean, in_flight_mean, idle_tx_mean, server_mean, env_mean = (
            (e - s) / duration for s, e in zip(start_areas, end_areas, strict=True)
        )
        self.tiers.server_mean = server_mean
        self.tiers.environments_mean = env_mean
        values = window_metrics(
            self, duration=duration, connections_mean=conn_mean, busy_mean=busy_mean,
            in_flight_mean=in_flight_mean, idle_in_transaction_mean=idle_tx_mean)
        # Metrics that do not apply (no cache, no writes...) are left out rather
        # than NaN: NaN != NaN, so two identical runs would compare unequal.
        return {
            name: value
            for name, value in values.items()
            if not (name in CONDITIONAL_METRICS and math.isnan(value))
        }


def metric_values(
    *,
    duration: float,
    arrivals: int,
    completed: int,
    waited: int,
    timeouts: int,
    errors: int,
    opened: int,
    latency: Sequence[float],
    checkout: Sequence[float],
    query: Sequence[float],
    connections_mean: float,
    busy_mean: float,
    in_flight_mean: float,
    db_queries: int | None = None,
    cache_lookups: int | None = None,
    cache_hits: int = 0,
    cache_coalesced: int | None = None,
    reads_returned: int | None = None,
    stale_reads: int = 0,
    primary_reads: int = 0,
    replica_reads: Sequence[int] | None = None,
    handoffs: Sequence[Handoff] = (),
    leaked: int = 0,
    terminated: int = 0,
    idle_in_transaction_mean: float = 0.0,
    tiers: TierCounts | None = None,
) -> dict[str, float]:
    """Every metric from the window's counts and per-request times (in seconds).

    The one definition of the metrics, shared by the simulator and the live labs,
    so a prediction and a measurement always mean the same thing.  Shares are over
    the requests that arrived in the window; latencies over those that completed.

    The cache and replica counts are optional (the module docstring says what
    each one counts); left out, their metrics are NaN.  ``db_queries`` counts
    the queries sent to any database server; by default one per request that
    completed with a query (no cache: every request is one).
    """
    finished = completed + timeouts + errors
    query_ms = _milliseconds(query)
    asked_waited, overtaken = overtaken_counts(handoffs)
    return {
        "throughput_rps": completed / duration,
        **_time_metrics(latency, checkout),
        "p_wait": _ratio(waited, arrivals),
        "timeout_rate": _ratio(timeouts, arrivals),
        "error_rate": _ratio(errors, arrivals),
        "connections_opened_per_s": opened / duration,
        "connections_mean": connections_mean,
        "offered_rps": arrivals / duration,
        "query_mean_ms": _mean(query_ms),
        "connections_busy_mean": busy_mean,
        "in_flight_mean": in_flight_mean,
        "incomplete_rate": _ratio(arrivals - finished, arrivals),
        "db_queries_per_s": (len(query_ms) if db_queries is None else db_queries) / duration,
        "cache_hit_ratio": _ratio(cache_hits, cache_lookups),
        "cache_coalesced_ratio": _ratio(cache_coalesced, cache_lookups),
        "stale_read_ratio": _ratio(stale_reads, reads_returned),
        **_replica_metrics(primary_reads, replica_reads),
        "checkout_p99_ms": _percentile(_milliseconds(checkout), 99),
        "overtaken_ratio": overtaken / asked_waited if asked_waited else 0.0,
        "leaked_rate": _ratio(leaked, arrivals),
        "idle_in_transaction_mean": idle_in_transaction_mean,
        "sessions_terminated_per_s": terminated / duration,
        **(tiers or TierCounts()).metrics(duration, arrivals),
    }




def _time_metrics(latency: Sequence[float], checkout: Sequence[float]) -> dict[str, float]:
    """The latency and checkout-time metrics, in milliseconds."""
    latency_ms = _milliseconds(latency)
    checkout_ms = _milliseconds(checkout)
    return {
        "latency_mean_ms": _mean(latency_ms),
        "latency_p50_ms": _percentile(latency_ms, 50),
        "latency_p95_ms": _percentile(latency_ms, 95),
        "latency_p99_ms": _percentile(latency_ms, 99),
        "checkout_mean_ms": _mean(checkout_ms),
        "checkout_p95_ms": _percentile(checkout_ms, 95),
    }


def _replica_metrics(primary_reads: int, replica_reads: Sequence[int] | None) -> dict[str, float]:
    """How the database reads spread over the primary and the replicas."""
    if replica_reads is None:
        return {"replica_read_share": math.nan, "replica_reads_max_share": math.nan}
    replica_total = sum(replica_reads)
    return {
        "replica_read_share": _ratio(replica_total, replica_total + primary_reads),
        "replica_reads_max_share": _ratio(max(replica_reads), replica_total),
    }


def _milliseconds(seconds: Sequence[float]) -> np.ndarray:
    return np.asarray(seconds, dtype=float) * 1000.0


def _mean(values: np.ndarray) -> float:
    """The mean; NaN when there are no values."""
    return float(values.mean()) if values.size else math.nan


def _percentile(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (NumPy's default, linear interpolation); NaN when empty."""
    return float(np.percentile(values, q)) if values.size else math.nan


def _ratio(part: int | None, whole: int | None) -> float:
    """part / whole; NaN when either is not applicable (None) or the whole is empty."""
    return math.nan if part is None or not whole else part / whole


@dataclass(frozen=True, slots=True)
class Estimate:
    """A metric's point estimate with its 95% interval (None when not computable)."""

    value: float
    ci95: tuple[float, float] | None

    def to_json(self) -> dict[str, object]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "value": clean(self.value),
            "ci95": None if self.ci95 is None else [clean(self.ci95[0]), clean(self.ci95[1])],
        }


def confidence_interval(samples: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean of independent replications with a Student-t interval.

    NaN samples (a metric undefined in some replication, e.g. a latency
    percentile when nothing completed) are left out.  One sample gives no
    interval; identical samples give a zero-width one.
    """
    x = np.asarray([s for s in samples if not math.isnan(s)], dtype=float)
    if x.size == 0:
        return Estimate(math.nan, None)
    m = float(x.mean())
    if x.size == 1:
        return Estimate(m, None)
    half = float(stdtrit(x.size - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(m, (m - half, m + half))


def prediction_interval(
    samples: Sequence[float], level: float = 0.95
) -> tuple[float, float] | None:
    """Where *one more* independent replication's value falls, with probability ``level``.

    ``mean +- t * sd * sqrt(1 + 1/n)``: wider than the confidence interval of
    the mean, because a single run carries its own sampling noise.  This is
    the range to hold a single live run against.  None with fewer than two
    samples.
    """
    x = np.asarray([s for s in samples if not math.isnan(s)], dtype=float)
    if x.size < 2:
        return None
    m = float(x.mean())
    half = float(stdtrit(x.size - 1, 0.5 + level / 2) * x.std(ddof=1) * math.sqrt(1 + 1 / x.size))
    return (m - half, m + half)


def summarise(replications: Sequence[Mapping[str, float]]) -> dict[str, Estimate]:
    """Per-metric estimates across replications, in report order.

    A conditional metric (cache, replicas, stale reads) that is NaN in every
    replication does not apply to the scenario and is left out.
    """
    estimates = {}
    for name in METRICS:
        values = [r[name] for r in replications if name in r]
        if not values:
            continue
        if name in CONDITIONAL_METRICS and all(math.isnan(v) for v in values):
            continue
        estimates[name] = confidence_interval(values)
    return estimates
