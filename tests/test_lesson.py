"""labs.lesson: the checks, tables and retry rule the course notebooks lean on.

The live parts are exercised by the notebooks themselves (nbval); here the
logic around them is pinned down with stand-in comparisons, so a notebook
failure can be told apart from a helper that lost its meaning.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import labs.lesson as lesson
from labs.lesson import Lab, at_least, at_most, check, scenario, side_by_side
from simlib.metrics import Estimate

BASE = {
    "name": "lesson-test",
    "seed": 1,
    "replications": 2,
    "workload": {"kind": "open", "rate": 50.0, "duration": 1.0, "warmup": 0.2},
    "query": {"service_time": {"dist": "constant", "value": 0.002}},
    "pool": {"kind": "sqlalchemy", "pool_size": 3, "max_overflow": 0},
}


def test_check_passes_inside_and_raises_outside_its_tolerance() -> None:
    assert check("throughput_rps", 104.0, 100.0, rel=0.05).startswith("ok: throughput (req/s)")
    with pytest.raises(AssertionError,
                       match=r"predicted 100: 6\.0% above the prediction \(tolerance ±5%\)"):
        check("throughput_rps", 106.0, 100.0, rel=0.05)
    assert check("p_wait", 0.33, 0.30, abs=0.05).startswith("ok: P(wait)")
    with pytest.raises(AssertionError, match=r"0\.060 below the prediction"):
        check("p_wait", 0.24, 0.30, abs=0.05)
    assert "equal to the prediction" in check("p_wait", 0.3, 0.3, abs=0.0)
    # a NaN measurement is never "within tolerance"
    with pytest.raises(AssertionError, match="not comparable"):
        check("p_wait", math.nan, 0.3, abs=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        check("p_wait", 0.3, 0.3)


def test_one_sided_checks() -> None:
    assert at_least("connections_opened_per_s", 60.0, 50.0).startswith("ok: connections opened/s")
    with pytest.raises(AssertionError, match="at least 50"):
        at_least("connections_opened_per_s", 40.0, 50.0)
    assert at_most("latency_mean_ms", 9.0, 10.0).startswith("ok")
    with pytest.raises(AssertionError, match="at most 10"):
        at_most("latency_mean_ms", 11.0, 10.0)
    with pytest.raises(AssertionError):
        at_most("latency_mean_ms", math.nan, 10.0)


def test_scenario_merges_sections_and_validates() -> None:
    s = scenario(BASE, pool={"pool_size": 7}, workload={"rate": 80.0})
    assert s.pool.pool_size == 7 and s.pool.max_overflow == 0
    assert s.workload.rate == 80.0 and s.workload.duration == 1.0
    assert BASE["pool"]["pool_size"] == 3  # the base dict is not touched
    with pytest.raises(Exception, match="pool_size"):
        scenario(BASE, pool={"pool_size": -1})


def test_side_by_side_errors_are_predicted_minus_measured() -> None:
    predicted = {"metrics": {"latency_mean_ms": {"value": 11.0, "ci95": [10.0, 12.0]},
                             "p_wait": {"value": 0.25, "ci95": [0.2, 0.3]}}}
    measured = SimpleNamespace(metrics={"latency_mean_ms": 10.0, "p_wait": 0.20})
    t = side_by_side(predicted, measured, metrics=["latency_mean_ms", "p_wait"])
    assert t.loc["mean latency (ms)", "error"] == "+10%"  # relative, to the measurement
    assert t.loc["P(wait)", "error"] == "+0.050"  # absolute, for a share
    assert t.loc["mean latency (ms)", "95% low"] == 10.0


def _comparison(lag_ms: float, throughput: float) -> SimpleNamespace:
    return SimpleNamespace(
        live=SimpleNamespace(
            metrics={"scheduler_lag_p99_ms": lag_ms, "throughput_rps": throughput},
            details={"cpu": {"host_busy_cores": 1.7}, "errors_top": []},
        ),
        simulation=SimpleNamespace(metrics={"throughput_rps": Estimate(100.0, (99.0, 101.0))}),
    )


class ScriptedLab(Lab):
    """A Lab without servers whose compare() hands out prepared comparisons in turn."""

    def __init__(self, runs: list[SimpleNamespace]) -> None:  # no services
        self.runs = list(runs)
        self.calls = 0

    def compare(self, s, **kw):
        self.calls += 1
        return self.runs.pop(0)


@pytest.fixture(autouse=True)
def _no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lesson.time, "sleep", lambda s: None)


def test_compare_and_check_repeats_a_run_the_client_spoilt(capsys) -> None:
    lab = ScriptedLab([_comparison(900.0, 100.0), _comparison(3.0, 101.0)])
    cmp, verdicts = lab.compare_and_check(None, {"throughput_rps": {"rel": 0.05}})
    assert lab.calls == 2 and cmp.live.metrics["scheduler_lag_p99_ms"] == 3.0
    assert verdicts[0].startswith("ok: throughput")
    assert "fell behind its schedule (scheduler lag p99 900 ms)" in capsys.readouterr().out


def test_compare_and_check_repeats_a_miss_and_raises_the_last() -> None:
    lab = ScriptedLab([_comparison(3.0, 80.0)] * 3)
    with pytest.raises(AssertionError, match="lab and model disagree: throughput"):
        lab.compare_and_check(None, {"throughput_rps": {"rel": 0.05}}, attempts=3)
    assert lab.calls == 3


def test_compare_and_check_takes_a_checks_function() -> None:
    lab = ScriptedLab([_comparison(3.0, 100.0)])
    cmp, verdicts = lab.compare_and_check(
        None, lambda c: [at_least("throughput_rps", c.live.metrics["throughput_rps"], 90.0)])
    assert verdicts == ["ok: throughput (req/s): measured 100, at least 90"]


def test_wait_for_quiet_waits_while_the_machine_is_busy(monkeypatch, capsys) -> None:
    import labs.host

    readings = iter([1.6, 1.1, 0.2, 0.1])
    monkeypatch.setattr(labs.host, "busy_cores", lambda seconds: next(readings))
    assert lesson.wait_for_quiet(cores=0.5, patience=60.0) == 0.2
    assert "machine is busy: 1.6 cores" in capsys.readouterr().out
    # no patience: one reading, and the run goes ahead
    monkeypatch.setattr(labs.host, "busy_cores", lambda seconds: 1.9)
    assert lesson.wait_for_quiet(cores=0.5, patience=0.0) == 1.9
    # no /proc: nothing to wait for
    monkeypatch.setattr(labs.host, "busy_cores", lambda seconds: None)
    assert lesson.wait_for_quiet() is None
