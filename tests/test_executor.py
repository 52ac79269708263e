"""The live executor (labs/executor.py) against a real Postgres.

Every run here is short (2-3 s measured, 0.5 s warm-up, at most 200 requests/s)
and keeps well under 60 connections.  The live tests need a Postgres that
accepts ``postgres@127.0.0.1:5432`` without a password (or the DSN in
``LABS_TEST_DSN``); without one they are skipped, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest

from labs.drivers import classify
from labs.drivers.base import TOO_MANY_CONNECTIONS
from labs.executor import LIVE_METRICS, run_live
from labs.loadgen import arrival_times, thread_count
from labs.probes import Monitor
from labs.query import QuerySpec
from labs.records import ERROR, TIMEOUT
from labs.topology import Topology
from simlib.metrics import METRICS
from simlib.scenario import parse_scenario
from simlib.simulation import run_replication

DSN = os.environ.get("LABS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_problem() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1.0):
            pass
    except OSError as exc:
        return f"no Postgres answering on 127.0.0.1:5432 ({exc})"
    try:
        import psycopg2

        psycopg2.connect(DSN, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        return f"cannot log in to {DSN}: {exc}".splitlines()[0]
    return None


_PROBLEM = _postgres_problem()
live = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")

POOLS = {
    "sqlalchemy": {"kind": "sqlalchemy", "pool_size": 5, "max_overflow": 10},
    "psycopg2": {"kind": "psycopg2", "minconn": 2, "maxconn": 10},
    "psycopg_pool": {"kind": "psycopg_pool", "min_size": 4, "max_size": 10},
    "asyncpg": {"kind": "asyncpg", "min_size": 5, "max_size": 10},
    "none": {"kind": "none"},
}


def scenario(
    pool: dict,
    *,
    rate=100.0,
    service=0.005,
    duration=2.0,
    warmup=0.5,
    kind="open",
    clients=4,
    think_time=0.0,
    cpu_bound=False,
    seed=1,
):
    return parse_scenario(
        {
            "name": f"test-{pool['kind']}",
            "seed": seed,
            "replications": 1,
            "workload": {
                "kind": kind,
                "rate": rate,
                "clients": clients,
                "think_time": think_time,
                "duration": duration,
                "warmup": warmup,
            },
            "query": {
                "service_time": {"dist": "constant", "value": service},
                "cpu_bound": cpu_bound,
            },
            "pool": pool,
        }
    )


def run(s, drain_limit=15.0):
    return run_live(s, Topology.single(DSN), drain_limit=drain_limit)


# ---------------------------------------------------------------------------
# Without a server
# ---------------------------------------------------------------------------


def test_arrivals_are_simlibs_schedule():
    """Same seed, same stream: the live schedule has simlib's arrival count."""
    s = scenario(POOLS["sqlalchemy"], rate=100.0, duration=2.0, warmup=0.5)
    times = []
    for t in arrival_times(s.seed, 100.0):
        if t >= 2.5:
            break
        times.append(t)
    window = sum(1 for t in times if 0.5 <= t < 2.5)
    assert window / 2.0 == pytest.approx(run_replication(s, 0)["offered_rps"])
    assert np.all(np.diff(times) > 0)


def test_thread_count_rule():
    assert thread_count(15, "open", 0) == 60
    assert thread_count(2, "open", 0) == 32
    assert thread_count(1000, "open", 0) == 256
    assert thread_count(5, "closed", 7) == 7


def test_refusal_and_timeout_classification():
    import psycopg2.pool
    import sqlalchemy.exc

    outcome, state = classify(Exception("FATAL:  sorry, too many clients already"))
    assert (outcome, state) == (ERROR, TOO_MANY_CONNECTIONS)
    msg = "QueuePool limit of size 1 overflow 0 reached, connection timed out, timeout 0.05"
    assert classify(sqlalchemy.exc.TimeoutError(msg))[0] == TIMEOUT
    assert classify(psycopg2.pool.PoolError("connection pool exhausted"))[0] == TIMEOUT
    assert classify(TimeoutError())[0] == TIMEOUT  # asyncio.TimeoutError on acquire


