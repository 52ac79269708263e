"""Metrics: what a run measures, and how replications become confidence intervals.

Two kinds of measurement, both restricted to the measured window
``[warmup, warmup + duration)``:

* **per request** (latency, checkout time, outcome): over the requests that
  *arrive* in the window, as the scenario contract defines.  Requests that
  arrive in the warm-up are simulated but not counted, so the empty pool at
  time zero does not bias the results.
* **time averages** (open connections, busy connections, requests in flight):
  the area under a step curve between the window's ends, divided by its length.

One replication gives one number per metric.  Independent replications give
independent, identically distributed numbers, so a Student-t interval
``mean ± t(0.975, R-1) · s / √R`` is a 95% confidence interval for the
expected value.  Percentiles are handled the same way: each replication's p95
is one observation.  This is the method of independent replications taught in
every simulation course (and in Ciw's documentation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit  # Student-t quantile; far lighter than scipy.stats

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
    }
)

# Outcomes of a request.
OK, TIMEOUT, ERROR = 0, 1, 2


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


class Recorder:
    """Collects one replication's observations.

    The model calls it at each event of interest; it keeps only what falls in
    the measured window.  ``now`` is read from the environment so callers do
    not have to pass it.
    """

    def __init__(self, env, start: float, end: float) -> None:  # env: simpy.Environment
        self.env = env
        self.start = start
        self.end = end
        self.latency: list[float] = []
        self.checkout: list[float] = []
        self.query: list[float] = []
        self.arrivals = 0
        self.completed = 0
        self.waited = 0
        self.timeouts = 0
        self.errors = 0
        self.opened = 0
        self.refusals = 0
        self.connections = Level()
        self.busy = Level()
        self.in_flight = Level()
        # Reads and writes by key (simlib/access.py); None = not applicable,
        # so the metric is NaN.  Counted for requests arriving in the window.
        self.db_queries: int | None = None  # None: one per completed request
        self.cache_lookups: int | None = None  # set to 0 when there is a cache
        self.cache_hits = 0
        self.cache_coalesced: int | None = None  # set to 0 with single_flight
        self.reads_returned: int | None = None  # set to 0 when the workload writes
        self.stale_reads = 0
        self.primary_reads = 0
        self.replica_reads: list[int] | None = None  # one count per replica
        self._areas_at_start: tuple[float, float, float] | None = None
        self._areas_at_end: tuple[float, float, float] | None = None
        # Snapshot the step curves at both ends of the window.
        env.timeout(start).callbacks.append(lambda _e: self._snapshot("start"))
        env.timeout(end).callbacks.append(lambda _e: self._snapshot("end"))

    def _snapshot(self, which: str) -> None:
        now = self.env.now
        areas = (self.connections.area(now), self.busy.area(now), self.in_flight.area(now))
        if which == "start":
            self._areas_at_start = areas
        else:
            self._areas_at_end = areas

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
    ) -> None:
        """One request is over: record it if it arrived in the window."""
        now = self.env.now
        self.in_flight.set(now, self.in_flight.value - 1)
        if not (self.start <= arrival < self.end):
            return
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
        start_areas = self._areas_at_start or (0.0, 0.0, 0.0)
        end_areas = self._areas_at_end or (
            self.connections.area(self.end),
            self.busy.area(self.end),
            self.in_flight.area(self.end),
        )
        conn_mean, busy_mean, in_flight_mean = (
            (e - s) / duration for s, e in zip(start_areas, end_areas, strict=True)
        )
        values = metric_values(
            duration=duration,
            arrivals=self.arrivals,
            completed=self.completed,
            waited=self.waited,
            timeouts=self.timeouts,
            errors=self.errors,
            opened=self.opened,
            latency=self.latency,
            checkout=self.checkout,
            query=self.query,
            connections_mean=conn_mean,
            busy_mean=busy_mean,
            in_flight_mean=in_flight_mean,
            db_queries=self.db_queries,
            cache_lookups=self.cache_lookups,
            cache_hits=self.cache_hits,
            cache_coalesced=self.cache_coalesced,
            reads_returned=self.reads_returned,
            stale_reads=self.stale_reads,
            primary_reads=self.primary_reads,
            replica_reads=self.replica_reads,
        )
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
) -> dict[str, float]:
    """Every metric from the window's counts and per-request times (in seconds).

    The one definition of the metrics, shared by the simulator and the live labs,
    so a prediction and a measurement always mean the same thing.  Shares are over
    the requests that arrived in the window; latencies over those that completed.

    Cache and replica counts are optional; left out, their metrics are NaN:

    * ``db_queries``: queries sent to any database server; default: one per
      request that completed with a query (no cache: every request is one);
    * ``cache_lookups`` (reads that asked the cache), ``cache_hits`` (found
      the key), ``cache_coalesced`` (with ``single_flight``: missed, then took
      the result of another read's query in flight):
      ``cache_hit_ratio = cache_hits / cache_lookups``;
    * ``reads_returned`` (reads that returned a value) and ``stale_reads`` (of
      those, ones older than the newest version committed on the primary when
      the read began): ``stale_read_ratio``;
    * ``primary_reads`` and ``replica_reads`` (one count per replica): database
      reads by destination, for how the read load spreads.
    """
    n = arrivals
    nan = math.nan
    latency_ms = np.asarray(latency, dtype=float) * 1000.0
    checkout_ms = np.asarray(checkout, dtype=float) * 1000.0
    query_ms = np.asarray(query, dtype=float) * 1000.0

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else nan

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else nan

    finished = completed + timeouts + errors
    replica_total = nan if replica_reads is None else sum(replica_reads)
    return {
        "throughput_rps": completed / duration,
        "latency_mean_ms": mean(latency_ms),
        "latency_p50_ms": pct(latency_ms, 50),
        "latency_p95_ms": pct(latency_ms, 95),
        "latency_p99_ms": pct(latency_ms, 99),
        "checkout_mean_ms": mean(checkout_ms),
        "checkout_p95_ms": pct(checkout_ms, 95),
        "p_wait": waited / n if n else nan,
        "timeout_rate": timeouts / n if n else nan,
        "error_rate": errors / n if n else nan,
        "connections_opened_per_s": opened / duration,
        "connections_mean": connections_mean,
        "offered_rps": n / duration,
        "query_mean_ms": mean(query_ms),
        "connections_busy_mean": busy_mean,
        "in_flight_mean": in_flight_mean,
        "incomplete_rate": (n - finished) / n if n else nan,
        "db_queries_per_s": (len(query_ms) if db_queries is None else db_queries) / duration,
        "cache_hit_ratio": _ratio(cache_hits, cache_lookups),
        "cache_coalesced_ratio": (
            nan if cache_coalesced is None else _ratio(cache_coalesced, cache_lookups)
        ),
        "stale_read_ratio": _ratio(stale_reads, reads_returned),
        "replica_read_share": (
            nan if replica_reads is None else _ratio(replica_total, replica_total + primary_reads)
        ),
        "replica_reads_max_share": (
            nan if replica_reads is None else _ratio(max(replica_reads), replica_total)
        ),
    }


def _ratio(part: int, whole: int | None) -> float:
    """part / whole; NaN when the whole is not applicable (None) or empty."""
    return part / whole if whole else math.nan


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
    half = float(stdtrit(x.size - 1, 0.5 + level / 2) * x.std(ddof=1)
                 * math.sqrt(1 + 1 / x.size))
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
