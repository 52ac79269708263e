"""Serverless live: environments on demand, throttling, and connections left on the server.

Facts of the rules, not of timing, so they hold on a loaded machine:

* no more than ``concurrency_limit`` environments are ever alive, and every
  invocation past it fails at once as throttled (an error);
* every cold invocation made an environment, and with a global connection
  each environment opened its own connection (the storm);
* a reclaimed environment's connection stays open on Postgres: the server
  ends up holding more connections than there are environments alive.
"""

from __future__ import annotations

import pytest

from labs.executor import run_live
from labs.records import ERROR
from labs.services import configure, missing_binaries, throwaway
from simlib.scenario import parse_scenario

MISSING = missing_binaries()
pytestmark = [pytest.mark.live, pytest.mark.skipif(bool(MISSING), reason=MISSING or "")]


def burst(**serverless: object) -> dict[str, object]:
    return {
        "name": "serverless-live", "seed": 8,
        "workload": {"kind": "open", "rate_schedule": [[0.0, 2.0], [1.5, 150.0], [2.5, 2.0]],
                     "duration": 3.0, "warmup": 1.0},
        "query": {"service_time": {"dist": "constant", "value": 0.05}},
        "pool": {"kind": "none"},
        "serverless": {"cold_start": {"dist": "constant", "value": 0.1}, **serverless},
        "database": {"max_connections": 60},
    }


def test_the_concurrency_limit_throttles_and_caps_the_environments() -> None:
    scenario = parse_scenario(burst(concurrency_limit=4, keep_warm=30.0))
    with throwaway(max_connections=60) as svc:
        configure(scenario, svc)
        result = run_live(scenario, svc.topology)
    throttled = [r for r in result.records if r.source == "throttled"]
    assert throttled and all(r.outcome == ERROR for r in throttled)
    assert result.details["driver"]["environments_max"] == 4
    cold = sum(r.source == "cold" for r in result.records)
    assert cold == 4  # four environments, made once each, kept warm
    assert result.metrics["throttle_rate"] > 0
    assert result.metrics["server_connections_max"] <= 4


def test_reclaimed_environments_leave_their_connections_open() -> None:
    scenario = parse_scenario(burst(concurrency_limit=50, keep_warm=0.5, connection="global"))
    with throwaway(max_connections=60) as svc:
        configure(scenario, svc)
        result = run_live(scenario, svc.topology)
    driver = result.details["driver"]
    cold = sum(r.source == "cold" for r in result.records)
    assert cold >= 5 and driver["environments_max"] <= 50
    assert driver["orphaned"] > 0
    m = result.metrics
    # After the burst the environments go, their sessions stay on Postgres.
    assert m["server_connections_mean"] > m["environments_mean"]
    assert m["error_rate"] == 0
