"""Calibrate what a scenario leaves to the machine, on a live loopback Postgres.

``calibrate(dsn)`` measures three things ``labs compare`` feeds into simlib:

``connect_times``   seconds for ``psycopg2.connect(dsn)`` (then closed), one
                    sample per fresh connection: TCP handshake, startup packet,
                    authentication and the backend fork; plus what the new
                    backend's *first* query costs beyond a second one (it
                    loads the catalog caches, about 1 ms here).  Whoever opens
                    a connection also runs its first query, so simlib charges
                    both as one connect.
``rtt``             median seconds of ``SELECT 1`` round trips on one connection.
``query_overhead``  median of ``SELECT pg_sleep(0.005)`` minus 0.005 minus
                    ``rtt``, floored at 0: what the server adds to a waiting
                    query beyond its sleep and the round trip (parse/plan,
                    timer slack).

It is bounded in time: every connect has a 3 s timeout and sampling stops at
``deadline`` seconds (default 15) with whatever it has (at least one sample of
each, or an error).  It refuses DSNs that are not loopback (127.0.0.0/8, ::1,
localhost or a Unix socket): calibration numbers from a remote server would
not describe this machine's live runs and would load someone else's server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg2
import psycopg2.errors
import redis
import sqlalchemy
from psycopg2.extensions import parse_dsn

from labs.drivers.sqlalchemy import sqlalchemy_url
from labs.executor import run_live
from labs.query import one
from labs.records import OK, Record
from labs.topology import Topology
from simlib.pools import PoolConfig
from simlib.scenario import Scenario, parse_scenario

SLEEP = 0.005

#: Seconds of the failure calibration's measured window (see :func:`failure_cpu`).
FAILURE_SECONDS = 1.0
CONNECT_TIMEOUT = 3

#: pg_sleep's step: it waits on its latch in whole milliseconds, rounding up.
PG_SLEEP_GRANULARITY = 0.001


def live_query(scenario: Scenario, overhead: float = 0.0) -> Any:
    """The scenario's ``[query]`` as the live run runs it: pg_sleep, in whole milliseconds.

    ``overhead``: the calibrated ``query_overhead``, how much later than its
    rounded sleep a ``pg_sleep`` answers (a CPU-bound query has none: its
    overhead is charged with its round trip, :meth:`Calibration.round_trip`).
    """
    return dataclasses.replace(scenario.query, sleep_granularity=PG_SLEEP_GRANULARITY,
                               sleep_overhead=overhead)


@dataclass(frozen=True)
class Calibration:
    connect_times: list[float]  # connect + the first query's extra cost
    rtt: float
    query_overhead: float
    first_query_extra: float = 0.0  # median; already inside connect_times
    #: the client's CPU per pool operation (None: not measured)
    operations: OperationCosts | None = None

    @property
    def server_connect_times(self) -> list[float]:
        """Connect samples without the client's own CPU, which simlib charges apart."""
        cpu = 0.0 if self.operations is None else self.operations.connect
        return [max(1e-5, c - cpu) for c in self.connect_times]

    @property
    def connect_time_median(self) -> float:
        return statistics.median(self.connect_times)

    def round_trip(self, scenario: Scenario) -> float:
        """What simlib charges ``scenario`` per round trip (``database.network_rtt``).

        The plain rtt: a sleeping query's overhead is the server's
        (``[query] sleep_overhead``), paid once per query and not by a
        reset's ROLLBACK or a pre-ping.  A CPU-bound query is not a sleep, so
        its statement's own overhead (calibrated with pg_sleep, the only
        measure there is) stays with its round trips, as it always was.
        """
        return self.rtt + (self.query_overhead if scenario.query.cpu_bound else 0.0)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["connect_times"] = list(self.connect_times)
        d["operations"] = None if self.operations is None else self.operations.to_dict()
        d["connect_time_median"] = self.connect_time_median
        d["samples"] = len(self.connect_times)
        return d


