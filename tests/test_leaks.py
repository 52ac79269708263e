"""Leaked sessions and ``idle in transaction`` in simlib, against Little's law and live runs.

A leaking request keeps its connection ``leak_time`` after answering.  The
leaked connections form an M/G/inf system: by Little's law, on average
``rate x leak_fraction x leak_time`` of them exist at any moment, and that
many sessions sit ``idle in transaction``.  With
``idle_in_transaction_session_timeout`` shorter than the leak, Postgres ends
each one after the timeout: ``rate x leak_fraction x timeout`` of them idle
at a time, and ``rate x leak_fraction`` ended per second.

What the pools do with the ended session follows their source, and the live
runs of tests/test_leaks_live.py: QueuePool keeps counting the leaked
connection as checked out until the leak ends (the same timeout rate with and
without the server's timeout, 0.636 in both live), asyncpg gets its holder
back the moment the socket closes (0.000 live).
"""

from __future__ import annotations

import pytest

from simlib.scenario import parse_scenario
from simlib.simulation import simulate

RATE, SHARE, LEAK = 20.0, 0.2, 1.0


def leaky(pool: dict, timeout: float = 0.0, **workload: float):
    return parse_scenario({
        "name": "leaky", "seed": 3, "replications": 6,
        "workload": {"kind": "open", "rate": RATE, "duration": 30.0, "warmup": 3.0, **workload},
        "query": {"service_time": {"dist": "exponential", "mean": 0.005}},
        "pool": pool,
        "database": {"idle_in_transaction_session_timeout": timeout},
        "client": {"leak_fraction": SHARE, "leak_time": {"dist": "constant", "value": LEAK},
                   "leak_in_transaction": True},
    })


BIG = {"kind": "sqlalchemy", "pool_size": 50, "max_overflow": 0, "pool_timeout": 1.0}


def within_ci(estimate, expected: float, slack: float = 0.0) -> bool:
    low, high = estimate.ci95
    return low - slack <= expected <= high + slack


def test_leaked_sessions_idle_in_transaction_follow_littles_law():
    m = simulate(leaky(BIG)).metrics
    assert within_ci(m["idle_in_transaction_mean"], RATE * SHARE * LEAK, slack=0.05)
    assert within_ci(m["leaked_rate"], SHARE, slack=0.005)
    assert m["sessions_terminated_per_s"].value == 0


def test_the_servers_timeout_ends_them_after_the_timeout():
    m = simulate(leaky(BIG, timeout=0.25)).metrics
    assert within_ci(m["idle_in_transaction_mean"], RATE * SHARE * 0.25, slack=0.02)
    assert within_ci(m["sessions_terminated_per_s"], RATE * SHARE, slack=0.05)
    # Postgres's slots come back: fewer open connections than without the timeout.
    without = simulate(leaky(BIG)).metrics
    assert m["connections_mean"].value < without["connections_mean"].value - 2


SMALL = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 0.2}


def test_queuepool_keeps_the_slot_of_a_session_the_server_ended():
    """The live runs' finding: the server's timeout does not give QueuePool its slots back."""
    pool = {"kind": "sqlalchemy", **SMALL}
    plain = simulate(leaky(pool)).metrics["timeout_rate"]
    ended = simulate(leaky(pool, timeout=0.1)).metrics["timeout_rate"]
    assert plain.value > 0.3
    assert abs(plain.value - ended.value) < 0.1


def test_asyncpg_gets_its_holder_back_when_the_session_is_lost():
    pool = {"kind": "asyncpg", "min_size": 2, "max_size": 2, "timeout": 0.2}
    plain = simulate(leaky(pool)).metrics["timeout_rate"]
    ended = simulate(leaky(pool, timeout=0.1)).metrics["timeout_rate"]
    assert plain.value > 0.3
    assert ended.value < 0.05


@pytest.mark.parametrize("kind", ["psycopg_pool", "psycopg2", "sqlalchemy_async"])
def test_other_pools_also_hold_the_slot_until_the_leak_ends(kind):
    pool = {"psycopg_pool": {"kind": kind, "min_size": 2, "max_size": 2, "timeout": 0.2},
            "psycopg2": {"kind": kind, "minconn": 2, "maxconn": 2},
            "sqlalchemy_async": {"kind": kind, **SMALL}}[kind]
    plain = simulate(leaky(pool)).metrics["timeout_rate"]
    ended = simulate(leaky(pool, timeout=0.1)).metrics["timeout_rate"]
    assert plain.value > 0.3
    assert abs(plain.value - ended.value) < 0.1
