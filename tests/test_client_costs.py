"""The client's own costs (scenario ``[client]``) and single-run prediction ranges.

``client.dispatch`` delays a request before it asks the pool; ``client.hold``
keeps its connection busy after the query.  Checked against the
Pollaczek–Khinchine formula: with one connection, exponential service ``S``
and a constant hold ``h``, the connection is an M/G/1 server with service
``S + h`` (mean ``E[S] + h``, standard deviation ``E[S]``), and a constant
dispatch ``d`` in front of it shifts every arrival by the same ``d``, so the
pool still sees a Poisson stream.  Hence

* ``p_wait = rho = lambda (E[S] + h)`` (M/G/1: an arrival waits iff busy);
* ``latency_mean = d + Wq(P-K) + E[S] + h``;
* ``checkout_mean = d + Wq``.

Tolerances as in test_model_vs_theory.py: 5% for means, 0.01 for
probabilities, and the 95% half-width must be under half the tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from simlib import theory
from simlib.metrics import prediction_interval
from simlib.scenario import Client, ScenarioError, parse_scenario
from simlib.simulation import simulate

LAM, S, H, D = 100.0, 0.004, 0.001, 0.0015


def _mg1_scenario(dispatch: float, hold: float) -> dict:
    return {
        "name": "client-costs",
        "seed": 5,
        "replications": 10,
        "workload": {"kind": "open", "rate": LAM, "duration": 400.0, "warmup": 5.0},
        "query": {"service_time": {"dist": "exponential", "mean": S}},
        "pool": {"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0,
                 "reset_on_return": False},
        "database": {"connect_time": {"dist": "constant", "value": 0.0}, "network_rtt": 0.0},
        "client": {"dispatch": {"dist": "constant", "value": dispatch},
                   "hold": {"dist": "constant", "value": hold}},
    }


def _close(est, exact: float, rel: float = 0.05) -> None:
    lo, hi = est.ci95
    assert abs(est.value - exact) <= rel * exact, (est.value, exact)
    assert (hi - lo) / 2 <= rel / 2 * exact, (est.ci95, exact)


@pytest.mark.slow
def test_dispatch_and_hold_against_pollaczek_khinchine():
    # The textbook's client: its costs delay only their own request.  With
    # the GIL (the default) one request's Python also delays the others.
    result = simulate(parse_scenario({**_mg1_scenario(D, H), "host": {"gil": False}}))
    m = result.metrics
    mean_hold = S + H
    cv = S / mean_hold  # sd of S + h is sd of S
    wq = theory.pk_mean_wait(LAM, mean_hold, cv)
    rho = LAM * mean_hold
    assert abs(m["p_wait"].value - rho) <= 0.01
    _close(m["latency_mean_ms"], (D + wq + mean_hold) * 1e3)
    _close(m["checkout_mean_ms"], (D + wq) * 1e3)
    # Little's law on the connection: busy = lambda x hold time.
    _close(m["connections_busy_mean"], LAM * mean_hold)


def test_free_client_is_the_default_and_changes_nothing():
    base = _mg1_scenario(0.0, 0.0)
    del base["client"]
    free = parse_scenario(base)
    assert free.client == Client()
    assert "client" not in free.to_dict()  # files without [client] stay as written
    explicit = parse_scenario(_mg1_scenario(0.0, 0.0))
    short = {"workload.duration": 5.0, "replications": 2}
    a = simulate(free.with_values(short)).replications
    b = simulate(explicit.with_values(short)).replications
    assert a == b  # a zero cost schedules nothing and draws nothing


def test_client_costs_are_validated_and_round_trip():
    s = parse_scenario(_mg1_scenario(D, H))
    assert parse_scenario(s.to_dict()) == s
    with pytest.raises(ScenarioError, match=r"client\.dispatch"):
        parse_scenario({"client": {"dispatch": -1}})
    with pytest.raises(ScenarioError, match=r"client\.speed.*allowed: dispatch, hold"):
        parse_scenario({"client": {"speed": 2}})


def test_prediction_interval_covers_one_more_run():
    """Over many trials, a fresh draw falls in the 95% single-run range ~95% of the time."""
    rng = np.random.default_rng(1)
    trials, hits = 4000, 0
    for _ in range(trials):
        x = rng.normal(10.0, 2.0, size=20)
        lo, hi = prediction_interval(x)
        hits += lo <= rng.normal(10.0, 2.0) <= hi
    share = hits / trials
    # binomial sd at 0.95 with 4000 trials is 0.0034: allow 3 sd
    assert abs(share - 0.95) <= 0.011, share
    assert prediction_interval([1.0]) is None
    lo, hi = prediction_interval([1.0, 1.0, math.nan, 1.0])
    assert lo == hi == 1.0


def _failure_storm(fail: float) -> dict:
    # psycopg2 with one connection, kept for ever by the first request (a
    # leak longer than the run): every later checkout fails at once.  Each
    # of the 20 clients then runs dispatch + fail of Python and pauses 1 ms.
    return {
        "name": "failure-storm", "seed": 11, "replications": 5,
        "workload": {"kind": "closed", "clients": 20, "think_time": 0.0,
                     "duration": 5.0, "warmup": 0.5},
        "query": {"service_time": {"dist": "constant", "value": 0.001}},
        "pool": {"kind": "psycopg2", "minconn": 1, "maxconn": 1},
        "database": {"connect_time": {"dist": "constant", "value": 0.0}, "network_rtt": 0.0},
        "client": {"dispatch": {"dist": "constant", "value": 0.00001}, "fail": fail,
                   "leak_fraction": 1.0, "leak_time": {"dist": "constant", "value": 100.0}},
    }


@pytest.mark.parametrize("fail, bound", [(0.0004, "gil"), (0.000005, "pause")])
def test_failed_requests_run_fail_on_the_gil(fail, bound):
    # Operational laws, independent of the model: a failed request holds the
    # one GIL for dispatch + fail seconds, so failures come at most
    # 1 / (dispatch + fail) per second (the GIL saturated: 2,439/s); when
    # that is far off, each client fails once per dispatch + fail + 1 ms
    # pause, 20 / 1.015 ms = 19,704/s.
    m = simulate(parse_scenario(_failure_storm(fail))).metrics
    failures = m["offered_rps"].value * m["timeout_rate"].value
    per_failure = 0.00001 + fail
    gil, pause = 1.0 / per_failure, 20 / (per_failure + 0.001)
    assert (gil < pause) == (bound == "gil")
    expected = min(gil, pause)
    assert failures == pytest.approx(expected, rel=0.02), (failures, expected)


def test_fail_cost_is_validated():
    with pytest.raises(ScenarioError, match="client.fail"):
        parse_scenario({**_failure_storm(0.0), "client": {"fail": -1}})