def _is_loopback(dsn: str) -> bool:
    host = parse_dsn(dsn).get("host") or ""
    for h in host.split(","):
        h = h.strip()
        if not h or h.startswith("/") or h == "localhost":
            continue
        try:
            if not ipaddress.ip_address(h).is_loopback:
                return False
        except ValueError:
            return False
    return True


def calibrate(dsn: str, samples: int = 50, *, deadline: float = 15.0) -> Calibration:
    """Measure connect time, round trip and query overhead at ``dsn`` (loopback only)."""
    if samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples}")
    if not _is_loopback(dsn):
        raise ValueError(f"calibrate: only loopback servers are calibrated, got {dsn!r}")
    stop = time.perf_counter() + deadline
    # Each measurement phase gets a third of the budget.
    phase = deadline / 3
    connect_times, first_query = _connects(dsn, samples, min(stop, time.perf_counter() + phase))
    conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # warm the backend (catalog caches) first
            cur.fetchone()
            rtts = _timed(cur, "SELECT 1", (), samples, min(stop, time.perf_counter() + phase))
            sleeps = _timed(cur, "SELECT pg_sleep(%s)", (SLEEP,), samples, stop)
    finally:
        conn.close()
    rtt = statistics.median(rtts)
    overhead = max(0.0, statistics.median(sleeps) - SLEEP - rtt)
    return Calibration(connect_times=connect_times, rtt=rtt, query_overhead=overhead,
                       first_query_extra=statistics.median(first_query),
                       operations=calibrate_operations(dsn, max(100, samples * 4)))


def _connects(dsn: str, samples: int, phase_end: float) -> tuple[list[float], list[float]]:
    """Fresh connections: (connect seconds + the first query's extra, that extra alone)."""
    connect_times: list[float] = []
    first_query: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
        t1 = time.perf_counter()
        try:
            with conn.cursor() as cur:
                extra = _query_seconds(cur) - _query_seconds(cur)  # first minus second
        finally:
            conn.close()
        first_query.append(max(0.0, extra))
        connect_times.append(t1 - t0 + max(0.0, extra))
        if time.perf_counter() >= phase_end:
            break
    return connect_times, first_query


def _timed(cur: Any, sql: str, params: tuple[Any, ...], samples: int,
           phase_end: float) -> list[float]:
    """Seconds of up to ``samples`` runs of one statement, until ``phase_end``."""
    times: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        cur.execute(sql, params or None)
        cur.fetchone()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= phase_end:
            break
    return times


def _query_seconds(cur: Any) -> float:
    """Seconds for one ``SELECT pg_sleep(0)`` round trip on ``cur``."""
    t0 = time.perf_counter()
    cur.execute("SELECT pg_sleep(0)")
    cur.fetchone()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# The client's own costs, per library
# ---------------------------------------------------------------------------

#: Share of the pool's connections the calibration run keeps busy on average:
#: low enough that a request almost never waits for a connection, so what is
#: left after subtracting the query is the client's own cost.
CLIENT_UTILISATION = 0.3
#: Highest arrival rate of the calibration run (requests per second).
CLIENT_RATE_MAX = 200.0
#: Measured seconds of the calibration run (after a 0.5 s warm-up).
CLIENT_SECONDS = 2.0
#: Arrivals per second of the run that measures the process's background CPU.
IDLE_RATE = 2.0
#: What each of that run's few requests is assumed to cost (seconds of CPU).
CPU_PER_IDLE_REQUEST = 0.0005


