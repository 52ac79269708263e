"""Lesson 12's infrastructure: the pool exporter, the Prometheus kind, alert thresholds, dashboard.

Without servers: the committed Grafana dashboard is valid JSON, current with
``labs.monitoring.QUERIES`` and names the ``${DS_PROMETHEUS}`` datasource on every
panel and target; the alert threshold simlib finds for an M/M/c pool agrees with
the closed form within the simulation's own interval; bad input to the public
functions is one clear error line.

Live (a throwaway Postgres and a real ``prometheus`` on loopback, skipped when
either is missing): Prometheus starts, scrapes an exporter target registered
after it started (file SD), answers PromQL with the exporter's values -- a
SQLAlchemy QueuePool of 5 with 3 connections held reads ``dbpool_checked_out``
3, psycopg_pool's numbers are its ``get_stats()``, an idle-in-transaction
session shows in ``pg_stat_activity_count`` -- accepts every dashboard query,
loads an alert rule at run time and shows it firing, and stops leaving no
process or directory; a live run hands its pool to the exporter through
``run_live(observe=...)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path

import pytest

from labs import monitoring
from labs.alerts import alert_rule, alert_threshold, mmc_threshold
from labs.monitoring import QUERIES, PoolExporter, dashboard_text, query, read_pool
from labs.services import (
    PrometheusAPI,
    PrometheusError,
    ServiceError,
    local_prometheus,
    missing_binaries,
    processes_in,
    services_for,
)
from simlib.scenario import ScenarioError, parse_scenario

MISSING = missing_binaries(redis=False, prometheus=True)
live = pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
LABS_VARS = ("LABS_PG_PRIMARY", "LABS_PG_REPLICAS", "LABS_REDIS", "LABS_PGBOUNCER",
             "LABS_PROMETHEUS")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No LABS_* services from the machine; a private state directory."""
    for var in LABS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LABS_STATE_DIR", str(tmp_path / "state"))


# ---------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------


def test_dashboard_is_valid_current_and_names_the_datasource():
    text = monitoring.DASHBOARD_PATH.read_text()
    doc = json.loads(text)
    assert text == dashboard_text(), "run `python -m labs.monitoring` to regenerate it"
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    assert doc["__inputs"][0]["pluginId"] == "prometheus"
    assert len(doc["panels"]) == 5
    exprs = []
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            exprs.append(target["expr"])
    # the dashboard draws the named queries, every one but the single-number share
    assert set(exprs) == {v for k, v in QUERIES.items() if k != "connections_share"}
    assert {v["name"] for v in doc["templating"]["list"]} == {"window", "threshold"}


# ---------------------------------------------------------------------------
# The alert threshold against M/M/c
# ---------------------------------------------------------------------------


def mmc_scenario(pool: dict[str, object]):
    return parse_scenario({
        "name": "mmc-alert", "seed": 7, "replications": 4,
        "workload": {"kind": "open", "rate": 100.0, "duration": 60.0, "warmup": 5.0},
        "query": {"service_time": {"dist": "exponential", "mean": 0.01}},
        "pool": pool,
        "database": {"connect_time": {"dist": "constant", "value": 0.0}, "network_rtt": 0.0,
                     "cores": 0, "max_connections": 1000},
    })


def test_threshold_agrees_with_mmc_within_the_simulations_interval():
    """psycopg_pool with c fixed connections and FIFO waiters, no connect or reset cost:
    M/M/4 with mu = 100/s; SLO p99 80 ms -> rho* = 0.8367 (labs.alerts.mmc_threshold).

    The tolerance is the simulation's: the theory must lie where the p99's 95% interval
    crosses the SLO (the threshold's interval), widened by 0.01 for the linear
    interpolation between sweep points 0.025 of utilisation apart; and the point
    estimate within 0.05 (the interval here is about 0.06 wide).
    """
    rho = mmc_threshold(0.080, 100.0, 4)
    assert rho == pytest.approx(0.8367, abs=1e-3)
    s = mmc_scenario({"kind": "psycopg_pool", "min_size": 4, "max_size": 4,
                      "timeout": math.inf, "reset_on_return": False})
    t = alert_threshold(s, 80.0, rates=[280, 300, 315, 325, 335, 345, 355], workers=2)
    low, high = t.utilisation_ci95
    assert low - 0.01 <= rho <= high + 0.01, (rho, t.utilisation_ci95)
    assert abs(t.utilisation - rho) < 0.05
    assert t.pool_size == 4 and 325 < t.rate < 355
    assert [p.rate for p in t.curve] == [280, 300, 315, 325, 335, 345, 355]
    rule = t.rule()
    assert f"> {t.utilisation:.4g}" in rule and "for: 5s" in rule
    assert "avg_over_time(dbpool_checked_out[30s]) / dbpool_size" in rule


