"""labs.services.pgbouncer and labs.pgbouncer_admin: PgBouncer found, started, configured, stopped.

Live tests start a throwaway primary and a real pgbouncer (1.18 on Debian
bookworm) on loopback, check what its admin console says against what the test
did (transactions counted exactly, clients queueing for a pool of 2), that a
scenario's ``[pgbouncer]`` reaches the running PgBouncer, the environment and
``services up`` routes, the faults' one-line messages, and that nothing is left
running afterwards.  They skip when pgbouncer or Postgres is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from labs import cli
from labs import pgbouncer_admin as admin
from labs.services import (
    ServiceError,
    configure,
    missing_binaries,
    processes_in,
    services_for,
    services_for_scenario,
    start_pgbouncer,
    start_primary,
)
from labs.services import pgbouncer as pgb_mod
from labs.services.discovery import from_env, requirements
from simlib.pgbouncer import PgBouncerConfig
from simlib.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
LABS_VARS = ("LABS_PG_PRIMARY", "LABS_PG_REPLICAS", "LABS_REDIS", "LABS_PGBOUNCER")
MISSING = missing_binaries(redis=False, pgbouncer=True)
live = pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")

SCENARIO = """
name = "pgbouncer-settings"
[workload]
kind = "open"
rate = 100.0
duration = 1.0
warmup = 0.5
[query]
service_time = { dist = "constant", value = 0.001 }
[pool]
kind = "sqlalchemy"
[database]
max_connections = 20
[pgbouncer]
pool_mode = "transaction"
default_pool_size = 7
min_pool_size = 2
reserve_pool_size = 3
reserve_pool_timeout = 0.25
max_client_conn = 55
max_db_connections = 9
query_wait_timeout = 2.5
server_idle_timeout = 30.5
server_lifetime = 90.0
server_login_retry = 0.5
server_round_robin = true
network_rtt = 0.0002
connect_time = { dist = "constant", value = 0.0005 }
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No LABS_* services from the machine; a private state directory."""
    for var in LABS_VARS:
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("LABS_STATE_DIR", str(state))
    return state


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "pgbouncer.toml"
    path.write_text(SCENARIO)
    return load_scenario(path)


def assert_nothing_left(dirs: list[str]) -> None:
    assert dirs
    deadline = time.monotonic() + 5
    while True:
        procs = {d: processes_in(d) for d in dirs}
        if not any(procs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(procs.values()), f"processes left: {procs}"
    assert not [d for d in dirs if Path(d).exists()], "temp dirs left"


def port_of(dsn: str) -> int:
    return int(dsn.rsplit(":", 1)[1].split("/")[0])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labs(*args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labs", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m labs ARGS`` in this process (no interpreter start): status, stdout, stderr."""
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def labs_stats(dsn: str) -> admin.StatsRow:
    row = admin.stats_of(admin.show_stats(dsn), "labs")
    assert row is not None
    return row


def labs_pool(dsn: str) -> admin.PoolRow | None:
    return admin.pool_of(admin.show_pools(dsn), "labs", "labs")


