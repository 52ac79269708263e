"""The live executor: run a scenario on real Postgres through the real pool library.

``run_live(scenario, topology)`` runs in three phases, one function each:

1. **plan** (:func:`plan_run`): the run's ``application_name`` (unique, so
   the server's view of *our* connections can be told apart from everything
   else), the query (for ``cpu_bound`` queries, a CPU-burn query calibrated on
   this server, :func:`labs.query.calibrate_cpu`, so a service time of *s*
   seconds keeps one core busy for about *s*), the keyed path's table and
   replicas made ready, the driver (labs/drivers/, or the keyed path over it,
   labs/access.py), and the probes that will watch the servers (labs/probes.py);
2. **drive** (:func:`drive_run`): open the pool, start the probes and the load
   generator (labs/loadgen.py): the open-loop Poisson schedule simlib uses for
   replication 0, or closed-loop clients; after the window let the window's
   requests finish (drain, up to ``max(60, duration)`` seconds as in simlib),
   stop, close the pool;
3. **measure** (:func:`measure_run`): turn the per-request records into
   simlib's metrics with the same rules (labs/live_metrics.py), and the
   probes' samples into the server's view.

Where the servers are comes in one :class:`~labs.topology.Topology` (the
primary, its replicas, the cache), as the services layer found or started
them.  One live run is one replication: ``scenario.replications`` is ignored
and ``ci95`` is null.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extensions import parse_dsn

from labs.access import KeyedDriver, prepare_table, wait_for_replicas
from labs.drivers import driver_class
from labs.fleet import check_fleet, drive_fleet
from labs.host import CpuMeter
from labs.json_out import json_safe
from labs.live_metrics import (
    LIVE_METRICS,
    Window,
    keyed_faults,
    leak_facts,
    metrics,
    request_facts,
)
from labs.loadgen import Driven, LoadFacts, Observer, drive
from labs.probes import (
    CacheMonitor,
    Monitor,
    PgBouncerMonitor,
    Probe,
    ReplicaMonitors,
    ReplicationMonitor,
    ServerMonitor,
    cancel_backends,
    session_counts,
    step_average,
)
from labs.query import QuerySpec, calibrate_cpu
from labs.records import Record, RunContext
from labs.serverless import ServerlessDriver, serverless_values
from labs.topology import Endpoint, Topology
from simlib.scenario import Scenario, ScenarioError
from simlib.simulation import DRAIN_FACTOR, DRAIN_MIN

__all__ = ["LIVE_METRICS", "RUN_APPLICATION_NAME", "DriveResult", "LiveResult", "Plan", "drive_run",
           "measure_run", "plan_run", "run_live"]

#: A Postgres regular expression matching a live run's ``application_name``
#: (:func:`plan_run`: ``labs-<pid>-<8 hex digits>``; its monitor's, which adds
#: ``-monitor``, does not match), for watching a run's backends from outside.
RUN_APPLICATION_NAME = r"^labs-[0-9]+-[0-9a-f]{8}$"


@dataclass
class LiveResult:
    """One live run: client-side metrics, the server's view, and how it was run."""

    scenario: Scenario
    metrics: dict[str, float]
    server: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    #: every request's record (labs.records.Record), for plots; not in the JSON
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


@dataclass
class Plan:
    """A live run ready to go: its context, driver, probes, window and facts so far."""

    scenario: Scenario
    topology: Topology
    ctx: RunContext
    driver: Driven
    monitor: Monitor  # our connections on the primary (connections_mean)
    probes: list[Probe]
    drain_limit: float
    details: dict[str, Any]

    @property
    def admin(self) -> str:
        """Where labs itself connects: monitoring, calibration, the cancel at the end."""
        return self.topology.primary.admin_dsn

    @property
    def start(self) -> float:
        return self.scenario.workload.warmup

    @property
    def end(self) -> float:
        return self.scenario.workload.warmup + self.scenario.workload.duration


@dataclass
class DriveResult:
    """What the drive phase hands the measure phase."""

    records: list[Record]
    facts: LoadFacts
    cpu: dict[str, float | int | None]
    run_end: float
    #: pg_stat_database's session counts before and after the run (labs.probes.session_counts)
    sessions: tuple[dict[str, int | None], dict[str, int | None]]


def _query(scenario: Scenario, admin: str, details: dict[str, Any]) -> QuerySpec:
    """The run's query: pg_sleep, or the CPU burn calibrated on this server."""
    if not scenario.query.cpu_bound:
        return QuerySpec()
    mean = float(getattr(scenario.query.service_time, "mean", 0.01))
    calibration = calibrate_cpu(admin, target=min(0.05, max(0.002, mean)))
    details["cpu_calibration"] = calibration
    return QuerySpec(cpu_bound=True, seconds_per_row=calibration["seconds_per_row"])