def test_query_spec():
    assert QuerySpec().sql("pyformat") == "SELECT pg_sleep(%s)"
    cpu = QuerySpec(cpu_bound=True, seconds_per_row=1e-8)
    assert cpu.argument(0.01) == 1_000_000
    assert "generate_series(1, $1::int)" in cpu.sql("dollar")


def test_monitor_time_average_is_a_step_average():
    m = Monitor.__new__(Monitor)
    m.samples = [(0.0, 2, 0), (1.0, 4, 0), (3.0, 0, 0)]
    # [0,1): 2, [1,3): 4, [3,4): 0  -> (2 + 8 + 0) / 4
    assert m.time_average(0.0, 4.0) == pytest.approx(2.5)
    assert m.time_average(1.5, 2.5) == pytest.approx(4.0)
    assert m.peak() == 4


# ---------------------------------------------------------------------------
# Live
# ---------------------------------------------------------------------------


@live
@pytest.mark.live
@pytest.mark.parametrize("kind", list(POOLS))
def test_every_pool_kind_runs_and_reports_every_metric(kind):
    s = scenario(POOLS[kind], rate=100.0, service=0.005)
    result = run(s)
    m = result.metrics
    assert set(METRICS) | set(LIVE_METRICS) <= set(m)
    # Same schedule as simlib's replication 0.
    assert m["offered_rps"] == pytest.approx(run_replication(s, 0)["offered_rps"])
    assert m["throughput_rps"] == pytest.approx(m["offered_rps"], rel=0.02)
    assert m["timeout_rate"] == 0 and m["error_rate"] == 0 and m["incomplete_rate"] == 0
    assert 5.0 <= m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"] < 200
    assert 5.0 <= m["query_mean_ms"] < 20
    assert 0 <= m["checkout_mean_ms"] < m["latency_mean_ms"]
    assert 0 <= m["p_wait"] <= 1
    assert 0.3 < m["connections_busy_mean"] < 3  # ~100/s x ~6 ms
    assert m["connections_busy_mean"] <= m["in_flight_mean"] + 1e-9
    assert 0 < m["connections_mean"] <= 12
    assert m["achieved_rate_rps"] == pytest.approx(m["offered_rps"], rel=0.05)
    assert m["scheduler_lag_p99_ms"] < 50
    if kind in ("sqlalchemy", "psycopg_pool", "asyncpg"):
        # persistent pools: almost no connects in the window
        assert m["connections_opened_per_s"] < 5
    srv = result.server
    assert srv["refusals"] == 0
    assert 1 <= srv["connections_peak"] <= 12
    assert srv["monitor_samples"] > 20
    doc = result.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["executor"] == "labs" and doc["scenario"] == s.name
    assert all(v["ci95"] is None for v in doc["metrics"].values())
    assert set(doc["server"]) >= {"connections_peak", "backends_started", "refusals"}