def wait_for(ready, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = ready()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# Throwaway: a primary and PgBouncer in front of it
# ---------------------------------------------------------------------------


@pytest.mark.live
@live
@pytest.mark.timeout(60)
def test_throwaway_pgbouncer_counts_what_the_clients_did_and_vanishes():
    cfg = PgBouncerConfig(pool_mode="transaction", default_pool_size=2)
    with services_for(pgbouncer=cfg, max_connections=10) as svc:
        bouncer = svc.topology.endpoint(pgb_mod.PGBOUNCER)
        assert bouncer is not None and bouncer.dsn == svc.pgbouncer
        assert svc.pgbouncer.startswith("postgresql://labs@127.0.0.1:")
        assert svc.pgbouncer.endswith("/labs") and bouncer.admin_dsn.endswith("/pgbouncer")
        assert port_of(svc.pgbouncer) != port_of(svc.primary)
        dirs = [str(m.server.dir) for m in svc.cluster.members]
        assert [m.tier.role for m in svc.cluster.members] == ["primary", "pgbouncer"]

        conn = psycopg2.connect(svc.pgbouncer, connect_timeout=3)
        try:
            with conn.cursor() as cur:  # through PgBouncer, on the primary, as the run's role
                cur.execute("SELECT current_user, current_database(), inet_server_port()")
                assert cur.fetchone() == ("labs", "labs", port_of(svc.primary))
            conn.commit()
            before = labs_stats(bouncer.admin_dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                for i in range(4):  # 4 transactions of one statement each
                    cur.execute("SELECT %s", (i,))
            conn.autocommit = False
            with conn.cursor() as cur:
                for _ in range(3):  # 3 transactions: BEGIN, 2 statements, COMMIT
                    cur.execute("SELECT 1")
                    cur.execute("SELECT 2")
                    conn.commit()
            after = labs_stats(svc.pgbouncer)  # the run's role is a stats user
        finally:
            conn.close()
        assert after.total_xact_count - before.total_xact_count == 7
        assert after.total_query_count - before.total_query_count == 4 + 3 * 4

        # 5 clients, each holding a transaction, on a pool of 2: 3 wait
        go = threading.Event()
        errors: list[BaseException] = []

        def client() -> None:
            try:
                c = psycopg2.connect(svc.pgbouncer, connect_timeout=3)
                try:
                    with c.cursor() as cur:
                        cur.execute("SELECT 1")  # BEGIN: linked to a server until COMMIT
                    go.wait(10)
                    c.commit()
                finally:
                    c.close()
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)

        start = labs_stats(svc.pgbouncer)
        with admin.PoolSampler(bouncer.admin_dsn, interval=0.01) as sampler:
            threads = [threading.Thread(target=client) for _ in range(5)]
            for t in threads:
                t.start()
            try:
                pool = wait_for(lambda: (p := labs_pool(bouncer.admin_dsn)) and p.cl_waiting == 3
                                and p.sv_active == 2 and p, what="3 waiting, 2 active")
                backends = pgb_query(svc.primary_admin,
                                     "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                                     "'labs' AND backend_type = 'client backend'")
                time.sleep(0.05)  # a few samples of the queue
            finally:
                go.set()
                for t in threads:
                    t.join(15)
        assert not errors, errors
        assert pool.cl_active == 2 and pool.sv_idle == 0 and pool.pool_mode == "transaction"
        assert pool.wait > 0  # the oldest waiter has waited
        assert backends == 2  # Postgres sees PgBouncer's two servers, not the 5 clients
        rows = [row for row in (s.pool("labs") for s in sampler.samples) if row is not None]
        assert sampler.errors == 0 and len(rows) >= 3
        assert sampler.peak("labs", "sv_active") == 2
        assert max(row.servers for row in rows) == 2  # never more than default_pool_size
        assert all(row.cl_waiting + row.sv_active <= 5 for row in rows)
        # 4 wait at first, while the second server logs in (one launch at a time per pool)
        assert 3 <= sampler.peak("labs", "cl_waiting") <= 4
        end = labs_stats(svc.pgbouncer)
        assert end.total_xact_count - start.total_xact_count == 5
        assert end.total_wait_time > start.total_wait_time  # µs the 3 spent waiting
        idle = wait_for(lambda: (p := labs_pool(svc.pgbouncer)) and p.cl_waiting == 0
                        and p.sv_active == 0 and p, what="the pool idle again")
        assert idle.sv_idle == 2
        port = port_of(svc.pgbouncer)
    assert_nothing_left(dirs)
    with socket.socket() as s:  # nobody listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def pgb_query(dsn: str, sql: str):
    from labs.services.postgres import query_one

    return query_one(dsn, sql)


@pytest.mark.live
@live
@pytest.mark.timeout(60)
def test_scenario_settings_reach_the_running_pgbouncer(scenario):
    wanted = {"pool_mode": "transaction", "default_pool_size": "7", "min_pool_size": "2",
              "reserve_pool_size": "3", "reserve_pool_timeout": "0.25",
              "max_client_conn": "55", "max_db_connections": "9",
              "query_wait_timeout": "2.5", "server_idle_timeout": "30.5",
              "server_lifetime": "90", "server_login_retry": "0.5",
              "server_round_robin": "1"}
    assert requirements(scenario)["pgbouncer"] is scenario.pgbouncer
    assert pgb_mod.ini_settings(scenario.pgbouncer) == wanted
    with services_for_scenario(scenario) as svc:
        assert configure(scenario, svc) is None
        bouncer = svc.topology.endpoint(pgb_mod.PGBOUNCER)
        config = admin.show_config(bouncer.admin_dsn)
        assert {key: config[key].value for key in wanted} == wanted
        assert all(config[key].changeable == "yes" for key in wanted)
        server = svc.cluster.servers(pgb_mod.PGBOUNCER)[0]
        ini = server.ini.read_text()
        assert "network_rtt" not in ini and "connect_time" not in ini  # the model's own

        # another scenario's settings, applied to the same running PgBouncer
        other = PgBouncerConfig(pool_mode="session", default_pool_size=3,
                                reserve_pool_timeout=1.5, server_round_robin=False)
        shown = pgb_mod.apply_config(bouncer.admin_dsn, other, server)
        assert shown["pool_mode"] == "session" and shown["default_pool_size"] == "3"
        with admin.Console.open(bouncer.admin_dsn) as console:
            assert console.reload() == "RELOAD"  # rereads pgbouncer.ini: rewritten, so kept
            config = console.config()
        assert config["pool_mode"].value == "session"
        assert config["reserve_pool_timeout"].value == "1.5"
        assert config["server_round_robin"].value == "0"
        pool_mode = pgb_query(svc.pgbouncer, "SELECT 1")  # still serves
        assert pool_mode == 1

        # the run's role is only a stats user: SET needs an admin
        with pytest.raises(ServiceError, match="admin access needed") as err:
            pgb_mod.apply_config(svc.pgbouncer, other)
        assert "\n" not in str(err.value)


@pytest.mark.live
@live
@pytest.mark.timeout(30)
def test_max_client_conn_refuses_with_pgbouncers_message():
    primary = start_primary(10)
    try:
        bouncer = start_pgbouncer(primary, PgBouncerConfig(max_client_conn=2))
        try:
            held = [psycopg2.connect(bouncer.dsn, connect_timeout=3) for _ in range(2)]
            try:
                with pytest.raises(psycopg2.OperationalError) as err:
                    psycopg2.connect(bouncer.dsn, connect_timeout=3)
                assert "no more connections allowed (max_client_conn)" in str(err.value)
                # the admin console is never refused (src/client.c), so it can watch
                assert admin.show_config(bouncer.admin_dsn)["max_client_conn"].value == "2"
                for c in held:  # those let in still work
                    with c.cursor() as cur:
                        cur.execute("SELECT 1")
                        assert cur.fetchone() == (1,)
            finally:
                for c in held:
                    c.close()
            # a slot frees when a client leaves
            wait_for(lambda: _connects(bouncer.dsn), 5, "a connection after the others left")
        finally:
            bouncer.stop()
    finally:
        primary.stop()
    assert_nothing_left([str(bouncer.dir), str(primary.dir)])


def _connects(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


# ---------------------------------------------------------------------------
# `python -m labs services up --pgbouncer`
# ---------------------------------------------------------------------------


@pytest.mark.live
@live
@pytest.mark.timeout(90)
def test_services_up_pgbouncer_status_down_and_pgbouncer_down(isolated, scenario, capsys):
    base = ("services", "up", "--replicas", "0", "--no-redis")
    code, _, err = cli_main(capsys, *base)
    try:
        assert code == 0, err
        code, out, err = cli_main(capsys, *base, "--pgbouncer")  # running without it: says so
        assert code == 2 and out == ""
        assert one_line(err).startswith("labs: --pgbouncer: ")
        with pytest.raises(ServiceError, match=r"services up --pgbouncer"):
            with services_for(pgbouncer=True):
                pass
    finally:
        assert cli_main(capsys, "services", "down")[0] == 0

    up = labs(*base, "--pgbouncer", "--json")
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        assert [s["role"] for s in doc["servers"]] == ["primary", "pgbouncer"] and doc["ok"]
        dirs = [s["dir"] for s in doc["servers"]]
        dsn = doc["servers"][1]["dsn"]
        state = json.loads((isolated / "services.json").read_text())
        assert state["pgbouncer"]["settings"]["pool_mode"] == "session"  # PgBouncer's default

        code, out, err = cli_main(capsys, "services", "status", "--json")
        assert code == 0 and json.loads(out)["ok"], err
        with services_for_scenario(scenario) as svc:  # a run finds it, and gives it [pgbouncer]
            assert svc.source == "services-up" and svc.pgbouncer == dsn
            configure(scenario, svc)
            bouncer = svc.topology.endpoint(pgb_mod.PGBOUNCER)
            config = admin.show_config(bouncer.admin_dsn)
            assert config["pool_mode"].value == "transaction"
            assert config["default_pool_size"].value == "7"
            assert pgb_query(svc.pgbouncer, "SELECT 41 + 1") == 42

        # PgBouncer dies: status says so in one line, exit 2; down still cleans up
        pid = state["pgbouncer"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not processes_in(dirs[1]), 5, "pgbouncer gone")
        status = labs("services", "status")
        assert status.returncode == 2
        line = one_line(status.stderr)
        assert line.startswith("labs: pgbouncer: ") and "not running" in line
    finally:
        down = labs("services", "down", "--json")
    assert down.returncode == 0, down.stderr
    assert len(json.loads(down.stdout)["stopped"]) == 2
    assert_nothing_left(dirs)


# ---------------------------------------------------------------------------
# LABS_PGBOUNCER: a PgBouncer of your own
# ---------------------------------------------------------------------------


@pytest.mark.live
@live
@pytest.mark.timeout(60)
def test_labs_pgbouncer_route_and_bad_values(monkeypatch, scenario, capsys):
    primary = start_primary(20)
    # in front of a primary given by its DSN, as for LABS_PG_PRIMARY
    bouncer = start_pgbouncer(primary.dsn, PgBouncerConfig(pool_mode="transaction"))
    try:
        env = {"LABS_PG_PRIMARY": primary.dsn, "LABS_PGBOUNCER": bouncer.dsn}
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        with services_for(pgbouncer=True) as svc:
            assert svc.source == "env" and svc.cluster is None
            assert svc.pgbouncer == bouncer.dsn and svc.primary == primary.dsn
            assert pgb_query(svc.pgbouncer, "SELECT inet_server_port()") == primary.port
            # the run's role may not SET: a note, and the PgBouncer keeps its settings
            note = configure(scenario, svc)
            assert note is not None and "admin access needed" in note
        assert admin.show_config(bouncer.admin_dsn)["default_pool_size"].value == "20"
        # an admin user in LABS_PGBOUNCER: the scenario's settings are applied
        monkeypatch.setenv("LABS_PGBOUNCER", bouncer.dsn.replace("//labs@", "//postgres@"))
        with services_for_scenario(scenario) as svc:
            note = configure(scenario, svc) or ""
            assert "pgbouncer" not in note.lower()
        assert admin.show_config(bouncer.admin_dsn)["default_pool_size"].value == "7"
        monkeypatch.setenv("LABS_PGBOUNCER", bouncer.dsn)
        code, out, err = cli_main(capsys, "services", "status", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["route"] == "env" and [s["role"] for s in doc["servers"]] == [
            "primary", "pgbouncer"]

        # no LABS_PGBOUNCER with a [pgbouncer]: named, in one line
        with pytest.raises(ServiceError) as err:
            from_env(env={"LABS_PG_PRIMARY": primary.dsn}, pgbouncer=True)
        assert str(err.value).startswith("LABS_PGBOUNCER: the scenario has a [pgbouncer]")

        # bad values: one line on stderr, exit 2, the fix named, no password
        port = closed_port()
        cases = [
            (f"postgresql://labs:secret@127.0.0.1:{port}/labs",
             f"start PgBouncer on 127.0.0.1:{port}"),
            (primary.dsn, "not at Postgres itself"),  # Postgres, not PgBouncer
            ("redis://127.0.0.1:6379/0", "must be a PgBouncer connection string"),
        ]
        for i, (value, fix) in enumerate(cases):
            monkeypatch.setenv("LABS_PGBOUNCER", value)
            if i == 0:  # the real command line once, the same function in-process after
                run = labs("services", "status", env={**env, "LABS_PGBOUNCER": value})
                code, out, err = run.returncode, run.stdout, run.stderr
            else:
                code, out, err = cli_main(capsys, "services", "status")
            assert code == 2
            line = one_line(err)
            assert line.startswith("labs: LABS_PGBOUNCER: ") and fix in line, line
            assert "secret" not in line and "secret" not in out
            with pytest.raises(ServiceError, match="^LABS_PGBOUNCER: ") as err:
                with services_for(pgbouncer=True):
                    pass
            assert "\n" not in str(err.value)

        # PgBouncer down: the same one line
        bouncer.stop()
        out = labs("services", "status", env=env)
        assert out.returncode == 2
        line = one_line(out.stderr)
        assert f"LABS_PGBOUNCER: 127.0.0.1:{bouncer.port} must answer as PgBouncer" in line
        assert "start PgBouncer on" in line
    finally:
        bouncer.stop()
        primary.stop()
    assert_nothing_left([str(bouncer.dir), str(primary.dir)])


# ---------------------------------------------------------------------------
# Clean-up after signals and failed starts; the program not being there
# ---------------------------------------------------------------------------

CHILD = """
import json, time
from labs.services import services_for
with services_for(pgbouncer=True) as svc:
    print(json.dumps([str(m.server.dir) for m in svc.cluster.members]), flush=True)
    time.sleep(60)
"""


@pytest.mark.live
@live
@pytest.mark.timeout(60)
def test_cleanup_on_sigterm():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        dirs = json.loads(line)
        assert len(dirs) == 2 and processes_in(dirs[1])  # PgBouncer runs
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert_nothing_left(dirs)


@pytest.mark.live
@live
@pytest.mark.timeout(30)
def test_failed_starts_are_one_line_and_leave_nothing(monkeypatch):
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("labs-pgbouncer-*"))
    upstream = "postgresql://labs@127.0.0.1:1/labs"  # not connected to at start
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ServiceError) as err:
            start_pgbouncer(upstream, port=port)
        assert f"127.0.0.1:{port}" in str(err.value) and "in use" in str(err.value)
    with pytest.raises(ServiceError) as err:  # a program that exits at once
        start_pgbouncer(upstream, binary="/bin/false")
    assert "did not start" in str(err.value) and "\n" not in str(err.value)
    after = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("labs-pgbouncer-*"))
    assert not (after - before)


def test_missing_pgbouncer_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LABS_PGBOUNCER_BIN", raising=False)
    monkeypatch.setattr(pgb_mod, "DEBIAN_BINARY", tmp_path / "nothing")
    with pytest.raises(ServiceError, match=r"apt-get install pgbouncer,"):
        pgb_mod.find_pgbouncer()
    assert "apt-get install pgbouncer," in missing_binaries(
        postgres=False, redis=False, pgbouncer=True)
    # optional: only searched when asked for, so the other live tests still run
    assert missing_binaries(postgres=False, redis=False) is None
    monkeypatch.setenv("LABS_PGBOUNCER_BIN", str(tmp_path / "pgbouncer"))
    with pytest.raises(ServiceError, match=r"^LABS_PGBOUNCER_BIN: must name an executable"):
        pgb_mod.find_pgbouncer()


def test_settings_are_written_as_pgbouncer_reads_them():
    cfg = PgBouncerConfig(reserve_pool_timeout=0.25, query_wait_timeout=0.0,
                          server_lifetime=1.0 / 3.0, server_round_robin=True)
    settings = pgb_mod.ini_settings(cfg)
    assert list(settings) == list(pgb_mod.SETTINGS) and len(settings) == 12
    assert settings["reserve_pool_timeout"] == "0.25" and settings["query_wait_timeout"] == "0"
    assert settings["server_lifetime"] == "0.333333"  # PgBouncer keeps microseconds
    assert settings["server_round_robin"] == "1" and settings["server_idle_timeout"] == "600"
    assert pgb_mod.wanted_config({"pgbouncer": False}) is None
    assert pgb_mod.wanted_config({"pgbouncer": True}) == PgBouncerConfig()
    with pytest.raises(ServiceError, match="^pgbouncer: must be true, false or a"):
        with services_for(pgbouncer="yes"):
            pass
    with pytest.raises(admin.ConsoleError, match="without quotes"):
        admin.Console(conn=None).set("pool_mode", "x'; SHUTDOWN; --")