@dataclass(frozen=True)
class ClientCalibration:
    """Samples of the client's per-request costs with one pool library.

    ``dispatch``: scheduled arrival until a connection is in hand, for
    requests that did not wait for the pool, minus any connect they paid
    themselves (simlib charges connects separately, from ``connect_time``).

    ``hold``: connection in hand until it is back in the pool, minus the
    drawn service time and the round trips simlib already charges (the query
    and, where the library resets a returned connection, the reset).

    ``cpu_per_request``: the client process's CPU seconds (all its threads:
    the load generator, the pool, the driver, the probes) over the run,
    divided by the requests it served, less its CPU without requests
    (``background_cores`` x the run's seconds: the probes, the timers, the
    pool's own threads).  Unlike a wall-clock time this does
    not grow with load, so it is what simlib runs on the process's
    interpreter.  When it is less than ``dispatch`` plus ``hold``, the rest of
    those is waiting (``cpu_share``, the CPU's share of them); when it is
    more, the excess is CPU the process spends outside a request's path (the
    load generator's bookkeeping, the probes), charged to each request after
    its answer (``after``).
    """

    pool_kind: str
    rate: float
    dispatch: list[float]
    hold: list[float]
    cpu_per_request: float = 0.0
    workload: str = "open"  # the calibration run's shape: the scenario's own
    background_cores: float = 0.0  # the process's CPU per second without requests
    #: CPU seconds per request that got no connection (None: not measured)
    cpu_per_failure: float | None = None

    @property
    def wall_per_request(self) -> float:
        """Mean dispatch plus mean hold: the client's wall time on a request's path."""
        return statistics.fmean(self.dispatch) + statistics.fmean(self.hold)

    @property
    def cpu_share(self) -> float:
        """The share of dispatch and hold that is CPU (the process used less than their sum)."""
        wall = self.wall_per_request
        if self.cpu_per_request <= 0 or wall <= 0:
            return 1.0  # not measured: all CPU, as before
        return min(1.0, self.cpu_per_request / wall)

    @property
    def after(self) -> float:
        """CPU per request beyond dispatch and hold (the process used more than their sum)."""
        return max(0.0, self.cpu_per_request - self.wall_per_request)

    @property
    def fail(self) -> float:
        """CPU a failed request spends beyond its dispatch's CPU (``[client] fail``)."""
        if self.cpu_per_failure is None:
            return 0.0
        dispatch_cpu = statistics.fmean(self.dispatch) * self.cpu_share
        return max(0.0, self.cpu_per_failure - dispatch_cpu)

    def to_dict(self) -> dict[str, object]:
        def summary(xs: list[float]) -> dict[str, float | int]:
            return {"mean": statistics.fmean(xs), "median": statistics.median(xs),
                    "samples": len(xs)}

        return {"pool_kind": self.pool_kind, "rate": self.rate, "workload": self.workload,
                "dispatch": summary(self.dispatch), "hold": summary(self.hold),
                "cpu_per_request": self.cpu_per_request, "cpu_share": self.cpu_share,
                "background_cores": self.background_cores,
                "after": self.after, "cpu_per_failure": self.cpu_per_failure,
                "fail": self.fail}


def client_rate(scenario: Scenario) -> float:
    """The calibration run's arrival rate: light load on this scenario's pool."""
    limit = scenario.pool.connection_limit() or 64  # no client-side limit: as a 64 pool
    service = max(1e-4, float(scenario.query.service_time.mean))
    rate = min(CLIENT_RATE_MAX, CLIENT_UTILISATION * limit / service)
    if scenario.workload.kind == "open":
        rate = min(rate, scenario.workload.rate)
    return max(20.0, rate)


def _light_scenario(scenario: Scenario) -> Scenario:
    """The scenario reduced to its pool library at light load, for :func:`calibrate_client`."""
    rate = client_rate(scenario)
    # The pool library's own costs, with the plain statement on the primary:
    # the keyed path's cache and replicas are left out here (their Redis
    # calls are charged as the cache's hit_time instead), and so are a
    # fleet's other processes, PgBouncer (its hop is [pgbouncer] network_rtt)
    # and serverless environments: one process, one pool, straight to Postgres.
    data = {k: v for k, v in scenario.to_dict().items()
            if k not in ("cache", "replicas", "client", "fleet", "pgbouncer", "serverless")}
    workload = data.get("workload", {})
    steady = {k: v for k, v in (workload if isinstance(workload, dict) else {}).items()
              if k != "rate_schedule"}  # a steady light rate instead of a schedule
    data["workload"] = {**steady, "write_fraction": 0.0}
    shape: dict[str, object] = {"workload.kind": "open", "workload.rate": rate}
    if scenario.workload.kind == "closed":
        # The scenario's own loop (the load generator's per-request CPU
        # differs between its open and closed loops), with one client and no
        # think time: it never waits for the pool or for another's Python,
        # and it keeps its core busy.  A thinking client would leave the core
        # idle between requests (cold caches, a slower clock) and spread the
        # probes' fixed CPU per second over few requests: both inflate the
        # CPU per request that simlib then charges under load.
        shape = {"workload.kind": "closed", "workload.clients": 1, "workload.think_time": 0.0}
    light = parse_scenario(data, default_name=scenario.name).with_values({
        **shape,
        "workload.duration": CLIENT_SECONDS,
        "workload.warmup": 0.5,
    })
    return light