@live
@pytest.mark.live
@pytest.mark.parametrize(
    "pool",
    [
        {"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": math.inf},
        {"kind": "asyncpg", "min_size": 1, "max_size": 1},
    ],
    ids=["sqlalchemy", "asyncpg"],
)
def test_open_loop_latency_is_measured_from_the_schedule(pool):
    """One connection, 20 ms queries, ~90 requests/s (about twice its capacity):
    the backlog grows linearly, and so do latencies measured from the scheduled
    arrivals -- the load generator does not slow down to the system's pace."""
    s = scenario(pool, rate=90.0, service=0.02, duration=2.0)
    # The backlog at the window's end is ~110 requests x 21+ ms: ~2.5 s to drain on
    # a quiet machine, several times that when the two cores are busy with other
    # work.  The drain ends as soon as the window's requests are done, so a
    # generous limit costs nothing when the machine is quiet.
    result = run(s, drain_limit=20.0)
    m = result.metrics
    assert m["latency_p99_ms"] > 10 * 20  # far beyond the service time
    assert m["checkout_p95_ms"] > 5 * 20
    # (got and released are stamped just after the library returns, so
    # consecutive holders overlap by microseconds)
    assert m["connections_busy_mean"] <= 1.05
    assert m["in_flight_mean"] > 5
    # One connection serves at most ~1 / 21 ms = 48 queries per second of the window
    # (throughput_rps also counts window requests that finish during the drain).
    served = sum(
        1 for r in result.records if r.query_done is not None and 0.5 <= r.query_done < 2.5
    )
    assert served / 2.0 < 55
    ok = [
        r
        for r in result.records
        if 0.5 <= r.scheduled < 2.5 and r.outcome == 0 and r.finished <= 22.5
    ]
    t = np.array([r.scheduled for r in ok])
    latency = np.array([r.finished - r.scheduled for r in ok])
    # Latency grows with the arrival time at about 1 - capacity / rate.
    assert np.polyfit(t, latency, 1)[0] > 0.3
    if pool["kind"] == "asyncpg":
        # asyncpg's waiters are served first come first served, all on one loop.
        assert m["p_wait"] > 0.9
        assert m["incomplete_rate"] == 0
        assert m["scheduler_lag_p99_ms"] < 50


@live
@pytest.mark.live
def test_scheduler_lag_is_small_at_low_rate():
    s = scenario(POOLS["sqlalchemy"], rate=50.0, service=0.005)
    m = run(s).metrics
    # On a quiet machine the p99 is 1-4 ms.  When other work keeps both cores
    # busy, a woken thread can wait a few scheduler time slices (CFS: up to
    # ~10 ms each) before it runs; 50 ms still tells a client that keeps up
    # from one that is saturated (lags of seconds).
    assert m["scheduler_lag_p99_ms"] < 50
    assert m["achieved_rate_rps"] == pytest.approx(m["offered_rps"], rel=0.05)


@live
@pytest.mark.live
def test_psycopg2_exhaustion_is_a_timeout():
    # 150/s x 20 ms = 3 erlangs offered to 2 connections: many refused at once.
    s = scenario({"kind": "psycopg2", "minconn": 1, "maxconn": 2}, rate=150.0, service=0.02)
    result = run(s)
    m = result.metrics
    assert m["timeout_rate"] > 0.2
    assert m["error_rate"] == 0
    assert m["p_wait"] == 0  # psycopg2 never waits
    assert any("exhausted" in e["error"] for e in result.details["errors_top"])
    assert result.server["connections_peak"] <= 2


