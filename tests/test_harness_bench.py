"""The harness-capacity benchmark's pieces that need no server.

``QuerySpec(select_one=True)`` (the plain ``SELECT 1`` of bench/bench_harness.py)
and the benchmark's pgbench parsing, sustain criterion and search.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from labs.query import QuerySpec

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "bench/bench_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_harness", module)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def test_select_one_is_plain_and_has_no_parameter():
    q = QuerySpec(select_one=True)
    for style in ("pyformat", "named", "dollar"):
        assert q.sql(style) == "SELECT 1"
    assert q.params(0.005) == ()


def test_default_query_unchanged():
    q = QuerySpec()
    assert q.sql("dollar") == "SELECT pg_sleep($1)"
    assert q.sql("pyformat") == "SELECT pg_sleep(%s)"
    assert q.params(0.005) == (0.005,)
    assert q.params(-1.0) == (0.0,)
    cpu = QuerySpec(cpu_bound=True, seconds_per_row=1e-6)
    assert cpu.sql("dollar").startswith("SELECT count(*)") and "$1::int" in cpu.sql("dollar")
    assert cpu.params(0.002) == (cpu.argument(0.002),) == (2000,)


PGBENCH_OUT = """\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 612345
number of failed transactions: 0 (0.000%)
latency average = 0.130 ms
initial connection time = 12.345 ms
tps = 61234.567890 (without initial connection time)
"""


def test_parse_pgbench():
    got = bench.parse_pgbench(PGBENCH_OUT)
    assert got == {"tps": 61234.56789, "latency_mean_ms": 0.13, "transactions": 612345}
    with pytest.raises(RuntimeError):
        bench.parse_pgbench("pgbench: error: connection refused")


def test_pg_args():
    assert bench.pg_args("postgresql://labs@127.0.0.1:5555/labs") == [
        "-h", "127.0.0.1", "-p", "5555", "-U", "labs", "labs",
    ]


def _trial(rate, **kw):
    t = {
        "rate": rate,
        "offered_rps": rate,
        "achieved_rps": rate,
        "throughput_rps": rate,
        "incomplete": 0,
        "failed": 0,
        "lag_p99_ms": 1.0,
        "reset_on_return": False,
        "lag_p50_ms": 0.5,
        "client_cores": 0.5,
        "host_busy_cores": 1.0,
    }
    t.update(kw)
    return t


def test_criterion():
    crit = bench.Criterion(lag_p99_ms=10.0, min_fraction=0.97)
    assert crit.failures(_trial(1000)) == []
    assert crit.failures(_trial(1000, achieved_rps=960))
    assert crit.failures(_trial(1000, throughput_rps=960))
    assert crit.failures(_trial(1000, incomplete=1))
    assert crit.failures(_trial(1000, failed=1))
    assert crit.failures(_trial(1000, lag_p99_ms=10.5))
    assert crit.failures(_trial(1000, lag_p99_ms=None))


@pytest.mark.parametrize("capacity", [370.0, 730.0, 7_340.0, 12_345.0])
def test_search_brackets_a_threshold(capacity, capsys):
    crit = bench.Criterion()

    def measure(rate):
        t = _trial(rate, lag_p99_ms=1.0 if rate <= capacity else 50.0)
        t["failures"] = crit.failures(t)
        t["sustained"] = not t["failures"]
        return t

    out = bench.search(measure, start=1000.0, precision=0.05)
    assert out["confirmed"]
    assert out["best_rps"] <= capacity < out["first_failing_rps"]
    assert out["first_failing_rps"] / out["best_rps"] <= 1.06
    assert out["trials"][-1]["phase"] == "confirm"


def test_search_steps_down_when_confirmation_fails(capsys):
    crit = bench.Criterion()
    seen: dict[float, int] = {}

    def measure(rate):
        seen[rate] = seen.get(rate, 0) + 1
        # 1000 and 2000 pass; whatever the bisection settles on passes once only
        ok = rate <= 2000 or (rate < 4000 and seen[rate] == 1)
        t = _trial(rate, lag_p99_ms=1.0 if ok else 50.0)
        t["failures"] = crit.failures(t)
        t["sustained"] = not t["failures"]
        return t

    out = bench.search(measure, start=1000.0, precision=0.05, confirmations=2)
    # 3830 passes in the bisection, fails its confirmation; the search steps back
    # to 3670, which fails its confirmation too: nothing confirmed, say so
    phases = [(t["rate"], t["phase"], t["sustained"]) for t in out["trials"]]
    assert phases[-3:] == [(3830.0, "bisect", True), (3830.0, "confirm", False),
                           (3670.0, "confirm", False)]
    assert not out["confirmed"] and out["best_rps"] is None
    assert out["best_unconfirmed_rps"] == 3670.0


def test_collector_settings_are_restored():
    import gc

    from labs.loadgen import _Collector

    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with _Collector(period=0.0, threshold0=50_000) as c:
        assert c.active
        assert gc.get_threshold()[0] == max(before[0], 50_000)
        kept = [object() for _ in range(10)]  # noqa: F841
        c.tick(1.0)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_event_loop_choice(monkeypatch):
    import asyncio

    from labs.loadgen import event_loop_factory, event_loop_name

    monkeypatch.setenv("LABS_EVENT_LOOP", "asyncio")
    assert event_loop_name() == "asyncio"
    assert event_loop_factory() is asyncio.new_event_loop
    monkeypatch.delenv("LABS_EVENT_LOOP")
    try:
        import uvloop
    except ImportError:
        assert event_loop_name() == "asyncio"
    else:
        assert event_loop_name() == "uvloop"
        assert event_loop_factory() is uvloop.new_event_loop
