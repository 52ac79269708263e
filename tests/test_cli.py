"""The command line and the Python API: contract output, bad input, determinism, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simlib.metrics import CONDITIONAL_METRICS, CONTRACT_METRICS
from simlib.scenario import load_scenario
from simlib.simulation import run_replication, simulate
from simlib.sweep import parse_grid, sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"
QUICK = ["--set", "workload.duration=2", "--set", "workload.warmup=0.5", "--set", "replications=2"]


def simlib(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simlib", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_run_json_is_one_contract_document():
    out = simlib("run", str(DEMO), *QUICK, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # exactly one document: json.loads rejects trailing data
    assert doc["executor"] == "simlib" and doc["scenario"] == "pool-sizing-demo"
    # No [cache], no writes: cache_hit_ratio and stale_read_ratio do not apply.
    assert not CONDITIONAL_METRICS & set(doc["metrics"])
    for name in CONTRACT_METRICS:
        if name in CONDITIONAL_METRICS:
            continue
        metric = doc["metrics"][name]
        assert set(metric) == {"value", "ci95"}
        low, high = metric["ci95"]
        assert low <= metric["value"] <= high


def test_run_table_and_plot(tmp_path):
    png = tmp_path / "fig.png"
    out = simlib("run", str(DEMO), *QUICK, "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert "throughput_rps" in out.stdout and "latency_p95_ms" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind


@pytest.mark.parametrize(
    "args,field",
    [
        (["run", str(DEMO), "--set", "pool.pool_size=-3"], "pool.pool_size"),
        (["run", str(DEMO), "--set", "workload.kind=half-open"], "workload.kind"),
        (["run", str(DEMO), "--set", "nonsense"], "--set"),
        (["run", "missing.toml"], "missing.toml"),
        (["run", str(DEMO), "--workers", "0"], "--workers"),
        (["run"], "scenario"),
        (["fly", str(DEMO)], "command"),
        (["sweep", str(DEMO)], "--grid"),
        (["sweep", str(DEMO), "--grid", "pool.pool_size=9..2"], "--grid pool.pool_size"),
        (["sweep", str(DEMO), "--grid", "pool.pool_size"], "--grid"),
        (["sweep", str(DEMO), "--grid", "pool.pool_size=1,-1"], "pool.pool_size"),
        (["run", str(DEMO), "--set", "cache.ttl=-1"], "cache.ttl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, field):
    out = simlib(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert field in lines[0] and "Traceback" not in out.stderr


def test_invalid_toml_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool\nkind = 'x'\n")
    out = simlib("run", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "bad.toml" in out.stderr


def test_same_seed_same_numbers_and_replications_are_independent():
    s = load_scenario(DEMO, ["workload.duration=2", "workload.warmup=0.5"])
    assert run_replication(s, 0) == run_replication(s, 0)
    assert run_replication(s, 0) != run_replication(s, 1)
    other = s.with_values({"seed": 7})
    assert run_replication(other, 0) != run_replication(s, 0)


def test_parallel_and_serial_replications_agree():
    s = load_scenario(DEMO, ["workload.duration=2", "workload.warmup=0.5", "replications=3"])
    assert simulate(s, workers=1).replications == simulate(s, workers=2).replications


def test_common_random_numbers_across_pool_sizes():
    """Changing the pool leaves the arrivals alone: the offered load is identical."""
    s = load_scenario(DEMO, ["workload.duration=2", "workload.warmup=0.5"])
    a = run_replication(s.with_values({"pool.pool_size": 2}), 0)
    b = run_replication(s.with_values({"pool.pool_size": 8}), 0)
    assert a["offered_rps"] == b["offered_rps"]


def test_parse_grid_forms():
    assert parse_grid("pool.pool_size=1..4") == ("pool.pool_size", [1, 2, 3, 4])
    assert parse_grid("pool.pool_size=2..10..4") == ("pool.pool_size", [2, 6, 10])
    assert parse_grid("workload.rate=100,200.5") == ("workload.rate", [100, 200.5])
    assert parse_grid("database.network_rtt=0.001..0.003..0.001") == (
        "database.network_rtt",
        [0.001, 0.002, 0.003],
    )
    assert parse_grid("pool.kind=none") == ("pool.kind", ["none"])


def test_sweep_api_returns_one_row_per_point_with_intervals():
    s = load_scenario(DEMO, ["workload.duration=1", "workload.warmup=0.2", "replications=2"])
    table = sweep(s, {"pool.pool_size": [1, 3], "workload.rate": [100, 300]}, workers=2)
    assert len(table) == 4
    assert list(table["pool.pool_size"]) == [1, 1, 3, 3]
    for name in CONTRACT_METRICS:
        ok = table[f"{name}_low"].notna()
        assert (table.loc[ok, f"{name}_low"] <= table.loc[ok, name] + 1e-12).all()
        assert (table.loc[ok, name] <= table.loc[ok, f"{name}_high"] + 1e-12).all()


def test_sweep_cli_writes_csv_and_plot(tmp_path):
    csv = tmp_path / "out.csv"
    out = simlib(
        "sweep",
        str(DEMO),
        *QUICK,
        "--grid",
        "pool.pool_size=1..3",
        "--grid",
        "workload.rate=100,200",
        "--out",
        str(csv),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["points"]) == 6
    lines = csv.read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("pool.pool_size,workload.rate,throughput_rps")
    assert csv.with_suffix(".png").exists()