def _driver(scenario: Scenario, topology: Topology, ctx: RunContext) -> Driven:
    """The scenario's driver; on the keyed path one per database, behind the keyed path."""
    if scenario.serverless is not None:
        return ServerlessDriver(scenario, ctx)
    cls = driver_class(scenario.pool.kind)
    if not scenario.keyed:
        return cls(scenario, ctx)
    w = scenario.workload
    replicas = [e.dsn for e in topology.replicas]
    prepare_table(ctx.dsn, w.keys)
    lag = float(getattr(scenario.replicas.lag, "mean", 1.0)) if scenario.replicas else 0.0
    wait_for_replicas(ctx.dsn, replicas, timeout=30.0 + 2 * lag)
    cache = topology.cache.dsn if topology.cache is not None else None
    return KeyedDriver(scenario, ctx, cls(scenario, ctx),
                       [cls(scenario, ctx.for_database(dsn)) for dsn in replicas], cache)


def _topology_for(scenario: Scenario, topology: Topology) -> Topology:
    """The servers the scenario uses; ValueError when the topology lacks one it needs."""
    count = scenario.replicas.count if scenario.replicas is not None else 0
    if len(topology.replicas) < count:
        raise ValueError(
            f"replicas.count: the scenario needs {count} replica DSN(s), "
            f"got {len(topology.replicas)}"
        )
    if scenario.cache is not None and topology.cache is None:
        raise ValueError("cache: the scenario has a [cache] and needs a Redis URL, got none")
    return topology.with_replicas(count)


def session_settings(scenario: Scenario) -> dict[str, str]:
    """Server settings for the run's sessions, from the scenario (libpq ``-c``, asyncpg's
    ``server_settings``): applied per connection, so they hold on any server.

    ``[database] idle_in_transaction_session_timeout`` is in seconds and
    Postgres's setting in milliseconds (at least 1 ms: 0 would switch it
    off); 0 = off, the server's own setting, and nothing is sent.
    """
    timeout = scenario.database.idle_in_transaction_session_timeout
    if timeout <= 0:
        return {}
    return {"idle_in_transaction_session_timeout": str(max(1, round(timeout * 1000.0)))}


def tiers(scenario: Scenario) -> bool:
    """The scenario has many processes or PgBouncer: Postgres's own count is measured too."""
    return (scenario.fleet is not None or scenario.pgbouncer is not None
            or scenario.serverless is not None)


def _pgbouncer(scenario: Scenario, topology: Topology) -> Endpoint | None:
    """The PgBouncer the run's pools connect to (None without ``[pgbouncer]``)."""
    if scenario.pgbouncer is None:
        return None
    bouncer = topology.endpoint("pgbouncer")
    if bouncer is None:
        raise ScenarioError("pgbouncer", "the scenario has a [pgbouncer] and needs a PgBouncer, "
                            "got none (set LABS_PGBOUNCER or run `labs services up --pgbouncer`)")
    return bouncer


def plan_run(scenario: Scenario, topology: Topology, drain_limit: float | None = None) -> Plan:
    """Phase 1: everything a run needs before its first request (see the module doc)."""
    w = scenario.workload
    topology = _topology_for(scenario, topology)
    check_fleet(scenario)
    if drain_limit is None:
        drain_limit = max(DRAIN_MIN, DRAIN_FACTOR * w.duration)
    app = f"labs-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    details: dict[str, Any] = {
        "pool_kind": scenario.pool.kind,
        "workload_kind": w.kind,
        "application_name": app,
        "window_s": [w.warmup, w.warmup + w.duration],
        "drain_limit_s": drain_limit,
        "client_cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "wall_start": time.time(),
        "note": (
            "live runs use the server's real cores; database.cores, connect_time and "
            "network_rtt of the scenario are simlib inputs and are not imposed here"
        ),
    }
    admin = topology.primary.admin_dsn
    query = _query(scenario, admin, details)
    details["query"] = query.sql("pyformat")
    bouncer = _pgbouncer(scenario, topology)
    ctx = RunContext(dsn=topology.primary.dsn if bouncer is None else bouncer.dsn,
                     application_name=app, query=query,
                     session_settings=session_settings(scenario),
                     multiplexed=scenario.pgbouncer is not None
                     and scenario.pgbouncer.pool_mode != "session")
    if ctx.session_settings:
        details["session_settings"] = dict(ctx.session_settings)
    driver = _driver(scenario, topology, ctx)
    if scenario.keyed:
        details["keyed"] = {"keys": w.keys, "write_fraction": w.write_fraction}
    monitor = Monitor(admin, app, ctx.now)
    probes: list[Probe] = [monitor]
    if topology.replicas:
        probes += [ReplicaMonitors([e.dsn for e in topology.replicas], app, ctx.now),
                   ReplicationMonitor(admin, ctx.now)]
    if isinstance(driver, KeyedDriver) and driver.cache is not None:
        probes.append(CacheMonitor(driver.cache.url, driver.cache.prefix, ctx.now))
    if tiers(scenario):
        user = parse_dsn(topology.primary.dsn).get("user", "")
        probes.append(ServerMonitor(monitor, user, ctx.now))
    if bouncer is not None:
        database = parse_dsn(bouncer.dsn).get("dbname", "")
        probes.append(PgBouncerMonitor(bouncer.admin_dsn, database, ctx.now))
        assert scenario.pgbouncer is not None
        details["pgbouncer"] = {"port": parse_dsn(bouncer.dsn).get("port"),
                                "pool_mode": scenario.pgbouncer.pool_mode}
    return Plan(scenario, topology, ctx, driver, monitor, probes, drain_limit, details)


