"""A fleet live: N real processes, each with its own pool, on one shared schedule.

What simlib's ``[fleet]`` models (:mod:`simlib.fleet`), run for real: the
scenario's ``instances`` application processes each open their own pool of
the scenario's library (a driver of :mod:`labs.drivers`) and serve the
arrivals simlib's fleet sends them: one open-loop schedule, the arrival
times of replication 0, each arrival to the instance a uniform draw on the
"instances" stream picks (:func:`labs.loadgen.drive`'s ``instance``), so the
live split is the simulated one, arrival for arrival.

The processes are started fresh (``spawn``: nothing of the parent's, no
pool created before ``fork()`` reused in a child, the mistake lesson 09
shows), open their pools, and start the schedule together at one
``time.perf_counter()`` value (the system's monotonic clock, the same in
every process).  The parent runs the probes on the same clock and merges
the records and connect logs the processes send back, so the measure phase
(:func:`labs.executor.measure_run`) sees one run.  All instances connect with
the run's ``application_name``, so the server's view counts the fleet's
connections together, as Postgres does against ``max_connections``.

Only open workloads are run as fleets: a closed loop's clients would draw
their service times in one order across processes, which separate processes
cannot share.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from labs.drivers import driver_class
from labs.host import CpuMeter
from labs.loadgen import LoadFacts, drive
from labs.probes import Probe, cancel_backends, session_counts
from labs.records import Record, RunContext
from simlib.scenario import Scenario, ScenarioError, parse_scenario

#: Seconds the processes get to start and open their pools before time zero.
START_MARGIN = 3.0


@dataclass
class InstanceRun:
    """What one instance sends back: its records, connect logs and how its load went."""

    instance: int
    records: list[Record]
    connects: list[float]
    connect_durations: list[float]
    facts: LoadFacts


def check_fleet(scenario: Scenario) -> None:
    """ScenarioError (one line) when labs cannot run this fleet live."""
    if scenario.fleet is not None and scenario.workload.kind != "open":
        raise ScenarioError("fleet", "labs runs a fleet with an open workload only "
                            "(workload.kind = \"open\")", scenario.workload.kind)


def _instance(scenario_data: dict[str, Any], ctx_fields: dict[str, Any], admin: str,
              instance: int, instances: int, start_at: float, drain_limit: float
              ) -> InstanceRun:
    """One application process of the fleet (runs in a child process)."""
    scenario = parse_scenario(scenario_data)
    ctx = RunContext(**ctx_fields)
    driver = driver_class(scenario.pool.kind)(scenario, ctx)
    app = ctx.application_name

    def on_stop() -> None:
        for _ in range(3):
            if cancel_backends(admin, app) == 0:
                break
            time.sleep(0.2)

    records, facts = drive(driver, ctx, scenario, drain_limit=drain_limit, on_stop=on_stop,
                           start_at=start_at, instance=(instance, instances))
    return InstanceRun(instance, records, list(ctx.connects), list(ctx.connect_durations),
                       facts)


@dataclass
class FleetRun:
    """The drive phase's outcome, merged over the instances (the executor's DriveResult)."""

    records: list[Record]
    facts: LoadFacts
    cpu: dict[str, float | int | None]
    run_end: float
    sessions: tuple[dict[str, int | None], dict[str, int | None]]
    details: dict[str, Any]


def drive_fleet(scenario: Scenario, ctx: RunContext, admin: str, probes: Sequence[Probe],
                drain_limit: float) -> FleetRun:
    """The drive phase of a fleet: N processes, the ``probes`` here, on ``ctx``'s clock."""
    check_fleet(scenario)
    assert scenario.fleet is not None
    n = scenario.fleet.instances
    before = session_counts(admin)
    ctx_fields = {"dsn": ctx.dsn, "application_name": ctx.application_name,
                  "query": ctx.query, "session_settings": dict(ctx.session_settings),
                  "multiplexed": ctx.multiplexed}
    start_at = time.perf_counter() + START_MARGIN + 0.5 * n
    cpu = CpuMeter()
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=spawn) as pool:
            futures = [pool.submit(_instance, scenario.to_dict(), ctx_fields, admin, k, n,
                                   start_at, drain_limit) for k in range(n)]
            # The probes share the instances' time zero.
            time.sleep(max(0.0, start_at - time.perf_counter()))
            ctx.restart_clock(start_at)
            for probe in probes:
                probe.start()
            runs = [f.result() for f in futures]
        run_end = ctx.now()
        cpu_used = cpu.read()
    finally:
        for probe in probes:
            probe.stop()
    time.sleep(0.3)  # let exiting backends flush their statistics
    records = sorted((r for run in runs for r in run.records), key=lambda r: r.index)
    for run in runs:
        ctx.connects.extend(run.connects)
        ctx.connect_durations.extend(run.connect_durations)
    ctx.connects.sort()
    facts = LoadFacts(any(r.facts.drain_limit_hit for r in runs),
                      sum(r.facts.threads for r in runs))
    end = scenario.workload.warmup + scenario.workload.duration
    details = {"instances": n, "requests": [len(r.records) for r in runs],
               # every process issues its arrivals up to the window's end; after
               # it, each stops when its own window's requests are done
               "requests_until_window_end": [sum(1 for rec in r.records if rec.scheduled < end)
                                             for r in runs]}
    return FleetRun(records, facts, cpu_used, run_end, (before, session_counts(admin)), details)