# ---------------------------------------------------------------------------
# Bad input: one clear line
# ---------------------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_bad_input_is_one_line():
    with pytest.raises(KeyError) as e:
        query("p_waits")
    assert "must be one of" in one_line(e)
    with pytest.raises(ValueError) as e:
        query("p_wait", window="thirty")
    assert one_line(e).startswith("window: must be")
    with pytest.raises(ValueError) as e:
        query("alert_threshold")
    assert one_line(e).startswith("threshold: must be")
    with pytest.raises(ValueError) as e:
        alert_rule(1.5)
    assert one_line(e).startswith("threshold: must be a utilisation")
    with pytest.raises(ValueError) as e:
        alert_rule(0.8, window="30 seconds")
    assert one_line(e).startswith("window: must be")
    s = mmc_scenario({"kind": "psycopg_pool", "min_size": 4, "max_size": 4})
    with pytest.raises(ScenarioError) as e:
        alert_threshold(s, -1.0)
    assert "slo_p99_ms" in one_line(e)
    with pytest.raises(ScenarioError) as e:
        alert_threshold(s, 80.0, rates=[300, 200])
    assert "rates" in one_line(e)
    with pytest.raises(TypeError) as e:
        read_pool(object())
    assert one_line(e).startswith("pool: must be a SQLAlchemy")
    with PoolExporter() as exporter:
        with pytest.raises(ValueError) as e:
            exporter.watch("bad name!", object())
        assert one_line(e).startswith("name: must be")
        with pytest.raises(TypeError):
            exporter.watch("app", object())
    with pytest.raises(ValueError) as e:
        PoolExporter(port=70000)
    assert one_line(e).startswith("port: must be")
    api = PrometheusAPI("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(PrometheusError) as e:
        api.query("up")
    assert "did not answer" in one_line(e)
    with pytest.raises(PrometheusError) as e:
        api.query("  ")
    assert one_line(e).startswith("promql: must be")


def test_exporter_stops_and_frees_its_port():
    before = threading.active_count()
    exporter = PoolExporter()
    port = exporter.port
    exporter.observe_request("app", 0.004)
    assert 'dbpool_request_duration_seconds_bucket{le="0.005",pool="app"} 1.0' in exporter.text()
    exporter.stop()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again
    assert threading.active_count() <= before


class _FakeDBAPIConnection:
    """Enough of a DB-API connection for a QueuePool to check it out and back in."""

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_busy_seconds_integrate_the_checked_out_count():
    """``dbpool_checked_out_seconds_total`` is the integral of the busy count: two
    connections held for a measured interval add 2 x that interval, to the sampler's
    resolution (the left-rectangle error is at most one 10 ms interval per change of
    the count, here 4 changes: 0.04 connection-seconds, plus the scheduler's delay of
    a sample, a few ms)."""
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(_FakeDBAPIConnection, pool_size=3, max_overflow=0)
    with PoolExporter() as exporter:
        exporter.watch("fake", pool)
        time.sleep(0.1)
        start = exporter.pools.busy_seconds("fake")
        t0 = time.monotonic()
        held = [pool.connect(), pool.connect()]
        time.sleep(0.6)
        for c in held:
            c.close()
        held_for = time.monotonic() - t0
        time.sleep(0.1)
        busy = exporter.pools.busy_seconds("fake") - start
        text = exporter.text()
    assert busy == pytest.approx(2 * held_for, abs=0.06), (busy, held_for)
    assert sample(text, "dbpool_checked_out_seconds_total", pool="fake") >= busy
    assert not any(t.name == "labs-exporter-sampler" and t.is_alive()
                   for t in threading.enumerate())


def test_a_closed_psycopg_pool_has_nothing_checked_out():
    """psycopg_pool's close() clears the pool but not its connection count (pool.py,
    ``close``; base.py, ``_get_measures``: ``pool_size`` is ``_nconns``), and a pool not
    yet opened counts its ``min_size`` the same way: its stats say 2 connections, none
    available.  The exporter must not read that as 2 checked out (an alert on a closed
    pool would fire)."""
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool("host=127.0.0.1 port=1", min_size=2, max_size=4,
                                       open=False)
    stats = pool.get_stats()
    assert pool.closed and stats["pool_size"] == 2 and stats["pool_available"] == 0
    reading = read_pool(pool)
    assert (reading.checked_out, reading.connections, reading.idle, reading.size) == (
        0.0, 0.0, 0.0, 4.0)


# ---------------------------------------------------------------------------
# Live
# ---------------------------------------------------------------------------


def assert_nothing_left(dirs: list[Path]) -> None:
    deadline = time.monotonic() + 5
    while any(processes_in(d) for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(processes_in(d) for d in dirs)
    assert not any(d.exists() for d in dirs)


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from an exposition text."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in exposition")


@pytest.mark.live
@live
def test_prometheus_scrapes_the_exporter_and_fires_the_alert():
    import psycopg2
    import psycopg_pool
    import sqlalchemy
    from sqlalchemy.pool import QueuePool

    from labs.drivers.sqlalchemy import sqlalchemy_url

    t0 = time.monotonic()
    with services_for(prometheus=True) as svc, PoolExporter() as exporter:
        prom = local_prometheus(svc)
        assert prom.ready_seconds is not None and prom.ready_seconds < 10
        assert svc.prometheus == prom.url
        dirs = [prom.dir]
        engine = sqlalchemy.create_engine(sqlalchemy_url(svc.primary), poolclass=QueuePool,
                                          pool_size=5, max_overflow=0, pool_timeout=0.2)
        ppool = psycopg_pool.ConnectionPool(svc.primary, min_size=2, max_size=4, open=True)
        ppool.wait(10)
        idle_tx = psycopg2.connect(svc.primary)
        held = []
        try:
            exporter.watch("sqla", engine)
            exporter.watch("pgpool", ppool)
            exporter.watch_activity(svc.primary_admin)
            held = [engine.connect() for _ in range(3)]
            with ppool.connection() as c:
                c.execute("SELECT 1")
            with idle_tx.cursor() as cur:
                cur.execute("SELECT 1")  # psycopg2 opened a transaction: idle in transaction
            t1 = time.monotonic()
            prom.add_target("app", exporter.address, {"lesson": "12"})
            waited = prom.wait_for_target("app", timeout=10)
            print(f"\nprometheus ready {prom.ready_seconds:.2f} s, target up after "
                  f"{waited:.2f} s (services {t1 - t0:.2f} s)")
            api = prom.api
            assert api.wait_for('dbpool_checked_out{pool="sqla"}', 5) == 3.0
            assert prom.query('dbpool_size{pool="sqla"}') == 5.0
            assert prom.query('dbpool_idle{pool="sqla"}') == 0.0
            assert prom.query('dbpool_requests_total{pool="sqla"}') == 3.0
            assert prom.query('dbpool_checked_out{pool="sqla",lesson="12"}') == 3.0
            stats = ppool.get_stats()
            text = exporter.text()
            assert sample(text, "dbpool_requests_total", pool="pgpool") == stats["requests_num"]
            assert sample(text, "dbpool_connections", pool="pgpool") == stats["pool_size"]
            assert sample(text, "dbpool_idle", pool="pgpool") == stats["pool_available"]
            assert sample(text, "dbpool_size", pool="pgpool") == 4
            db = svc.primary.rsplit("/", 1)[1]
            with psycopg2.connect(svc.primary_admin) as admin, admin.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                            "state = 'idle in transaction' AND backend_type = 'client backend'",
                            (db,))
                expected = cur.fetchone()[0]
            admin.close()
            assert expected >= 1
            got = sample(exporter.text(), "pg_stat_activity_count", datname=db,
                         state="idle in transaction")
            assert got == expected
            assert api.wait_for(f'pg_stat_activity_count{{state="idle in transaction",'
                                f'datname="{db}"}}', 5) == expected
            limit = prom.api.wait_for("pg_settings_max_connections", 5)
            with psycopg2.connect(svc.primary_admin) as admin, admin.cursor() as cur:
                cur.execute("SHOW max_connections")
                assert limit == float(cur.fetchone()[0])
            admin.close()
            # SQLAlchemy counts no waits: the exporter's timing of _do_get does
            held += [engine.connect(), engine.connect()]
            assert "Current Checked out connections: 5" in engine.pool.status()
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                engine.connect()
            text = exporter.text()
            assert sample(text, "dbpool_requests_waited_total", pool="sqla") == 1.0
            assert sample(text, "dbpool_checked_out", pool="sqla") == 5.0
            # every dashboard query is accepted
            for name in QUERIES:
                data = api.query_raw(query(name, "30s", threshold=0.8))
                assert "resultType" in data, name
            with pytest.raises(PrometheusError) as e:
                api.query("sum(")
            assert "bad_data" in str(e.value)
            # an alert rule added at run time, firing while 5 of 5 are busy
            t2 = time.monotonic()
            prom.add_rules("dbpool", alert_rule(0.5, window="5s", for_="2s"))
            deadline = time.monotonic() + 15
            while not api.firing("DbPoolSaturated") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert api.firing("DbPoolSaturated"), prom.alerts()
            print(f"rule loaded and firing after {time.monotonic() - t2:.2f} s")
            # after the fact: the ALERTS series, an instant in the past, a range
            now = time.time()
            assert api.value('max_over_time(ALERTS{alertname="DbPoolSaturated",'
                             'alertstate="firing"}[30s])', at=now) == 1.0
            assert api.value('dbpool_checked_out{pool="sqla"}', at=now) == 5.0
            series = api.query_range('dbpool_checked_out{pool="sqla"}', now - 4, now, 1)
            (points,) = series.values()
            # one point a second from the first scrape on (the target is a few seconds old)
            assert points[-1][1] == 5.0 and 2 <= len(points) <= 5
            assert points[-1][0] == pytest.approx(now, abs=0.01)
            assert all(b[0] - a[0] == pytest.approx(1.0) for a, b in zip(points, points[1:]))
            for bad in (lambda: api.query_range("up", now, now - 1),
                        lambda: api.query("up", at=-1.0),
                        lambda: api.query_range("up", now - 1, now, 0)):
                with pytest.raises(PrometheusError) as e:
                    bad()
                assert "\n" not in str(e.value)
            with pytest.raises(ServiceError) as e:
                prom.add_rules("broken", "groups:\n  - name: x\n    rules:\n      - alert: A\n"
                               "        expr: sum(\n")
            assert "refused" in str(e.value) and "\n" not in str(e.value)
            assert not (prom.dir / "rules" / "broken.yml").exists()
            with pytest.raises(ServiceError, match="^add_target: address must be"):
                prom.add_target("x", "nowhere")
        finally:
            for c in held:
                c.close()
            idle_tx.close()
            ppool.close()
            engine.dispose()
    assert_nothing_left(dirs)