@live
@pytest.mark.live
def test_sqlalchemy_pool_timeout_counts_as_timeout():
    pool = {"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.05}
    result = run(scenario(pool, rate=150.0, service=0.02))
    m = result.metrics
    assert m["timeout_rate"] > 0.2
    assert m["error_rate"] == 0
    errors = " ".join(e["error"] for e in result.details["errors_top"])
    assert "QueuePool limit of size 1 overflow 0 reached" in errors


@live
@pytest.mark.live
@pytest.mark.parametrize(
    "pool",
    [
        {"kind": "psycopg_pool", "min_size": 1, "max_size": 1, "timeout": 0.05},
        {"kind": "asyncpg", "min_size": 1, "max_size": 1, "timeout": 0.05},
    ],
    ids=["psycopg_pool", "asyncpg"],
)
def test_acquire_timeouts_count_as_timeouts(pool):
    m = run(scenario(pool, rate=150.0, service=0.02)).metrics
    assert m["timeout_rate"] > 0.2
    assert m["error_rate"] == 0


@live
@pytest.mark.live
def test_cpu_bound_calibration_hits_its_target():
    s = scenario(POOLS["sqlalchemy"], rate=20.0, service=0.01, cpu_bound=True)
    result = run(s)
    cal = result.details["cpu_calibration"]
    assert cal["check_server_ms"] == pytest.approx(cal["target_ms"], rel=0.3)
    # At 20/s x 10 ms the server's cores are mostly idle, so a query takes about
    # its target -- unless other work shares the machine's cores (the load
    # generator itself, other test runs), hence the loose upper bound.
    assert 7.0 < result.metrics["query_mean_ms"] < 40.0
    assert "generate_series" in result.details["query"]


@live
@pytest.mark.live
def test_no_pool_opens_one_connection_per_request():
    result = run(scenario(POOLS["none"], rate=100.0, service=0.005))
    m = result.metrics
    assert m["connections_opened_per_s"] == pytest.approx(m["offered_rps"], rel=0.1)
    # every connect is paid inside the checkout: a connect here takes 1.9-2.6 ms
    # (a pooled checkout, some 0.03 ms), so 1 ms tells the two apart for sure
    assert m["checkout_mean_ms"] > 1.0
    srv = result.server
    assert srv["backends_started"] == pytest.approx(result.details["requests_total"], rel=0.1)


@live
@pytest.mark.live
@pytest.mark.parametrize("kind", ["sqlalchemy", "asyncpg"])
def test_closed_loop(kind):
    """4 clients, 20 ms think, ~6 ms response: about 4 / 26 ms = 150/s."""
    s = scenario(POOLS[kind], kind="closed", clients=4, think_time=0.02, service=0.005)
    m = run(s).metrics
    assert m["timeout_rate"] == 0 and m["error_rate"] == 0
    expected = 4 / (0.02 + m["latency_mean_ms"] / 1000.0)
    assert m["throughput_rps"] == pytest.approx(expected, rel=0.2)
    assert m["in_flight_mean"] <= 4 + 1e-9


@live
@pytest.mark.live
def test_an_open_loop_split_over_two_loops_runs_one_schedule():
    # labs.loadgen's share=(k, n): each of n processes (two threads here, each with
    # its own event loop and asyncpg pool) issues every n-th request of the *same*
    # schedule from one time zero; together they are the whole run.
    import time
    from concurrent.futures import ThreadPoolExecutor

    from labs.drivers.asyncpg import AsyncpgDriver
    from labs.loadgen import drive as run_async
    from labs.records import OK, RunContext

    s = scenario({"kind": "asyncpg", "min_size": 2, "max_size": 2}, rate=150.0, duration=1.5)

    def part(share, start_at):
        ctx = RunContext(dsn=DSN, application_name="labs-test-share", query=QuerySpec())
        return run_async(AsyncpgDriver(s, ctx), ctx, s, drain_limit=5.0,
                         share=share, start_at=start_at)[0]

    start_at = time.perf_counter() + 1.0
    with ThreadPoolExecutor(2) as threads:
        parts = list(threads.map(part, [(0, 2), (1, 2)], [start_at, start_at]))
    whole = part(None, None)
    by_index = {r.index: r for r in whole}
    assert {r.index % 2 for r in parts[0]} == {0} and {r.index % 2 for r in parts[1]} == {1}
    merged = sorted((r for p in parts for r in p), key=lambda r: r.index)
    window = [r for r in merged if r.scheduled < s.workload.warmup + s.workload.duration]
    assert [r.index for r in window] == [i for i in sorted(by_index)
                                         if by_index[i].scheduled < 2.0]
    for r in window:  # the same arrival and service time as the whole run's request
        assert r.scheduled == by_index[r.index].scheduled
        assert r.service == by_index[r.index].service
        assert r.outcome == OK
        assert r.started - r.scheduled < 0.5  # one time zero: no part started a second late
    with pytest.raises(ValueError, match="only an open loop"):
        part((2, 2), None)