def calibrate_client(scenario: Scenario, topology: Topology, network_rtt: float, *,
                     query_overhead: float = 0.0,
                     first_query_extra: float = 0.0,
                     operations: OperationCosts | None = None) -> ClientCalibration:
    """Measure the client's costs with ``scenario``'s pool library at light load.

    Runs the scenario's own pool (same library and settings, same query kind)
    for :data:`CLIENT_SECONDS` at :func:`client_rate`, an open loop with the
    scenario's service times, through the live executor, on the topology's
    primary.  ``network_rtt`` is the round trip simlib will charge per query
    (calibrated rtt + query overhead), subtracted from each hold so it is not
    counted twice; so is a pre-ping's, from the dispatch.  ``first_query_extra``
    is what a new backend's first query costs beyond a later one: the
    calibrated connect times already carry it, so a request that opened its
    own connection (every request without a pool) has it taken off its hold.
    """
    light = _light_scenario(scenario)
    result = run_live(light, Topology(topology.primary), drain_limit=10.0)
    background = background_cores(light, topology)
    cpu = busy_cpu(light, concurrency(scenario), topology, background) or _cpu_per_request(
        result, background)
    start, end = light.workload.warmup, light.workload.warmup + light.workload.duration
    dispatch, hold = client_samples(result.records, start, end,
                                    charged_round_trips(scenario.pool, network_rtt, operations),
                                    checkout=charged_checkout(scenario.pool, network_rtt,
                                                              operations),
                                    first_query=first_query_extra,
                                    server_time=live_query(scenario,
                                                           query_overhead).server_time)
    if not dispatch:
        raise RuntimeError("calibrate_client: no request of the calibration run succeeded")
    failure = None
    if scenario.pool.checkout_wait() == 0 and scenario.pool.connection_limit() is not None:
        failure = failure_cpu(light, topology, background)
    return ClientCalibration(scenario.pool.kind, client_rate(scenario), dispatch, hold, cpu,
                             light.workload.kind, background, failure)


def busy_cpu(light: Scenario, busy: int, topology: Topology, background: float) -> float:
    """The CPU per request with ``busy`` clients of ``light``'s closed loop (0: not run).

    A process kept busy by several requests at once spends less per request
    than one that idles between them (its core stays warm; one wake-up serves
    several ready sockets), 20-30% less here with threads.  Its wall times
    would hold the waits for the GIL that simlib adds, so dispatch and hold
    still come from the one-client run.
    """
    if busy <= 1:
        return 0.0
    run = run_live(light.with_values({"workload.clients": busy}),
                   Topology(topology.primary), drain_limit=10.0)
    return _cpu_per_request(run, background)


def concurrency(scenario: Scenario) -> int:
    """Requests a closed-loop scenario keeps running at once: its clients, up to the pool's limit.

    1 for an open loop, whose calibration runs at its own light rate.
    """
    if scenario.workload.kind != "closed":
        return 1
    limit = scenario.pool.connection_limit()
    clients = scenario.workload.clients
    return clients if limit is None else min(clients, limit)


