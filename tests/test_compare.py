"""``labs compare`` and its calibration (labs/calibrate.py, labs/compare.py).

The calibration tests use the machine's Postgres at ``postgres@127.0.0.1:5432``
(or ``LABS_TEST_DSN``) and are skipped when it does not answer.  The CLI test
runs ``python -m labs compare`` through throwaway servers (no LABS_* variables,
an empty state directory), 2 s measured at 100 requests/s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labs.calibrate import Calibration, calibrate
from labs.compare import errors, predicted_scenario, render_compare
from simlib.distributions import Empirical
from simlib.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
DSN = os.environ.get("LABS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_problem() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(DSN, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        return f"no Postgres answering at {DSN} ({str(exc).strip()[:120]})"
    return None


needs_postgres = pytest.mark.skipif(
    _postgres_problem() is not None, reason=_postgres_problem() or ""
)


def test_errors_and_render_without_a_server():
    sim = {"scenario": "x", "metrics": {
        "throughput_rps": {"value": 100.0, "ci95": [98.0, 102.0]},
        "p_wait": {"value": 0.0, "ci95": [0.0, 0.0]},
        "only_sim": {"value": 1.0, "ci95": None}}}
    live = {"scenario": "x", "metrics": {
        "throughput_rps": {"value": 95.0, "ci95": None},
        "p_wait": {"value": 0.0, "ci95": None}}}
    e = errors(sim, live)
    assert set(e) == {"throughput_rps", "p_wait"}
    assert e["throughput_rps"]["abs_error"] == pytest.approx(5.0)
    assert e["throughput_rps"]["rel_error"] == pytest.approx(5 / 95)
    assert e["p_wait"]["rel_error"] is None  # measured 0: no relative error
    text = render_compare({"simulated": sim, "measured": live, "errors": e})
    assert "throughput_rps" in text and "+5.3%" in text and "±2" in text


def test_predicted_scenario_uses_the_calibration():
    scenario = load_scenario(ROOT / "scenarios" / "demo.toml", [])
    cal = Calibration(connect_times=[0.003, 0.004, 0.005], rtt=0.0001, query_overhead=0.0002)
    p = predicted_scenario(scenario, cal)
    assert isinstance(p.database.connect_time, Empirical)
    assert sorted(p.database.connect_time.samples) == [0.003, 0.004, 0.005]
    assert p.database.network_rtt == pytest.approx(0.0001)  # the overhead is the query's
    assert p.query.sleep_overhead == pytest.approx(0.0002)
    assert p.query.server_time(0.0043) == pytest.approx(0.0052)  # ceil to 5 ms, + overhead
    assert p.pool == scenario.pool
    assert p.client == scenario.client  # no client calibration: a free client


def test_predicted_scenario_with_client_costs():
    from labs.calibrate import ClientCalibration

    scenario = load_scenario(ROOT / "scenarios" / "demo.toml", [])
    cal = Calibration(connect_times=[0.003], rtt=0.0001, query_overhead=0.0002)
    client = ClientCalibration("sqlalchemy", 100.0, dispatch=[0.0002, 0.0004],
                               hold=[0.0008, 0.001])
    p = predicted_scenario(scenario, cal, client)
    assert sorted(p.client.dispatch.samples) == [0.0002, 0.0004]
    assert p.client.hold.mean == pytest.approx(0.0009)
    d = client.to_dict()
    assert d["dispatch"]["mean"] == pytest.approx(0.0003) and d["hold"]["samples"] == 2


def test_calibrate_refuses_remote_servers():
    with pytest.raises(ValueError, match="loopback"):
        calibrate("postgresql://postgres@10.1.2.3:5432/postgres", samples=1)


@pytest.mark.live
@needs_postgres
def test_calibrate_on_machine_postgres():
    cal = calibrate(DSN, samples=20)
    assert 1 <= len(cal.connect_times) <= 20
    assert all(0 < t < 3 for t in cal.connect_times)
    assert 0 < cal.rtt < 0.05
    assert 0 <= cal.query_overhead < 0.05
    # a new backend's first query loads catalog caches: it costs more than a second one
    assert 0 < cal.first_query_extra < 0.05
    d = cal.to_dict()
    assert json.loads(json.dumps(d))["rtt"] == cal.rtt
    assert d["samples"] == len(cal.connect_times)


@pytest.mark.live
@pytest.mark.skipif(shutil.which("pg_ctl") is None and shutil.which("initdb") is None
                    and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                    reason="no Postgres server binaries for throwaway services")
def test_cli_compare_demo_through_throwaway_services(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABS_")}
    env["LABS_STATE_DIR"] = str(tmp_path / "state")  # no `services up` state: throwaway
    cmd = [sys.executable, "-m", "labs", "compare", "scenarios/demo.toml",
           "--set", "workload.duration=2", "--set", "workload.warmup=0.5",
           "--set", "workload.rate=100", "--set", "replications=2", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert {"simulated", "measured", "calibration"} <= set(doc)
    assert doc["simulated"]["executor"] == "simlib"
    assert doc["calibration"]["samples"] >= 1
    sim = doc["simulated"]["metrics"]["throughput_rps"]["value"]
    live = doc["measured"]["metrics"]["throughput_rps"]["value"]
    assert live == pytest.approx(sim, rel=0.10)
    assert doc["errors"]["throughput_rps"]["measured"] == live
    # the client's costs were calibrated with the scenario's library and used
    client = doc["calibration"]["client"]
    assert client["pool_kind"] == "sqlalchemy" and client["dispatch"]["samples"] > 10
    assert 0 < client["hold"]["mean"] < 0.05
    lo, hi = doc["single_run_range"]["throughput_rps"]
    assert lo <= sim <= hi
