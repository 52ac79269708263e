"""The workload model: arrivals, clients, key choice, warm-up and drain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy
from scipy import stats

from simlib.database import DatabaseServer
from simlib.metrics import Recorder
from simlib.pools import make_pool
from simlib.request import Backend
from simlib.scenario import parse_scenario
from simlib.simulation import run_replication, simulate
from simlib.streams import Streams
from simlib.workload import Workload

PLAIN = {"connect_time": 0.0, "network_rtt": 0.0}


def scenario(**sections):
    base = {"seed": 3, "replications": 4, "database": dict(PLAIN)}
    base.update(sections)
    return parse_scenario(base)


def standalone_workload(s) -> Workload:
    """A Workload outside a run, to draw its keys and write flags directly."""
    env = simpy.Environment()
    rec = Recorder(env, 0, 1)
    server = DatabaseServer(env, s.database, lambda: 0.0, rec, cpu_bound=False)
    streams = Streams(s.seed, 0)
    pool = make_pool(env, server, rec, s.pool, streams.uniform("pool"))
    return Workload(env, s, Backend(pool, server), rec, streams)


def test_keys_follow_the_popularity_distribution():
    """Chi-square goodness of fit of 200,000 drawn keys against the Zipf law."""
    s = scenario(workload={"keys": 50, "popularity": {"dist": "zipf", "s": 0.9}})
    w = standalone_workload(s)
    keys = np.array([w.next_key()[0] for _ in range(200_000)])
    observed = np.bincount(keys, minlength=50)
    expected = s.workload.popularity.probabilities(50) * keys.size
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_write_fraction():
    s = scenario(workload={"write_fraction": 0.25})
    w = standalone_workload(s)
    writes = sum(w.next_key()[1] for _ in range(100_000))
    # binomial standard error is 0.0014; allow 5 of them
    assert abs(writes / 100_000 - 0.25) < 0.007


def test_open_arrivals_are_poisson_at_rate_and_warmup_is_excluded():
    s = scenario(workload={"rate": 500.0, "duration": 20.0, "warmup": 5.0})
    result = simulate(s, workers=1)
    offered = result.metrics["offered_rps"]
    # 4 x 10,000 expected arrivals; each replication's rate has sd sqrt(10000)/20 = 5,
    # so the expected half-width is t(0.975, 3) * 5 / 2 = 8.  The sample sd varies
    # too: a width under 40 (2.5x the expected) holds unless something is wrong.
    assert offered.ci95[0] <= 500.0 <= offered.ci95[1]
    assert offered.ci95[1] - offered.ci95[0] < 40


def test_light_load_latency_is_round_trip_plus_service_plus_reset():
    s = scenario(
        workload={"rate": 20.0, "duration": 50.0, "warmup": 1.0},
        query={"service_time": {"dist": "constant", "value": 0.005}},
        database={"connect_time": 0.004, "network_rtt": 0.001},
        pool={"kind": "sqlalchemy", "pool_size": 20},
    )
    r = run_replication(s, 0)
    # At 20 req/s and 7 ms per request a pool of 20 never runs short, every
    # connection is already open after the warm-up: latency = rtt + 5 ms + rtt.
    assert r["latency_p50_ms"] == pytest.approx(7.0)
    assert r["checkout_p95_ms"] == pytest.approx(0.0)
    assert r["query_mean_ms"] == pytest.approx(6.0)


def _six_clients_three_connections(pool):
    return scenario(
        workload={
            "kind": "closed",
            "clients": 6,
            "think_time": 0.0,
            "duration": 10.0,
            "warmup": 1.0,
        },
        query={"service_time": {"dist": "constant", "value": 0.01}},
        pool=pool,
    )


def test_closed_loop_without_think_time_fair_hand_off_shares_the_connections():
    """psycopg_pool assigns a returned connection to the first waiter: each waits one query."""
    s = _six_clients_three_connections(
        {"kind": "psycopg_pool", "min_size": 3, "max_size": 3, "timeout": math.inf}
    )
    r = run_replication(s, 0)
    assert r["in_flight_mean"] == pytest.approx(6.0)
    assert r["throughput_rps"] == pytest.approx(300.0, rel=0.01)  # 3 connections x 100/s
    assert r["latency_mean_ms"] == pytest.approx(20.0, rel=0.01)  # half the time waiting
    assert r["overtaken_ratio"] == 0.0


def test_closed_loop_without_think_time_queuepool_starves_the_waiters():
    """QueuePool's Condition: the returning thread runs on and takes its connection again.

    It still holds the GIL when it checks out again, before the waiter it
    woke can run, so three clients keep the three connections and three wait
    for ever: throughput is the same, but half the requests never finish.
    """
    s = _six_clients_three_connections(
        {"kind": "sqlalchemy", "pool_size": 3, "max_overflow": 0, "pool_timeout": math.inf}
    )
    r = run_replication(s, 0)
    assert r["throughput_rps"] == pytest.approx(300.0, rel=0.01)
    assert r["latency_mean_ms"] == pytest.approx(10.0, rel=0.01)  # the lucky ones never wait
    # The three starving requests are still in flight (they began in the
    # warm-up, so no request of the window ever waits).
    assert r["in_flight_mean"] == pytest.approx(6.0)
    assert r["p_wait"] == 0.0


def test_closed_loop_clients_that_fail_at_once_pause_instead_of_spinning():
    s = scenario(
        workload={
            "kind": "closed",
            "clients": 4,
            "think_time": 0.0,
            "duration": 2.0,
            "warmup": 0.5,
        },
        query={"service_time": {"dist": "constant", "value": 0.01}},
        pool={"kind": "psycopg2", "minconn": 2, "maxconn": 2},
    )
    r = run_replication(s, 0)  # must terminate
    assert r["throughput_rps"] == pytest.approx(200.0, rel=0.02)
    assert r["timeout_rate"] > 0.5


def test_overload_without_timeouts_reports_incomplete_requests():
    s = scenario(
        workload={"rate": 300.0, "duration": 5.0, "warmup": 0.0},
        query={"service_time": {"dist": "constant", "value": 0.01}},
        pool={"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": math.inf},
        # A request per process, FIFO: this is about counting the unfinished.
        # With 32 threads on one GIL and free Python, the thread that returns
        # the connection takes the next queued arrival and the connection with
        # it, and the 31 waiting in the pool starve while arrivals go on during
        # the drain (tests/test_workload.py::test_thread_pool_starves_pool_waiters).
        host={"gil": False},
    )
    r = run_replication(s, 0)
    # 1,500 arrivals, 100/s served: by the drain limit (60 s after the window) all done...
    assert r["incomplete_rate"] == pytest.approx(0.0)
    s2 = s.with_values({"workload.rate": 3000.0})
    r2 = run_replication(s2, 0)
    # ...but 15,000 arrivals need 150 s: about (15000 - 6500) / 15000 are unfinished.
    assert 0.5 < r2["incomplete_rate"] < 0.65


def test_cpu_bound_queries_slow_down_with_more_connections_than_cores():
    """Constant-time CPU-bound queries: a pool of 2 (= cores) beats a pool of 40."""
    base = dict(
        workload={"rate": 450.0, "duration": 20.0, "warmup": 2.0},
        query={"service_time": {"dist": "constant", "value": 0.004}, "cpu_bound": True},
        database={"connect_time": 0.0, "network_rtt": 0.0, "cores": 2},
    )
    small = simulate(
        scenario(pool={"pool_size": 2, "max_overflow": 0, "pool_timeout": math.inf}, **base),
        workers=2,
    )
    large = simulate(scenario(pool={"pool_size": 40, "max_overflow": 0}, **base), workers=2)
    assert small.metrics["latency_mean_ms"].ci95[1] < large.metrics["latency_mean_ms"].ci95[0]
    assert large.metrics["query_mean_ms"].value > 2 * small.metrics["query_mean_ms"].value


def test_thread_pool_starves_pool_waiters():
    """Overload on threads: the returning thread takes the next queued request and its connection.

    One connection, no timeout, 32 worker threads on one GIL, free Python:
    a thread that finishes a request finds the executor's queue full, takes
    the next arrival still holding the GIL, and checks out the connection it
    has just returned before the waiter it woke can run.  The 31 requests
    waiting in the pool never get it; everyone else is served in arrival order.
    """
    s = scenario(
        workload={"rate": 300.0, "duration": 5.0, "warmup": 0.0},
        query={"service_time": {"dist": "constant", "value": 0.01}},
        pool={"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": math.inf},
    )
    r = run_replication(s, 0)
    starved = 31  # default_threads(1) = 32 threads, one of them serving
    assert r["incomplete_rate"] * r["offered_rps"] * 5.0 == pytest.approx(starved, abs=0.5)
    # the rest: one connection serves 100 requests/s, arrivals wait for a thread
    assert r["connections_mean"] == pytest.approx(1.0, abs=0.01)