def _cpu_per_request(result: Any, background: float) -> float:
    """The client process's CPU seconds per served request, less its background (0: unknown)."""
    served = sum(1 for r in result.records if r.outcome is not None)
    cpu_s, wall_s = _cpu_and_wall(result)
    if cpu_s is None or not served:
        return 0.0
    return max(0.0, cpu_s - background * (wall_s or 0.0)) / served


def failure_cpu(light: Scenario, topology: Topology, background: float) -> float | None:
    """CPU seconds the client spends per request that gets no connection at once.

    For a pool that never waits (psycopg2's ``getconn`` raises
    ``PoolError`` when every connection is out): one client in a closed loop
    whose every request keeps its connection (a leak longer than the run),
    so after the pool's limit every checkout fails.  What the process uses
    beyond its background CPU, over the failed requests, is the library's
    error path, the load generator's handling and the pause after a failure
    that came at once, which is what simlib charges (dispatch plus ``fail``).
    """
    run = light.with_values({"workload.kind": "closed", "workload.clients": 1,
                             "workload.think_time": 0.0, "workload.duration": FAILURE_SECONDS,
                             "workload.warmup": 0.5, "client.leak_fraction": 1.0,
                             "client.leak_time": 4 * FAILURE_SECONDS + 30.0})
    result = run_live(run, Topology(topology.primary), drain_limit=5.0)
    if not any(r.outcome is not None and r.outcome != OK for r in result.records):
        return None
    # Over every request: the few that got a connection (the limit's worth)
    # cost what a request does.
    cpu = _cpu_per_request(result, background)
    return cpu if _cpu_and_wall(result)[0] is not None else None


def background_cores(light: Scenario, topology: Topology) -> float:
    """The client process's CPU per second that does not come with requests.

    The probes' sampling, the load generator's timers, the pool's own
    threads: measured in a run of the same pool with almost no requests.
    Per request it would shrink as the load grows, so the calibration takes
    it off the CPU per request.
    """
    idle = run_live(light.with_values({"workload.kind": "open", "workload.rate": IDLE_RATE,
                                       "workload.duration": 1.0}),
                    Topology(topology.primary), drain_limit=5.0)
    cpu, wall = _cpu_and_wall(idle)
    if cpu is None or not wall:
        return 0.0
    served = sum(1 for r in idle.records if r.outcome is not None)
    return max(0.0, cpu - CPU_PER_IDLE_REQUEST * served) / wall


def _cpu_and_wall(result: Any) -> tuple[float | None, float | None]:
    """The client process's CPU seconds and the wall seconds of one live run."""
    cpu = result.details.get("cpu", {})
    c, w = cpu.get("client_cpu_s"), cpu.get("wall_s")
    return (float(c) if isinstance(c, int | float) else None,
            float(w) if isinstance(w, int | float) else None)


def charged_round_trips(pool: PoolConfig, network_rtt: float,
                        operations: OperationCosts | None = None) -> float:
    """Seconds simlib charges a request while it holds a connection, beyond ``hold``.

    The query's round trip, plus the reset of a returned connection where the
    library does one (the pool kind's own :meth:`~simlib.pools.PoolConfig.round_trips`,
    the same figure simlib.pools charges) with its Python (``[client] reset``).
    """
    resets = pool.round_trips().release
    cpu = 0.0 if operations is None else operations.reset
    return network_rtt * (1 + resets) + cpu * resets


def charged_checkout(pool: PoolConfig, network_rtt: float,
                     operations: OperationCosts | None = None) -> float:
    """Seconds simlib charges at the checkout of a connection it did not just open.

    SQLAlchemy's ``pool_pre_ping`` sends one round trip before handing out a
    pooled connection (not a freshly opened one); simlib.pools.sqlalchemy
    charges it ``network_rtt`` plus its Python (``[client] ping``).  The live
    run's dispatch time contains the real ping, so the client calibration
    takes this charge off it.
    """
    pings = pool.round_trips().checkout
    cpu = 0.0 if operations is None else operations.ping
    return (network_rtt + cpu) * pings