@pytest.mark.live
@live
def test_asyncpg_pool_and_a_live_run_through_observe():
    import asyncpg

    from labs.executor import run_live

    with services_for() as svc, PoolExporter() as exporter:
        async def hold_two() -> tuple[float, float, float]:
            pool = await asyncpg.create_pool(svc.primary, min_size=1, max_size=3)
            try:
                exporter.watch("apg", pool)
                a = await pool.acquire()
                b = await pool.acquire()
                text = exporter.text()
                await pool.release(a)
                await pool.release(b)
                return (sample(text, "dbpool_checked_out", pool="apg"),
                        sample(text, "dbpool_size", pool="apg"),
                        sample(text, "dbpool_requests_total", pool="apg"))
            finally:
                await pool.close()

        assert asyncio.run(hold_two()) == (2.0, 3.0, 2.0)
        s = parse_scenario({
            "name": "observed", "seed": 3,
            "workload": {"kind": "open", "rate": 60.0, "duration": 1.0, "warmup": 0.2},
            "query": {"service_time": {"dist": "constant", "value": 0.002}},
            "pool": {"kind": "sqlalchemy", "pool_size": 3, "max_overflow": 0},
        })
        result = run_live(s, svc.topology, observe=exporter.observer("run"))
        exporter.stop()  # joins the follower: every finished record observed
        text = exporter.text()
        ok = sum(1 for r in result.records if r.outcome == 0)
        assert sample(text, "dbpool_request_duration_seconds_count", pool="run") == ok
        assert sample(text, "dbpool_requests_total", pool="run") >= ok
        assert sample(text, "dbpool_size", pool="run") == 3.0


