"""Fleets and PgBouncer live: N processes with their own pools, and PgBouncer's multiplexing.

Facts that hold on any machine, however loaded (no latency tolerances here):

* the fleet's instances together issue every arrival of the schedule, each
  the ones simlib's fleet sends it (one uniform draw per arrival);
* Postgres never holds more than ``min(instances x pool limit,
  max_connections)`` of the run's connections, and refuses the rest;
* behind PgBouncer in transaction mode, Postgres sees at most
  ``default_pool_size`` connections while the pools hold more client
  connections, and transactions wait in PgBouncer.
"""

from __future__ import annotations

from collections import Counter

import pytest

from labs.executor import run_live
from labs.services import configure, missing_binaries, throwaway
from simlib.scenario import parse_scenario
from simlib.streams import Streams

MISSING = missing_binaries(pgbouncer=True)
pytestmark = [pytest.mark.live, pytest.mark.skipif(bool(MISSING), reason=MISSING or "")]


def fleet(**extra: object) -> dict[str, object]:
    return {
        "name": "fleet-live", "seed": 7,
        "workload": {"kind": "open", "rate": 300.0, "duration": 3.0, "warmup": 1.0},
        "query": {"service_time": {"dist": "exponential", "mean": 0.01}},
        "pool": {"kind": "sqlalchemy", "pool_size": 3, "max_overflow": 3},
        "fleet": {"instances": 3},
        "database": {"max_connections": 12},
        **extra,
    }


def test_fleet_splits_the_schedule_as_simlib_does_and_stays_under_the_bound() -> None:
    scenario = parse_scenario(fleet())
    with throwaway(max_connections=12) as svc:
        configure(scenario, svc)
        result = run_live(scenario, svc.topology)
    end = scenario.workload.warmup + scenario.workload.duration
    issued = sorted(r.index for r in result.records if r.scheduled < end)
    assert issued == list(range(len(issued)))  # every arrival, once, by one instance
    pick = Streams(scenario.seed, 0).uniform("instances")
    expected = Counter(min(int(pick() * 3), 2) for _ in issued)
    assert result.details["fleet"]["requests_until_window_end"] == [expected[k] for k in range(3)]
    m = result.metrics
    assert m["server_connections_max"] <= 12
    assert m["offered_rps"] > 0 and m["throughput_rps"] > 0


def test_pgbouncer_transaction_mode_multiplexes_the_fleet() -> None:
    scenario = parse_scenario(fleet(
        pgbouncer={"pool_mode": "transaction", "default_pool_size": 3, "max_client_conn": 50},
        database={"max_connections": 20},
    ))
    with throwaway(max_connections=20, pgbouncer=scenario.pgbouncer) as svc:
        configure(scenario, svc)
        result = run_live(scenario, svc.topology)
    m, server = result.metrics, result.server
    assert m["error_rate"] == 0
    assert m["server_connections_max"] <= 3  # Postgres sees PgBouncer's servers only
    assert server["pgbouncer_servers_max"] <= 3
    assert m["connections_mean"] > m["server_connections_mean"]  # the pools hold more
    assert server["pgbouncer_cl_waiting_max"] > 0 and m["pgbouncer_wait_mean_ms"] > 0