def _queued_for_thread(records: Sequence[Record],
                       threads: int | None) -> Callable[[Record], bool]:
    """Whether a request found all ``threads`` busy when it was scheduled (None: never)."""
    if threads is None:
        return lambda r: False
    began = np.sort([r.started for r in records if r.started is not None])
    ended = np.sort([r.finished for r in records if r.finished is not None])

    def queued(r: Record) -> bool:
        t = r.scheduled
        busy = np.searchsorted(began, t, side="left") - np.searchsorted(ended, t, side="left")
        return bool(busy >= threads)

    return queued


def client_samples(records: Sequence[Record], start: float, end: float, charged: float,
                   cached: bool = False, *, checkout: float = 0.0,
                   first_query: float = 0.0,
                   server_time: Callable[[float], float] = float,
                   threads: int | None = None,
                   ) -> tuple[list[float], list[float]]:
    """Per-request client costs in a run's records: (dispatch, hold) samples.

    Successful requests scheduled in ``[start, end)`` that used a connection
    (a cache hit has none) and gave it back themselves (not a leak).  Dispatch
    only from requests that did not wait
    for the pool (a wait is the pool's doing, not the client's), minus any
    connect the request paid itself or else the ``checkout`` charge (the
    pre-ping simlib adds to a pooled connection), and not from reads that
    asked a cache first (``cached``: their Redis ``GET`` is charged as
    ``hit_time``); hold minus the service time and the ``charged`` round
    trips, and, for a request that opened its connection, ``first_query``
    (the cold backend's extra, where the connect times already include it).
    ``server_time`` turns a drawn service time into what the server spent
    (``Query.server_time``: ``pg_sleep`` sleeps whole milliseconds).
    ``threads``: an open loop's worker threads; dispatch leaves out the
    requests that found them all busy, whose wait in the executor's queue
    simlib simulates (``[host] threads``) rather than charges.
    """
    dispatch: list[float] = []
    hold: list[float] = []
    queued = _queued_for_thread(records, threads)
    for r in records:
        if not (start <= r.scheduled < end) or r.outcome != OK or r.got is None:
            continue
        if r.leaked:
            # Its connection went back leak seconds later, through the closer:
            # that is the scenario's leak_time, not the client's own cost.
            continue
        opened = r.connect_s > 0
        if not r.waited and not queued(r) and not (cached and r.key >= 0 and not r.write):
            dispatch.append(max(0.0, r.got - r.scheduled - r.connect_s
                                - (0.0 if opened else checkout)))
        released = r.released if r.released is not None else r.got
        hold.append(max(0.0, released - r.got - server_time(r.service) - charged
                        - (first_query if opened else 0.0)))
    return dispatch, hold


# ---------------------------------------------------------------------------
# The keyed path's inputs: the cache's round trip, the replicas' lag
# ---------------------------------------------------------------------------


def calibrate_cache(redis_url: str, samples: int = 200) -> dict[str, float]:
    """The cache's ``hit_time``: medians of redis-py ``GET`` and ``SET ... PX`` round trips.

    simlib charges ``hit_time`` once per cache call (a ``GET``; a ``SET``
    after a miss; a ``DEL`` or ``SET`` after a write); the calls cost about
    the same on loopback, so ``hit_time`` is the median over both kinds.
    """
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    key = f"labs:calibrate:{time.perf_counter_ns()}"
    gets: list[float] = []
    sets: list[float] = []
    try:
        client.set(key, 1, px=60_000)  # connect outside the timing
        for i in range(samples):
            t0 = time.perf_counter()
            client.set(key, i, px=60_000)
            t1 = time.perf_counter()
            client.get(key)
            t2 = time.perf_counter()
            sets.append(t1 - t0)
            gets.append(t2 - t1)
        client.delete(key)
    finally:
        client.close()
    return {
        "get_median": statistics.median(gets),
        "set_median": statistics.median(sets),
        "hit_time": statistics.median(gets + sets),
        "samples": samples,
    }