def drive_run(plan: Plan, progress: bool = False, observe: Observer | None = None
              ) -> DriveResult:
    """Phase 2: open the pool, run the load with the probes watching, close the pool.

    A fleet's instances each open their own, in processes of their own
    (:mod:`labs.fleet`).  ``observe(driver, records)``: called once the pool
    is open, before the first request (see :func:`labs.loadgen.drive`); not
    for a fleet, whose pools live in other processes.
    """
    ctx, admin, app = plan.ctx, plan.admin, plan.ctx.application_name
    fleet = plan.scenario.fleet
    if observe is not None and fleet is not None and fleet.instances > 1:
        raise ValueError("observe: a fleet's pools live in processes of their own, "
                         "got fleet.instances > 1; observe a run of one instance")
    if fleet is not None and fleet.instances > 1:
        run = drive_fleet(plan.scenario, ctx, admin, plan.probes, plan.drain_limit)
        plan.details["fleet"] = run.details
        return DriveResult(run.records, run.facts, run.cpu, run.run_end, run.sessions)
    before = session_counts(admin)

    def start_probes() -> None:
        for probe in plan.probes:
            probe.start()

    def on_stop() -> None:
        # Requests still running when the run stops: cancel their queries on
        # the server so threads blocked in them come back.
        for _ in range(3):
            if cancel_backends(admin, app) == 0:
                break
            time.sleep(0.2)

    cpu = CpuMeter()
    try:
        records, facts = drive(plan.driver, ctx, plan.scenario, drain_limit=plan.drain_limit,
                               progress=progress, on_start=start_probes, on_stop=on_stop,
                               observe=observe)
        run_end = ctx.now()
        cpu_used = cpu.read()
    finally:
        for probe in plan.probes:
            probe.stop()
    time.sleep(0.3)  # let exiting backends flush their statistics
    return DriveResult(records, facts, cpu_used, run_end, (before, session_counts(admin)))


