"""simlib advise: the smallest setting whose 95% interval meets every objective.

Checked against Erlang C (the smallest pool whose P(wait) is below a bound
is known exactly), against the interval rule itself, and for the command
line's contract: the JSON document, one line on bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simlib import theory
from simlib.advise import Objective, advise, parse_objective, settings, worst_case_connections
from simlib.cli import main
from simlib.scenario import ScenarioError, parse_scenario

LAMBDA, MU = 400.0, 200.0  # a = 2 Erlangs


def mmc_scenario(**extra: object) -> dict[str, object]:
    return {
        "name": "advise-mmc", "seed": 5, "replications": 6,
        "workload": {"kind": "open", "rate": LAMBDA, "duration": 60.0, "warmup": 2.0},
        "query": {"service_time": {"dist": "exponential", "mean": 1 / MU}},
        "pool": {"kind": "psycopg_pool", "min_size": 1, "max_size": 1, "timeout": math.inf,
                 "max_lifetime": math.inf, "max_idle": math.inf, "reset_on_return": False},
        "database": {"connect_time": 0.0, "network_rtt": 0.0, "cores": 0},
        **extra,
    }


def test_advise_finds_the_smallest_pool_that_erlang_c_allows() -> None:
    """P(wait) <= 0.1 at a = 2: c = 5 (Erlang C: C(3) = 0.44, C(4) = 0.17, C(5) = 0.06)."""
    scenario = parse_scenario(mmc_scenario())
    bound = 0.1
    exact = next(c for c in range(3, 20) if theory.erlang_c(c, LAMBDA / MU) <= bound)
    advice = advise(scenario, "pool.max_size", list(range(3, 9)), [parse_objective(
        f"p_wait<={bound}")], workers=1)
    assert advice.recommended == exact
    assert advice.scenario.pool.connection_limit() == exact
    # Every smaller value fails on its interval's upper end; the recommended one passes.
    rows = advice.table.set_index("pool.max_size")
    assert not rows.loc[exact - 1, "meets_slo"] and rows.loc[exact, "meets_slo"]
    assert rows.loc[exact, "p_wait_high"] <= bound


def test_an_objective_is_met_only_with_confidence() -> None:
    """A point estimate under the bound is not enough: the interval's far end must be."""
    ceiling = Objective("latency_p99_ms", "<=", 50.0)
    assert ceiling.met(45.0, 40.0, 49.0)
    assert not ceiling.met(45.0, 40.0, 51.0)
    floor = Objective("throughput_rps", ">=", 100.0)
    assert floor.met(110.0, 101.0, 120.0) and not floor.met(110.0, 99.0, 120.0)
    assert not ceiling.met(math.nan, math.nan, math.nan)  # nothing completed: not met


def test_no_value_meets_gives_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\nreplications = 2\n[workload]\nrate = 100\nduration = 2\n'
                    'warmup = 0.5\n', encoding="utf-8")
    code = main(["advise", str(path), "--vary", "pool.pool_size=1..2", "--slo",
                 "latency_mean_ms<=0.001", "--json", "--workers", "1"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recommended"] is None
    assert [row["pool.pool_size"] for row in doc["table"]] == [1, 2]
    first = doc["table"][0]
    assert set(first["latency_mean_ms"]) == {"value", "ci95"} and first["meets_slo"] is False


def test_worst_case_connections_flags_a_fleet_past_max_connections() -> None:
    fleet = parse_scenario({"fleet": {"instances": 4}, "database": {"max_connections": 50},
                            "pool": {"pool_size": 5, "max_overflow": 10}})
    assert worst_case_connections(fleet) == 60  # 4 x (5 + 10) > 50
    bouncer = parse_scenario({"fleet": {"instances": 4}, "pgbouncer": {
        "default_pool_size": 10, "reserve_pool_size": 2}})
    assert worst_case_connections(bouncer) == 12
    text = "\n".join(settings(bouncer))
    assert "default_pool_size = 10" in text and "network_rtt" not in text
    assert "create_engine(URL" in settings(fleet)[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--slo", "latency_p99<=5"], "simlib: --slo: unknown metric 'latency_p99'"),
    (["--slo", "latency_p99_ms=5"], "simlib: --slo: must be METRIC<=NUMBER or METRIC>=NUMBER"),
    (["--slo", "latency_p99_ms<=x"], "simlib: --slo: the bound of latency_p99_ms must be a "
                                      "number, got \"x\""),
    (["--slo", "p_wait<=0.1", "--vary", "pool.pool_size=a..b"],
     "simlib: --vary pool.pool_size: a range must be START..STOP"),
])
def test_bad_advise_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n', encoding="utf-8")
    if "--vary" not in argv:
        argv = [*argv, "--vary", "pool.pool_size=1..2"]
    assert main(["advise", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_parse_objective_rejects_what_it_cannot_read() -> None:
    for text in ("", "p_wait", "<=3", "p_wait<=nan"):
        with pytest.raises(ScenarioError):
            parse_objective(text)
    assert str(parse_objective(" timeout_rate <= 0.001 ")) == "timeout_rate<=0.001"