def calibrate_lag(primary: str, replica: str, samples: int = 5,
                  timeout: float = 30.0) -> list[float]:
    """Seconds from a commit returning on the primary to its row being visible on ``replica``.

    Each sample updates a row of a small table of its own (``labs_lag``) on
    the primary, then polls the replica every 0.5 ms until the new value
    shows.  With ``recovery_min_apply_delay`` set this is the delay plus
    the standby's apply time; without it, the streaming delay alone.
    """
    p = psycopg2.connect(primary, application_name="labs-calibrate", connect_timeout=3)
    r = psycopg2.connect(replica, application_name="labs-calibrate", connect_timeout=3)
    p.autocommit = r.autocommit = True
    lags: list[float] = []
    try:
        with p.cursor() as pc, r.cursor() as rc:
            pc.execute("CREATE TABLE IF NOT EXISTS labs_lag (id int PRIMARY KEY, v bigint)")
            pc.execute("INSERT INTO labs_lag VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
            deadline = time.monotonic() + timeout
            while True:  # the table (created now, perhaps) must reach the replica first
                try:
                    rc.execute("SELECT v FROM labs_lag WHERE id = 1")
                    if rc.fetchone() is not None:
                        break
                except psycopg2.errors.UndefinedTable:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"calibrate_lag: {replica} does not replay the primary")
                time.sleep(0.01)
            for _ in range(samples):
                pc.execute("UPDATE labs_lag SET v = v + 1 WHERE id = 1 RETURNING v")
                version = one(pc)
                committed = time.perf_counter()
                while True:
                    rc.execute("SELECT v FROM labs_lag WHERE id = 1")
                    if one(rc) >= version:
                        lags.append(time.perf_counter() - committed)
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"calibrate_lag: {replica} lags over {timeout:g} s")
                    time.sleep(0.0005)
    finally:
        p.close()
        r.close()
    return lags


# ---------------------------------------------------------------------------
# What each pool operation costs the client, measured one at a time
# ---------------------------------------------------------------------------

#: Repetitions of each operation in :func:`calibrate_operations`.
OPERATION_SAMPLES = 400


