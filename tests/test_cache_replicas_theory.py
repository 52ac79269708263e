"""The cache and replica model against closed forms over a whole popularity.

Open Poisson workloads over Zipf key popularities, set up so that the
textbook assumptions hold: opening a connection and a round trip cost
nothing, the pool is large enough that no request waits, and queries take a
constant time, so that a miss's fill time S (cache GET, query, SETEX) is
known exactly.

===========================================  ======================================
model                                        closed form (simlib.theory)
===========================================  ======================================
cache-aside, TTL, no single flight           renewal-reward per key, with the fill
                                             time and re-stores    (ttl_cache_keys)
cache-aside, TTL, single flight,             λT/(1+λS+λT) with T -> (1-e^{-wT})/w
invalidating writes                          (ttl_cache_hit_ratio)
cache-aside, LRU, no expiry                  Che's approximation (lru_cache_hit_ratio)
one hot key, slow queries (a stampede)       the same renewal-reward, λS = 10
two replicas, constant lag, no cache         Σ p_k (1 - e^{-w_k L})
                                             (replica_stale_read_ratio)
the same, read_your_writes, N users          Σ p_k e^{-wW/N} (1 - e^{-w_k L (N-1)/N})
                                             (read_your_writes_stale_read_ratio)
===========================================  ======================================

Each case also prints the plain textbook value ``Σ p_k λ_k T/(1+λ_k T)``,
which ignores the fill time, to show what that subtlety is worth.

Tolerance: 0.01 absolute on every ratio, and the 95% half-width must be at
most half of it (0.005), so a pass cannot come from a wide interval.  The
runs are seeded, so the outcome is reproducible.

``python -m pytest tests/test_cache_replicas_theory.py -s`` prints the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from simlib import theory
from simlib.scenario import Scenario, parse_scenario
from simlib.simulation import simulate

ABS_TOL = 0.01
PRECISION = 0.5  # half-width <= PRECISION * ABS_TOL

ROWS: list[str] = []


def constant(value: float) -> dict[str, object]:
    return {"dist": "constant", "value": value}


def scenario(workload: dict, query_time: float, replications: int = 5, **sections) -> Scenario:
    return parse_scenario(
        {
            "seed": 2026,
            "replications": replications,
            "workload": {"kind": "open", **workload},
            "query": {"service_time": constant(query_time)},
            # No waiting, no connect or round-trip cost: a query takes exactly its time.
            "pool": {"kind": "sqlalchemy", "pool_size": 100, "max_overflow": 0,
                     "reset_on_return": False},
            "database": {"connect_time": constant(0.0), "network_rtt": 0.0,
                         "max_connections": 500},
            **sections,
        }
    )


@dataclass(frozen=True)
class Case:
    name: str
    scenario: Scenario
    metric: str
    theory: float
    textbook: float | None = None  # λT/(1+λT) without the fill time, for the table


def cases() -> Iterator[Case]:
    # 1. TTL cache-aside, no single flight.  Fill time S = GET 0.1 ms + query 1 ms.
    rate, keys, s_zipf, ttl, hit, q = 2000.0, 1000, 0.8, 0.5, 0.0001, 0.001
    w = {"rate": rate, "keys": keys, "popularity": {"dist": "zipf", "s": s_zipf},
         "duration": 40.0, "warmup": 5.0}
    p = parse_scenario({"workload": w}).workload.popularity.probabilities(keys)
    yield Case(
        "TTL 0.5 s, Zipf 0.8 over 1000 keys, 2000 reads/s",
        scenario(w, q, cache={"ttl": ttl, "hit_time": hit}),
        "cache_hit_ratio",
        theory.ttl_cache_hit_ratio(rate, p, ttl, fill_time=hit + q, single_flight=False),
        theory.ttl_cache_hit_ratio(rate, p, ttl),
    )

    # 2. Same with single flight and 10% writes that invalidate: writes cut hits.
    wf = 0.1
    w2 = {**w, "write_fraction": wf}
    yield Case(
        "TTL 0.5 s, single flight, 10% invalidating writes",
        scenario(w2, q, cache={"ttl": ttl, "hit_time": hit, "single_flight": True,
                               "on_write": "invalidate"}),
        "cache_hit_ratio",
        theory.ttl_cache_hit_ratio(
            rate * (1 - wf), p, ttl, fill_time=hit + q, single_flight=True,
            invalidation_rate=rate * wf,
        ),
        theory.ttl_cache_hit_ratio(rate * (1 - wf), p, ttl),
    )

    # 3. LRU with 100 of 1000 keys, no expiry: Che's approximation.
    w3 = w
    yield Case(
        "LRU 100 of 1000 keys, Zipf 0.8, no TTL",
        scenario(w3, 0.0005, cache={"ttl": float("inf"), "capacity": 100, "hit_time": 0.00005}),
        "cache_hit_ratio",
        theory.lru_cache_hit_ratio(rate, p, 100),
    )

    # 4. Stale reads from two replicas lagging 50 ms, 10% writes, no cache.
    # Stale reads come in bursts (every read of a hot key in the 50 ms after
    # its write), so the variance is some 6x a binomial's: 10 x 50 s.
    keys4, rate4, lag = 100, 1000.0, 0.05
    w4 = {"rate": rate4, "keys": keys4, "popularity": {"dist": "zipf", "s": 0.8},
          "write_fraction": wf, "duration": 50.0, "warmup": 2.0}
    p4 = parse_scenario({"workload": w4}).workload.popularity.probabilities(keys4)
    yield Case(
        "2 replicas, lag 50 ms, Zipf 0.8 over 100 keys, 100 writes/s",
        scenario(w4, 0.001, replications=10, replicas={"count": 2, "lag": constant(lag)}),
        "stale_read_ratio",
        theory.replica_stale_read_ratio(rate4 * wf, p4, lag),
    )


    # 4b. The same under read-your-writes: 200 users, window 0.5 s.  Only other
    # users' writes make a read stale, and reads go to the primary for 0.5 s
    # after their user's write.
    users, window = 200, 0.5
    w4b = {**w4, "clients": users}
    ryw = {"count": 2, "lag": constant(lag), "route_reads": "read_your_writes",
           "ryw_window": window}
    s4b = scenario(w4b, 0.001, replications=10, replicas=ryw)
    yield Case(
        "read_your_writes, 200 users, window 0.5 s, else as above",
        s4b,
        "stale_read_ratio",
        theory.read_your_writes_stale_read_ratio(rate4 * wf, p4, lag, window, users),
    )
    yield Case(
        "read_your_writes, same run",
        s4b,
        "replica_read_share",
        theory.read_your_writes_replica_share(rate4 * wf, window, users),
    )

    # 5. One hot key, slow queries: the fill time is no longer small (λS = 10),
    # and the textbook formula is far off; with and without single flight.
    # Hits come in runs of a whole cycle, so 10 x 250 s.
    w5 = {"rate": 200.0, "keys": 1, "duration": 250.0, "warmup": 2.0}
    for flag in (False, True):
        yield Case(
            f"1 key, 200 reads/s, TTL 0.1 s, query 50 ms, single_flight={str(flag).lower()}",
            scenario(w5, 0.05, replications=10,
                     cache={"ttl": 0.1, "hit_time": 0.0, "single_flight": flag}),
            "cache_hit_ratio",
            theory.ttl_cache_hit_ratio(200.0, [1.0], 0.1, fill_time=0.05, single_flight=flag),
            theory.ttl_cache_hit_ratio(200.0, [1.0], 0.1),
        )


CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_simulation_matches_theory(case: Case) -> None:
    est = simulate(case.scenario).metrics[case.metric]
    assert est.ci95 is not None
    low, high = est.ci95
    error = est.value - case.theory
    textbook = "" if case.textbook is None else f"{case.textbook:.4f}"
    ROWS.append(
        f"| {case.name} | {case.metric} | {case.theory:.4f} | {textbook} | {est.value:.4f} "
        f"| [{low:.4f}, {high:.4f}] | {error:+.4f} |"
    )
    assert (high - low) / 2 <= PRECISION * ABS_TOL, f"interval too wide: {est}"
    assert abs(error) <= ABS_TOL, f"{case.metric}: simulated {est.value}, theory {case.theory}"


def test_print_table() -> None:
    """Prints the agreement table with ``-s`` (runs last: pytest keeps file order)."""
    if ROWS:
        print("\n| case | metric | theory | textbook λT/(1+λT) | simulated | 95% CI | error |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(ROWS))