def measure_run(plan: Plan, run: DriveResult) -> LiveResult:
    """Phase 3: the metrics, the server's view and the run's details, from records and probes."""
    start, end = plan.start, plan.end
    ctx = plan.ctx
    window = Window(start, end, end + plan.drain_limit, run.run_end)
    mean = plan.monitor.time_average(start, end)
    idle_tx = plan.monitor.idle_in_transaction_mean(start, end)
    for probe in plan.probes:
        if isinstance(probe, ReplicaMonitors):  # connections_mean counts every database's
            mean += probe.time_average(start, end)
            idle_tx += probe.idle_in_transaction_mean(start, end)
    bouncer = next((p for p in plan.probes if isinstance(p, PgBouncerMonitor)), None)
    if bouncer is not None:
        # The pools' connections are PgBouncer's clients: Postgres never sees them.
        mean = _client_mean(bouncer, start, end)
    values = metrics(run.records, plan.scenario, window, ctx.connects, mean, idle_tx)
    facts, server = request_facts(run.records, window, ctx.connects, ctx.connect_durations)
    if tiers(plan.scenario):
        values.update(_tier_values(plan, server, start, end))
    if isinstance(plan.driver, ServerlessDriver):
        values.update(serverless_values(plan.driver, run.records, start, end))
    details = dict(plan.details)
    details.update(dataclasses.asdict(run.facts))
    capacity = getattr(getattr(plan.driver, "cache", None), "capacity", None)
    if capacity is not None:
        # the Redis limit the keyed driver set for [cache] capacity (and then restored)
        details["cache_capacity"] = dataclasses.asdict(capacity)
    details.update(cpu=run.cpu, driver=plan.driver.details(), run_seconds=run.run_end)
    details.update(facts)
    details["session_states"] = plan.monitor.states(start, end)
    if plan.scenario.client.leak_fraction > 0:
        details["leaks"] = leak_facts(run.records, window)
        closers = [d.closer for d in _drivers(plan.driver)]
        details["leaks"]["held_at_once_max"] = max(
            (c.held_max for c in closers if c is not None), default=0)
    counts_before, counts_after = run.sessions
    before, after = counts_before["sessions"], counts_after["sessions"]
    report: dict[str, Any] = plan.monitor.summary(start, end)
    if before is not None and after is not None:
        # minus the two short-lived helper sessions of the run itself: the
        # monitor and the second sessions reading
        report["backends_started"] = max(0, after - before - 2)
    else:
        report["backends_started"] = None
    fatal_before, fatal_after = counts_before["sessions_fatal"], counts_after["sessions_fatal"]
    # sessions of the database ended by a FATAL error during the run (an
    # idle-in-transaction timeout is one): the server's own count, a cross-check
    report["sessions_fatal"] = (None if fatal_before is None or fatal_after is None
                                else fatal_after - fatal_before)
    report.update(server)
    if plan.scenario.keyed:
        report.update(keyed_faults(run.records, window))
    for probe in plan.probes[1:]:  # the replicas' and Redis's side
        report.update(probe.summary(start, end))
    return LiveResult(plan.scenario, values, report, details, run.records,
                      list(ctx.connect_durations))


def _client_mean(bouncer: PgBouncerMonitor, start: float, end: float) -> float:
    """Time-average client connections at PgBouncer (``cl_active + cl_waiting``)."""
    times = [r[0] for r in bouncer.samples]
    return step_average(times, [r[1] + r[2] for r in bouncer.samples], start, end)


def _tier_values(plan: Plan, server: dict[str, Any], start: float, end: float
                 ) -> dict[str, float]:
    """``server_connections_*``, refusals, PgBouncer's wait and transaction time: as
    Postgres and PgBouncer saw them."""
    duration = end - start
    values: dict[str, float] = {}
    for probe in plan.probes:
        if isinstance(probe, ServerMonitor):
            seen = probe.summary(start, end)
            values["server_connections_mean"] = _number(seen["server_connections_mean"])
            values["server_connections_max"] = _number(seen["server_connections_max"])
            opened = _number(seen["server_connections_opened"])
            if plan.scenario.pgbouncer is None and plan.scenario.serverless is None:
                # The pools' own connects are Postgres's: exact, not sampled.
                opened = float(len([t for t in plan.ctx.connects if start <= t < end]))
            values["server_connections_opened_per_s"] = opened / duration
        if isinstance(probe, PgBouncerMonitor):
            values["pgbouncer_wait_mean_ms"] = probe.wait_mean_ms(start, end)
            bouncer = plan.scenario.pgbouncer
            if bouncer is not None and bouncer.pool_mode != "session":
                # simlib counts transaction times where PgBouncer hands
                # servers out per transaction (or statement) only.
                values["pgbouncer_xact_mean_ms"] = probe.xact_mean_ms(start, end)
    refusals = server.get("refusals")
    if isinstance(refusals, int | float):
        values["server_refused_per_s"] = refusals / duration
    return values


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _drivers(driver: Driven) -> list[Any]:
    """The library drivers behind ``driver`` (the keyed path holds one per database)."""
    return list(getattr(driver, "drivers", [driver]))


def run_live(
    scenario: Scenario,
    topology: Topology,
    *,
    progress: bool = False,
    drain_limit: float | None = None,
    observe: Observer | None = None,
) -> LiveResult:
    """Run ``scenario`` once on the servers of ``topology`` and measure it.

    ``drain_limit``: seconds after the window that its requests may still
    finish (default: simlib's ``max(60, duration)``).  The probes, the CPU
    calibration and the cancel at the end connect through the primary's
    ``admin_dsn``: on labs' own servers a superuser that uses the reserved
    connection slots, so watching never takes one of the ``max_connections``
    the scenario's pool may use.  ``observe(driver, records)``: called once
    the pool is open, before the first request, with the run's driver and
    its growing list of records (e.g. ``PoolExporter.observer()``,
    :mod:`labs.monitoring`).
    """
    plan = plan_run(scenario, topology, drain_limit)
    return measure_run(plan, drive_run(plan, progress, observe))
