"""Fleets, PgBouncer and serverless against their closed forms (simlib.theory).

Set up as in tests/test_model_vs_theory.py, so that the model *is* the
textbook queue: connecting costs nothing, no round trips, no resets, no
client costs.  Then

=============================================  ===================================
model                                          closed form
=============================================  ===================================
PgBouncer transaction mode, pool c, 3 fleets   M/M/c on PgBouncer's pool (mmc):
of pools far larger than c                     its wait and the response time
fleet of N psycopg_pool(c)                     N x M/M/c at λ/N: Erlang C, Wq
fleet of N psycopg2(c/c)                       N x M/G/c/c at λ/N: Erlang B
fleet of N QueuePool(5+5) in overload          min(N x 10, max_connections) on Postgres
serverless, low concurrency                    cold when reclaimed or busy; alive share
serverless, rate steps from 0                  every invocation cold for D seconds
=============================================  ===================================

Tolerances as everywhere: 5% for means and rates, 0.01 absolute for
probabilities, with the 95% half-width at most half the tolerance (the
``agrees`` helper of test_model_vs_theory), so agreement cannot come from a
wide interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from scipy import stats

from simlib import theory
from simlib.scenario import Scenario, parse_scenario
from simlib.simulation import simulate
from tests.test_model_vs_theory import COMPARISONS, agrees, constant, exponential

MU, LAMBDA, C = 200.0, 480.0, 4  # 5 ms queries, a = 2.4, ρ = 0.6 per pool of 4


@pytest.fixture(scope="module", autouse=True)
def _print_agreement_table() -> Iterator[None]:
    """After the module: its rows of the agreement table (shown with ``-s``)."""
    first = len(COMPARISONS)
    yield
    if len(COMPARISONS) > first:
        print("\n| case | metric | theory | simulated | 95% CI | error |")
        print("|---|---|---|---|---|---|")
        for comparison in COMPARISONS[first:]:
            print(comparison.row())


def textbook(name: str, *, seed: int, replications: int, **tables: Mapping[str, object]
             ) -> Scenario:
    """A scenario whose overheads are all zero, with the given tables on top."""
    data: dict[str, object] = {
        "name": name, "seed": seed, "replications": replications,
        "database": {"connect_time": constant(0.0), "network_rtt": 0.0, "cores": 0,
                     "max_connections": 1000},
    }
    for key, table in tables.items():
        data[key] = {**data.get(key, {}), **dict(table)}  # type: ignore[dict-item]
    return parse_scenario(data)


def fifo_pool(c: int) -> dict[str, object]:
    """psycopg_pool with exactly ``c`` connections, opened up front, FIFO, no expiry."""
    return {"kind": "psycopg_pool", "min_size": c, "max_size": c, "timeout": math.inf,
            "max_lifetime": math.inf, "max_idle": math.inf, "reset_on_return": False}


@pytest.mark.slow
def test_pgbouncer_transaction_mode_is_mmc_on_its_pool() -> None:
    """Three instances' pools of 20 (60 clients) share PgBouncer's 4 servers: M/M/4.

    The clients' pools never run out (P(more than 60 in M/M/4 at ρ = 0.6) is
    negligible), so every transaction waits for a server in PgBouncer's FIFO
    list, and its wait there is Erlang C's.
    """
    run = simulate(textbook(
        "pgbouncer-mmc", seed=41, replications=16,
        workload={"kind": "open", "rate": LAMBDA, "duration": 350.0, "warmup": 2.0},
        query={"service_time": exponential(1 / MU)},
        pool=fifo_pool(20), fleet={"instances": 3},
        pgbouncer={"pool_mode": "transaction", "default_pool_size": C, "min_pool_size": C,
                   "max_client_conn": 1000, "query_wait_timeout": 0, "server_idle_timeout": 0,
                   "server_lifetime": 1e9, "network_rtt": 0.0, "connect_time": 0.0},
    ))
    mmc = theory.mmc(LAMBDA, MU, C)
    case = "PgBouncer transaction, pool 4, 3 x pools of 20"
    agrees(run, "pgbouncer_wait_mean_ms", mmc.mean_wait * 1000, case)
    agrees(run, "latency_mean_ms", mmc.mean_response * 1000, case)
    agrees(run, "throughput_rps", LAMBDA, case)
    agrees(run, "p_wait", 0.0, case, probability=True)  # nobody waits in the app's pools
    assert run.metrics["server_connections_max"].value == C
    assert run.metrics["connections_mean"].value == pytest.approx(60)


@pytest.mark.slow
def test_fleet_is_independent_erlang_c_queues() -> None:
    """Three instances of psycopg_pool(4), requests at random: three M/M/4 at λ/3 each."""
    n = 3
    run = simulate(textbook(
        "fleet-erlang-c", seed=42, replications=16,
        workload={"kind": "open", "rate": n * LAMBDA, "duration": 120.0, "warmup": 2.0},
        query={"service_time": exponential(1 / MU)},
        pool=fifo_pool(C), fleet={"instances": n},
    ))
    mmc = theory.mmc(LAMBDA, MU, C)
    case = "fleet 3 x psycopg_pool(4), λ/3 each"
    agrees(run, "p_wait", mmc.p_wait, case, probability=True)
    agrees(run, "checkout_mean_ms", mmc.mean_wait * 1000, case)
    agrees(run, "throughput_rps", n * LAMBDA, case)
    assert run.metrics["server_connections_max"].value == n * C


def test_fleet_without_a_queue_is_erlang_b_per_instance() -> None:
    """Three instances of psycopg2 8/8 at a = 6 each: the share refused is B(8, 6)."""
    n, c, lam, mean = 3, 8, 600.0, 0.01
    run = simulate(textbook(
        "fleet-erlang-b", seed=43, replications=10,
        workload={"kind": "open", "rate": n * lam, "duration": 20.0, "warmup": 1.0},
        query={"service_time": exponential(mean)},
        pool={"kind": "psycopg2", "minconn": c, "maxconn": c, "reset_on_return": False},
        fleet={"instances": n},
    ))
    blocked = theory.erlang_b(c, lam * mean)
    case = "fleet 3 x psycopg2 8/8, a = 6 each"
    agrees(run, "timeout_rate", blocked, case, probability=True)
    agrees(run, "throughput_rps", n * lam * (1 - blocked), case)


@pytest.mark.parametrize("max_connections", [1000, 25])
def test_fleet_connection_bound(max_connections: int) -> None:
    """Overload fills every pool: Postgres holds exactly min(N x limit, max_connections)."""
    n = 3
    run = simulate(textbook(
        "fleet-bound", seed=44, replications=3,
        workload={"kind": "open", "rate": 5000.0, "duration": 3.0, "warmup": 1.0},
        query={"service_time": constant(0.02)},
        pool={"kind": "sqlalchemy", "pool_size": 5, "max_overflow": 5, "pool_timeout": 0.05},
        fleet={"instances": n},
        database={"max_connections": max_connections},
    ))
    bound = theory.fleet_server_connections_max(n, 10, max_connections)
    assert run.metrics["server_connections_max"].value == bound
    refused = run.metrics["server_refused_per_s"].value
    if max_connections < n * 10:
        # Past the bound Postgres says "too many clients": the requests that got it fail.
        assert refused > 0 and run.metrics["error_rate"].value > 0
    else:
        assert refused == 0 and run.metrics["error_rate"].value == 0


@pytest.mark.parametrize("connection", ["global", "per_invocation"])
def test_serverless_cold_starts_at_low_concurrency(connection: str) -> None:
    """λ = 2/s, 1 ms invocations, keep_warm 0.5 s: cold when reclaimed or busy."""
    lam, keep, d = 2.0, 0.5, 0.001
    run = simulate(textbook(
        f"serverless-low-{connection}", seed=45, replications=10,
        workload={"kind": "open", "rate": lam, "duration": 6000.0, "warmup": 5.0},
        query={"service_time": constant(d / 2)},
        serverless={"cold_start": constant(d / 2), "keep_warm": keep,
                    "connection": connection},
        pool={"kind": "none"},
    ))
    case = f"serverless {connection}, λ·d = 0.002"
    # A warm invocation lasts d/2, a cold one d: the formula's d is the longer.
    agrees(run, "cold_start_rate", theory.serverless_cold_start_probability(lam, keep, d),
           case, probability=True)
    agrees(run, "environments_mean", theory.serverless_environments_mean(lam, keep, d / 2),
           case)
    agrees(run, "throttle_rate", 0.0, case, probability=True)


def test_serverless_step_every_invocation_is_cold_until_the_first_ends() -> None:
    """The rate steps from 0 to 400/s at t = 5: for D = 0.25 s everything starts cold."""
    lam, cold, query, step = 400.0, 0.2, 0.05, 5.0
    d = cold + query
    run = simulate(textbook(
        "serverless-step", seed=46, replications=100,
        workload={"kind": "open", "rate_schedule": [[0.0, 0.0], [step, lam]],
                  "duration": d, "warmup": step},
        query={"service_time": constant(query)},
        serverless={"cold_start": constant(cold)}, pool={"kind": "none"},
    ))
    case = "serverless step 0 -> 400/s, D = 0.25 s"
    agrees(run, "cold_start_rate", 1.0, case, probability=True)
    cold_per_s = [r["cold_start_rate"] * r["offered_rps"] for r in run.replications]
    expected = theory.serverless_step_cold_starts(lam, d) / d
    assert float(np.mean(cold_per_s)) == pytest.approx(expected, rel=0.05)
    # Environments pile up linearly, one per arrival: on average λD/2 over the window.
    agrees(run, "environments_mean", theory.serverless_step_cold_starts(lam, d) / 2, case)


def test_serverless_throttles_past_the_concurrency_limit() -> None:
    """The same step with concurrency_limit 50: arrivals past the 50th are refused.

    In the first D seconds N ~ Poisson(λD = 100) arrive and none finishes, so
    max(N - 50, 0) are throttled: the share is E[(N-50)+] / E[N].
    """
    lam, cold, query, step, limit = 400.0, 0.2, 0.05, 5.0, 50
    d = cold + query
    run = simulate(textbook(
        "serverless-throttle", seed=47, replications=400,
        workload={"kind": "open", "rate_schedule": [[0.0, 0.0], [step, lam]],
                  "duration": d, "warmup": step},
        query={"service_time": constant(query)},
        serverless={"cold_start": constant(cold), "concurrency_limit": limit},
        pool={"kind": "none"},
    ))
    mean = lam * d
    k = np.arange(0, 400)
    excess = float(np.sum(np.maximum(k - limit, 0) * stats.poisson.pmf(k, mean)))
    agrees(run, "throttle_rate", excess / mean, "serverless step, limit 50", probability=True)
    assert run.metrics["environments_mean"].value <= limit