@dataclass(frozen=True)
class OperationCosts:
    """The client's CPU seconds for a pre-ping, a reset on return and a connect.

    Each is measured on its own, as the difference between two otherwise
    identical loops on one connection (``time.thread_time``: this thread's
    CPU, so the wait for the server is not in it), and the wall clock of the
    same difference is kept beside it:

    * ``ping``: a SQLAlchemy checkout with ``pool_pre_ping`` minus one
      without: the pool's ping code and psycopg2's ``SELECT 1`` (the wall
      difference also has the round trip);
    * ``reset``: a return with ``reset_on_return="rollback"`` minus one with
      none: the ``ROLLBACK``'s Python (its wall, the round trip too);
    * ``connect``: ``psycopg2.connect`` and ``close``: libpq's startup,
      SCRAM's key derivation (4096 rounds of HMAC-SHA-256, on the client),
      the new backend's first query.  The server's share of a connect is the
      rest of its wall time, which the calibrated ``connect_time`` keeps.
    """

    ping: float
    reset: float
    connect: float
    ping_wall: float
    reset_wall: float
    connect_wall: float
    #: seconds from ``Condition.notify()`` until the woken thread runs, the
    #: notifier blocking at once (``[host] wakeup``)
    wakeup: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _per_call(fn: Any, samples: int) -> tuple[float, float]:
    """Median CPU and wall seconds of one ``fn()`` call, in batches of ten."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(max(1, samples // 10)):
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(10):
            fn()
        cpu.append((time.thread_time() - c0) / 10)
        wall.append((time.perf_counter() - w0) / 10)
    return statistics.median(cpu), statistics.median(wall)


def calibrate_operations(dsn: str, samples: int = OPERATION_SAMPLES) -> OperationCosts:
    """Measure :class:`OperationCosts` on the loopback server at ``dsn``."""
    if not _is_loopback(dsn):
        raise ValueError(f"calibrate: only loopback servers are calibrated, got {dsn!r}")
    url = sqlalchemy_url(dsn)

    def engine(**kw: Any) -> Any:
        e = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, **kw)
        e.raw_connection().close()  # open its one connection outside the timing
        return e

    def checkout(e: Any) -> Callable[[], None]:
        return lambda: e.raw_connection().close()

    plain, pinged = engine(), engine(pool_pre_ping=True)
    unreset = engine(pool_reset_on_return=None)
    try:
        base_cpu, base_wall = _per_call(checkout(unreset), samples)
        plain_cpu, plain_wall = _per_call(checkout(plain), samples)
        ping_cpu, ping_wall = _per_call(checkout(pinged), samples)
    finally:
        for e in (plain, pinged, unreset):
            e.dispose()

    def connect() -> None:
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        conn.close()

    connect_cpu, connect_wall = _per_call(connect, max(10, samples // 10))
    wakeup = thread_wakeup(max(50, samples // 2))
    # The loop's own SELECT 1 is not part of a connect: take one off.
    conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    try:
        with conn.cursor() as cur:
            def select() -> None:
                cur.execute("SELECT 1")
                cur.fetchone()

            select_cpu, select_wall = _per_call(select, samples)
    finally:
        conn.close()
    return OperationCosts(
        ping=max(0.0, ping_cpu - plain_cpu),
        reset=max(0.0, plain_cpu - base_cpu),
        connect=max(0.0, connect_cpu - select_cpu),
        ping_wall=max(0.0, ping_wall - plain_wall),
        reset_wall=max(0.0, plain_wall - base_wall),
        connect_wall=max(0.0, connect_wall - select_wall),
        wakeup=wakeup,
    )


def thread_wakeup(samples: int = 200) -> float:
    """Median seconds from ``Condition.notify()`` until the woken thread runs.

    The notifier blocks right after notifying (it waits for the woken one's
    answer), so nothing holds the GIL meanwhile: what is left is the OS
    waking the thread (a futex) and running it on a core.
    """
    cond = threading.Condition()
    answered = threading.Event()
    times: list[float] = []
    notified_at = [0.0]
    stop = [False]

    def waiter() -> None:
        with cond:
            while True:
                cond.wait()
                if stop[0]:
                    return
                times.append(time.perf_counter() - notified_at[0])
                answered.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.01)
    for _ in range(samples):
        answered.clear()
        with cond:
            notified_at[0] = time.perf_counter()
            cond.notify()
        answered.wait(1.0)
        time.sleep(0.0005)  # let the waiter park again
    with cond:
        stop[0] = True
        cond.notify()
    t.join(1.0)
    return statistics.median(times) if times else 0.0


def calibrate_pgbouncer(dsn: str, direct_rtt: float, samples: int = 50) -> dict[str, object]:
    """PgBouncer's own costs at ``dsn``: a client's login and the extra hop's round trip.

    simlib charges a login at PgBouncer as ``[pgbouncer] connect_time`` (the
    server login behind it is ``database.connect_time``) and every round trip
    through it ``[pgbouncer] network_rtt`` on top of the direct one.  A first
    connection warms PgBouncer's pool (its first client waits for a server
    login to learn the server's parameters); then each ``psycopg2.connect`` is
    PgBouncer's login alone, and the median ``SELECT 1`` through it, less the
    direct round trip ``direct_rtt``, is the hop.
    """
    warm = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    try:
        warm.autocommit = True
        with warm.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
            rtts = _timed(cur, "SELECT 1", (), samples, time.perf_counter() + 5.0)
    finally:
        warm.close()
    logins: list[float] = []
    deadline = time.perf_counter() + 5.0
    for _ in range(samples):
        t0 = time.perf_counter()
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
        logins.append(time.perf_counter() - t0)
        conn.close()
        if time.perf_counter() >= deadline:
            break
    return {"connect_times": logins, "connect_median": statistics.median(logins),
            "rtt": statistics.median(rtts),
            "hop": max(0.0, statistics.median(rtts) - direct_rtt)}
