"""Cache-aside and read replicas: the rules on hand-worked traces, and the stampede.

Quick tests.  The checks against closed forms over a popularity (TTL, Che's
LRU approximation, stale reads) are in test_cache_replicas_theory.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simlib import theory
from simlib.cache import CacheStore
from simlib.metrics import CONDITIONAL_METRICS, METRICS, metric_values
from simlib.replicas import Replica
from simlib.scenario import ScenarioError, load_scenario, parse_scenario
from simlib.simulation import check_supported, run_replication, simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
INF = math.inf


def constant(value: float) -> dict[str, object]:
    return {"dist": "constant", "value": value}


#: A database with free connections and no round trip, so a query takes its
#: service time exactly and the traces below can be worked out by hand.
FREE_DB = {"connect_time": constant(0.0), "network_rtt": 0.0}
BIG_POOL = {"kind": "sqlalchemy", "pool_size": 50, "max_overflow": 0, "reset_on_return": False}


# ---------------------------------------------------------------------------
# the store: TTL and LRU rules


def test_ttl_runs_from_the_store_and_hits_do_not_extend_it():
    store = CacheStore(ttl=10.0, capacity=None)
    store.set(1, 7, now=0.0)
    assert store.get(1, now=9.999) == 7  # read at 9.999 ...
    assert store.get(1, now=10.0) is None  # ... does not extend: gone at 10
    store.set(1, 8, now=10.0)
    store.set(1, 9, now=15.0)  # a second SETEX restarts the clock
    assert store.get(1, now=24.9) == 9 and store.get(1, now=25.0) is None


def test_infinite_ttl_never_expires():
    store = CacheStore(ttl=INF, capacity=None)
    store.set(3, 1, now=0.0)
    assert store.get(3, now=1e12) == 1


def test_lru_evicts_the_least_recently_used_key():
    store = CacheStore(ttl=INF, capacity=2)
    store.set(1, 0, 0.0)
    store.set(2, 0, 1.0)
    assert store.get(1, 2.0) == 0  # 1 is now more recent than 2
    store.set(3, 0, 3.0)  # full: evicts 2
    assert store.get(2, 4.0) is None
    assert store.get(1, 4.0) == 0 and store.get(3, 4.0) == 0
    assert len(store) == 2


# ---------------------------------------------------------------------------
# a replica: lag, and replay in commit order


def test_replica_shows_a_commit_after_its_lag_and_in_commit_order():
    replica = Replica(0, server=None, pool=None)  # type: ignore[arg-type]
    replica.replicate(key=5, version=1, now=0.0, lag=0.5)
    # the second commit has a short lag, but WAL is replayed in order: it
    # cannot show before the first one, at 0.5
    replica.replicate(key=6, version=1, now=0.1, lag=0.1)
    assert replica.version(5, 0.49) == 0 and replica.version(6, 0.49) == 0
    assert replica.version(5, 0.5) == 1 and replica.version(6, 0.5) == 1
    replica.replicate(key=5, version=2, now=1.0, lag=0.2)
    assert replica.version(5, 1.19) == 1 and replica.version(5, 1.2) == 2


# ---------------------------------------------------------------------------
# hand-worked traces through the whole simulation


def one_client(**sections) -> dict:
    """One closed-loop client without think time, on a single key."""
    return {
        "seed": 1,
        "replications": 1,
        "workload": {"kind": "closed", "clients": 1, "think_time": 0.0, "keys": 1,
                     "duration": 10.6, "warmup": 0.0},
        "query": {"service_time": constant(0.004)},
        "pool": BIG_POOL,
        "database": FREE_DB,
        **sections,
    }


def test_cache_cycle_of_one_client_by_hand():
    """GET 1 ms, query 4 ms, SETEX 1 ms, TTL 100.5 ms.

    A miss stores the value 1 + 4 = 5 ms after its GET; the client's next
    GETs come every 1 ms after the store, and the one 101 ms after it finds
    the value expired.  So each 106 ms cycle has 1 miss (1 query) and 100
    hits: a hit ratio of 100/101 and 1/0.106 queries per second.  The
    10.6 s window holds 100 cycles (the edges move it by at most one).
    """
    s = parse_scenario(one_client(cache={"ttl": 0.1005, "hit_time": 0.001}))
    r = run_replication(s, 0)
    assert r["cache_hit_ratio"] == pytest.approx(100 / 101, abs=1 / 101 / 100 + 1e-9)
    assert r["db_queries_per_s"] * 10.6 == pytest.approx(100, abs=1)
    assert r["latency_mean_ms"] == pytest.approx((6 + 100 * 1) / 101, rel=0.01)
    assert "stale_read_ratio" not in simulate(s, workers=1).metrics  # no writes


@pytest.mark.parametrize(
    "route,stale",
    [("replicas", "all"), ("read_your_writes", "none"), ("primary", "none")],
)
def test_read_your_writes_on_a_single_client(route, stale):
    """One client writes and reads one key, every 4 ms; replicas lag 200 ms.

    On a replica nearly every read misses one of the client's own writes of
    the last 200 ms (stale); read-your-writes sends its reads to the primary
    for 1 s after each write, so none is stale, as with every read on the
    primary.
    """
    s = parse_scenario(
        one_client(
            workload={"kind": "closed", "clients": 1, "think_time": 0.0, "keys": 1,
                      "duration": 5.0, "warmup": 1.0, "write_fraction": 0.5},
            replicas={"count": 2, "lag": constant(0.2), "route_reads": route},
        )
    )
    r = run_replication(s, 0)
    if stale == "all":
        assert r["stale_read_ratio"] > 0.99 and r["replica_read_share"] == 1.0
    else:
        assert r["stale_read_ratio"] == 0.0 and r["replica_read_share"] == 0.0


def test_cache_on_write_invalidate_write_through_none():
    """One key, one client, writes every other request, TTL 1 h, replies in 4 ms.

    ``none``: the value cached by the first miss is served for an hour, so
    every read after the first write is stale.  ``invalidate``: a write deletes
    it, the next read misses and re-reads the primary: never stale (the
    single client cannot race itself).  ``write_through``: a write stores its
    own version, so reads never miss after the first and never go stale.
    """
    base = one_client(workload={"kind": "closed", "clients": 1, "keys": 1, "duration": 20.0,
                                "warmup": 1.0, "write_fraction": 0.5})
    results = {}
    for on_write in ("none", "invalidate", "write_through"):
        s = parse_scenario({**base, "cache": {"ttl": 3600.0, "on_write": on_write}})
        results[on_write] = run_replication(s, 0)
    assert results["none"]["stale_read_ratio"] > 0.99
    assert results["none"]["cache_hit_ratio"] == 1.0  # the first miss was in the warm-up
    assert results["invalidate"]["stale_read_ratio"] == 0.0
    # after a write the next read misses; reads are i.i.d. after a write or a read,
    # so about half of the reads follow a write: hit ratio near 1/2
    # (about 2,300 reads: sd 0.01)
    assert results["invalidate"]["cache_hit_ratio"] == pytest.approx(0.5, abs=0.04)
    assert results["write_through"]["stale_read_ratio"] == 0.0
    assert results["write_through"]["cache_hit_ratio"] == 1.0


# ---------------------------------------------------------------------------
# the stampede, and single flight


def stampede(single_flight: bool) -> dict:
    """One hot key read 200 times a second, TTL 100 ms, queries of 50 ms."""
    return {
        "seed": 11,
        "replications": 5,
        "workload": {"rate": 200.0, "keys": 1, "duration": 100.0, "warmup": 2.0},
        "query": {"service_time": constant(0.05)},
        "pool": BIG_POOL,
        "database": FREE_DB,
        "cache": {"ttl": 0.1, "hit_time": 0.0, "single_flight": single_flight},
    }


def test_single_flight_cuts_the_stampede_to_one_query_per_expiry():
    """Database queries for the hot key, counted, against renewal-reward theory.

    Without single flight every read in the 50 ms after the key expires
    queries (1 + λS = 11 per expiry) and each re-stores the value, so
    theory gives (1 + λS) / (1/λ + S + E[D] + T) = 55.0 queries/s.  With it,
    one query per expiry: 1 / (1/λ + S + T) = 6.45/s.
    """
    measured = {}
    for flag in (False, True):
        result = simulate(parse_scenario(stampede(flag)), workers=1)
        queries = result.metrics["db_queries_per_s"]
        expected = float(theory.ttl_cache_keys([200.0], 0.1, 0.05, flag).query_rate[0])
        assert abs(queries.value - expected) <= 0.05 * expected, (flag, queries, expected)
        assert (queries.ci95[1] - queries.ci95[0]) / 2 <= 0.025 * expected
        hit = result.metrics["cache_hit_ratio"].value
        expected_hit = theory.ttl_cache_hit_ratio(200.0, [1.0], 0.1, 0.05, flag)
        assert hit == pytest.approx(expected_hit, abs=0.01)
        measured[flag] = queries.value
    assert measured[True] < measured[False] / 5
    # the waiting readers of single flight were served from the leader's query
    s = parse_scenario(stampede(True))
    assert run_replication(s, 0)["cache_coalesced_ratio"] == pytest.approx(
        200 * 0.05 / (1 + 200 * 0.05 + 200 * 0.1), abs=0.02
    )


# ---------------------------------------------------------------------------
# metrics, determinism, the labs refusal, example files


def test_load_spreads_evenly_over_replicas():
    s = parse_scenario(
        {
            "seed": 2,
            "workload": {"rate": 1000.0, "duration": 5.0, "warmup": 0.5, "keys": 100},
            "pool": BIG_POOL,
            "database": FREE_DB,
            "replicas": {"count": 4},
        }
    )
    r = run_replication(s, 0)
    assert r["replica_read_share"] == 1.0
    # 5,000 reads split at random into 4: the busiest gets 25% + about 2 sd (0.6%)
    assert 0.25 <= r["replica_reads_max_share"] < 0.27
    assert "stale_read_ratio" not in simulate(s, workers=1).metrics  # no writes, no staleness


def test_same_seed_same_numbers_with_cache_and_replicas():
    s = load_scenario(
        SCENARIOS / "replicas.toml",
        ["workload.duration=2", "workload.warmup=0.5", "cache.ttl=1", "cache.single_flight=true"],
    )
    assert s.cache is not None and s.replicas is not None
    a, b = run_replication(s, 0), run_replication(s, 0)
    assert json.dumps(a) == json.dumps(b)  # NaN-safe equality
    assert run_replication(s, 1) != a


def test_plain_scenario_has_no_cache_or_replica_metrics():
    s = parse_scenario({"workload": {"duration": 1.0, "warmup": 0.1}, "replications": 2})
    metrics = simulate(s, workers=1).metrics
    assert not CONDITIONAL_METRICS & set(metrics)
    assert metrics["db_queries_per_s"].value == metrics["throughput_rps"].value


def test_labs_refuses_only_a_lag_it_cannot_impose():
    """A real standby has one recovery_min_apply_delay: a random lag cannot be run live."""
    s = parse_scenario({"replicas": {"lag": {"dist": "exponential", "mean": 0.2}}})
    with pytest.raises(ScenarioError) as error:
        check_supported(s)
    assert str(error.value).startswith("replicas.lag: ")
    assert "constant" in str(error.value)
    for ok in ({}, {"cache": {}}, {"replicas": {}}, {"cache": {}, "replicas": {"count": 2}}):
        check_supported(parse_scenario(ok))


@pytest.mark.parametrize("name", ["cache.toml", "replicas.toml", "stampede.toml"])
def test_example_scenarios_run_from_the_command_line(name):
    out = subprocess.run(
        [sys.executable, "-m", "simlib", "run", str(SCENARIOS / name), "--json",
         "--set", "workload.duration=1", "--set", "workload.warmup=0.2",
         "--set", "replications=2", "--workers", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)["metrics"]
    assert ("cache_hit_ratio" in metrics) == (name != "replicas.toml")
    assert ("replica_read_share" in metrics) == (name == "replicas.toml")
    for metric in metrics.values():
        assert set(metric) == {"value", "ci95"}


def test_theory_helpers_limits():
    # TTL: instantaneous fill gives the textbook per-key formula
    assert theory.ttl_cache_hit_ratio(10.0, [1.0], 1.0) == pytest.approx(10 / 11)
    # Che: a uniform popularity keeps C of N keys, hit ratio C/N
    assert theory.lru_cache_hit_ratio(1000.0, np.full(100, 0.01), 50) == pytest.approx(0.5)
    assert theory.lru_cache_hit_ratio(1000.0, np.full(100, 0.01), 100) == 1.0
    # stale reads: no lag or no writes, nothing stale
    assert theory.replica_stale_read_ratio(10.0, [0.5, 0.5], 0.0) == 0.0
    assert theory.replica_stale_read_ratio(10.0, [1.0], 0.1) == pytest.approx(1 - math.exp(-1))


def test_keyed_path_without_cache_or_replicas_matches_the_plain_path():
    """With writes but no cache or replicas, a request does what the plain path does.

    A write fraction of 1e-12 sends the run through the keyed path without
    any write happening; every pool and latency figure must equal the plain
    path's (write_fraction = 0) to rounding, as the streams are the same.
    """
    base = load_scenario(SCENARIOS / "demo.toml", ["workload.duration=2", "workload.warmup=0.5"])
    plain = run_replication(base, 0)
    keyed = run_replication(base.with_values({"workload.write_fraction": 1e-12}), 0)
    assert keyed["stale_read_ratio"] == 0.0 and "stale_read_ratio" not in plain
    assert set(keyed) == set(plain) | {"stale_read_ratio"}
    for name, value in plain.items():
        assert keyed[name] == pytest.approx(value, rel=1e-9, nan_ok=True), name


def test_metric_values_called_as_labs_calls_it():
    """labs/executor.py passes only the pool-era counts: every metric is still there."""
    values = metric_values(
        duration=2.0, arrivals=4, completed=4, waited=1, timeouts=0, errors=0, opened=1,
        latency=[0.01] * 4, checkout=[0.0] * 4, query=[0.005] * 4,
        connections_mean=1.0, busy_mean=0.5, in_flight_mean=0.5,
    )
    assert set(METRICS) <= set(values)
    assert values["db_queries_per_s"] == 2.0  # one query per completed request
    assert all(math.isnan(values[name]) for name in CONDITIONAL_METRICS)
    values = metric_values(
        duration=1.0, arrivals=4, completed=4, waited=0, timeouts=0, errors=0, opened=0,
        latency=[0.01] * 4, checkout=[], query=[0.005], connections_mean=1.0,
        busy_mean=0.1, in_flight_mean=0.1, db_queries=1, cache_lookups=4, cache_hits=3,
        reads_returned=4, stale_reads=1, primary_reads=1, replica_reads=[2, 1],
    )
    assert values["cache_hit_ratio"] == 0.75 and values["stale_read_ratio"] == 0.25
    assert values["replica_read_share"] == 0.75 and values["replica_reads_max_share"] == 2 / 3
    assert math.isnan(values["cache_coalesced_ratio"])  # no single flight
