"""[fleet], [pgbouncer], [serverless], workload.rate_schedule: checked at the edge, one line each.

And the few things about them that need no queueing theory: a schedule's
arrivals follow its rates, a file round-trips through ``to_dict``, the
connections Postgres sees are counted apart from the applications' once
PgBouncer stands between them, and a reclaimed environment's connection
stays on the server.
"""

from __future__ import annotations

import pytest

from simlib.scenario import ScenarioError, parse_scenario
from simlib.simulation import simulate

BAD = [
    ({"fleet": {"instances": 0}}, "fleet.instances: must be an integer >= 1, got 0"),
    ({"fleet": {"workers": 2}}, "fleet.workers: unknown field (allowed: instances), got 2"),
    ({"pgbouncer": {"pool_mode": "txn"}},
     'pgbouncer.pool_mode: must be one of "session", "transaction", "statement", got "txn"'),
    ({"pgbouncer": {"default_pool_size": 0}},
     "pgbouncer.default_pool_size: must be an integer >= 1, got 0"),
    ({"pgbouncer": {"min_pool_size": 30}},
     "pgbouncer.min_pool_size: must be an integer <= default_pool_size (20), got 30"),
    ({"pgbouncer": {"query_wait_timeout": -1}},
     "pgbouncer.query_wait_timeout: must be a number >= 0, got -1"),
    ({"serverless": {"connection": "pooled"}},
     'serverless.connection: must be one of "global", "per_invocation", got "pooled"'),
    ({"serverless": {"concurrency_limit": 0}},
     "serverless.concurrency_limit: must be an integer >= 1, got 0"),
    ({"serverless": {"keep_warm": 0}}, "serverless.keep_warm: must be a number > 0, got 0"),
    ({"fleet": {"instances": 2}, "serverless": {}},
     "serverless: cannot be combined with [fleet]: a serverless scenario's processes are its "
     "environments; remove one"),
    ({"workload": {"kind": "closed", "rate_schedule": [[0, 10]]}},
     'workload.rate_schedule: only an open workload has a rate (kind = "open"), '
     "got [[0.0, 10.0]]"),
    ({"workload": {"rate": 5, "rate_schedule": [[0, 10]]}},
     "workload.rate: give rate or rate_schedule, not both, got 5.0"),
    ({"workload": {"rate_schedule": [[0, 10], [5]]}},
     "workload.rate_schedule[1]: must be a pair [start second, rate], got [5]"),
    ({"workload": {"rate_schedule": [[0, -1]]}},
     "workload.rate_schedule[0][1]: must be a number >= 0, got -1"),
    ({"workload": {"kind": "closed"}, "serverless": {}},
     'serverless: needs an open workload (invocations arrive on their own: '
     'workload.kind = "open"), got "closed"'),
    ({"serverless": {}, "pool": {"pool_size": 3}},
     "pool.pool_size: not used with [serverless]: each environment holds one connection "
     "(serverless.connection), so [pool] takes only kind, got 3"),
    ({"fleet": {"instances": 2}, "cache": {}},
     "fleet: is not modelled with [cache], [replicas] or workload.write_fraction > 0 yet; "
     "remove one or the other"),
    ({"pgbouncer": {}, "replicas": {}},
     "pgbouncer: fronts the primary only; it is not modelled with [replicas] yet; remove one "
     "or the other"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_tiers_get_one_line(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as error:
        parse_scenario(data)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_rate_schedule_must_start_at_zero_and_increase() -> None:
    for schedule in ([[1, 10]], [[0, 10], [5, 1], [5, 2]], [[0, 0]]):
        with pytest.raises(ScenarioError, match="workload.rate_schedule"):
            parse_scenario({"workload": {"rate_schedule": schedule}})


def test_tiers_round_trip_through_to_dict() -> None:
    s = parse_scenario({
        "workload": {"rate_schedule": [[0, 100], [10, 800], [12, 100]]},
        "fleet": {"instances": 3},
        "pgbouncer": {"pool_mode": "transaction", "default_pool_size": 5},
    })
    assert parse_scenario(s.to_dict()) == s
    serverless = parse_scenario({"serverless": {"connection": "per_invocation"},
                                 "pool": {"kind": "none"}})
    assert parse_scenario(serverless.to_dict()) == serverless
    assert s.with_values({"fleet.instances": 5}).fleet.instances == 5  # type: ignore[union-attr]


def test_rate_schedule_arrivals_follow_the_schedule() -> None:
    """Arrivals per second in the window are the schedule's mean rate there (Poisson)."""
    schedule = [[0.0, 50.0], [4.0, 400.0], [6.0, 0.0], [8.0, 100.0]]
    s = parse_scenario({"replications": 20, "workload": {
        "rate_schedule": schedule, "warmup": 2.0, "duration": 10.0}})
    assert s.workload.mean_rate(2.0, 12.0) == pytest.approx((100 + 800 + 0 + 400) / 10)
    # 20 x 1300 arrivals: the mean's standard error is 0.6%, so 3% is five of them.
    offered = simulate(s).metrics["offered_rps"].value
    assert offered == pytest.approx(s.workload.mean_rate(2.0, 12.0), rel=0.03)


def test_pgbouncer_separates_client_and_server_connections() -> None:
    """Four instances of QueuePool(10) behind PgBouncer's 5 servers: Postgres sees at most 5."""
    result = simulate(parse_scenario({
        "replications": 2, "workload": {"rate": 600, "duration": 5, "warmup": 1},
        "pool": {"pool_size": 10, "max_overflow": 0},
        "fleet": {"instances": 4},
        "pgbouncer": {"pool_mode": "transaction", "default_pool_size": 5},
    }))
    m = result.metrics
    assert m["server_connections_max"].value <= 5
    assert m["connections_mean"].value > m["server_connections_mean"].value
    assert m["pgbouncer_wait_mean_ms"].value > 0


def test_reclaimed_environments_leave_their_connections_on_the_server() -> None:
    """keep_warm 1 s and a quiet spell: the environments go, their connections stay."""
    result = simulate(parse_scenario({
        "replications": 2,
        "workload": {"rate_schedule": [[0, 200], [3, 0], [6, 200]], "warmup": 0.5,
                     "duration": 8},
        "serverless": {"keep_warm": 1.0, "cold_start": 0.05},
        "pool": {"kind": "none"},
    }))
    m = result.metrics
    # The connections Postgres holds outnumber the environments alive to use them.
    assert m["server_connections_mean"].value > 1.5 * m["environments_mean"].value
    assert m["connections_mean"].value == pytest.approx(m["environments_mean"].value, rel=0.2)