@pytest.mark.live
@live
@pytest.mark.timeout(90)
def test_services_up_prometheus_is_found_by_runs_and_stopped_by_down(capsys):
    """``services up --prometheus`` starts one detached; a Lab finds it; ``down`` stops it;
    asking for it while the services run without one is one line, exit 2."""
    import subprocess
    import sys

    from labs import cli

    base = ("services", "up", "--replicas", "0", "--no-redis")
    assert cli.main([*base]) == 0
    try:
        capsys.readouterr()
        assert cli.main([*base, "--prometheus"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("labs: --prometheus: ") and "\n" not in err
    finally:
        assert cli.main(["services", "down"]) == 0
    up = subprocess.run([sys.executable, "-m", "labs", *base, "--prometheus", "--json"],
                        capture_output=True, text=True, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        assert [s["role"] for s in doc["servers"]] == ["primary", "prometheus"] and doc["ok"]
        dirs = [Path(s["dir"]) for s in doc["servers"]]
        url = doc["servers"][1]["dsn"]
        with services_for(prometheus=True) as svc:
            assert svc.source == "services-up" and svc.prometheus == url
            assert PrometheusAPI(url).ready()
    finally:
        down = subprocess.run([sys.executable, "-m", "labs", "services", "down", "--json"],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert len(json.loads(down.stdout)["stopped"]) == 2
    assert_nothing_left(dirs)
