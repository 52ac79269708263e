"""labs.services: finding, starting and always stopping Postgres and Redis.

Live tests start real throwaway servers on loopback (about 1.5 s for a primary,
a replica and Redis) and check that nothing is left afterwards: no process
whose working directory or command line is inside the servers' temp
directories, and no directories.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labs import cli
from labs.services import (
    ServiceError,
    from_env,
    missing_binaries,
    processes_in,
    services_for,
    start_primary,
    start_redis,
)
from labs.services import postgres as pg_mod
from labs.services.common import checked_dir
from labs.services.discovery import LocalCluster, redact
from labs.services.redis import find_redis_server

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"
LABS_VARS = ("LABS_PG_PRIMARY", "LABS_PG_REPLICAS", "LABS_REDIS")


MISSING = missing_binaries()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No LABS_* services from the machine; a private state directory."""
    for var in LABS_VARS:
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("LABS_STATE_DIR", str(state))
    return state


def dirs_of(svc) -> list[str]:
    c = svc.cluster
    servers = [c.primary, *c.replicas] + ([c.redis] if c.redis else [])
    return [str(s.dir) for s in servers]


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


def labs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labs", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def system_services_answer() -> bool:
    try:
        from labs.services.discovery import postgres_problem, redis_problem

        return (
            postgres_problem("postgresql://postgres@127.0.0.1:5432/postgres") is None
            and redis_problem("redis://127.0.0.1:6379/0") is None
        )
    except Exception:
        return False


# ---------------------------------------------------------------------------
# Throwaway servers
# ---------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(60)
def test_throwaway_primary_counts_statements_in_pg_stat_statements():
    # lesson 11 profiles on the server: the library is preloaded where it is installed
    import psycopg2

    with services_for(max_connections=5) as svc:
        admin = psycopg2.connect(svc.primary_admin, connect_timeout=3)
        admin.autocommit = True
        try:
            with admin.cursor() as a:
                a.execute("SHOW shared_preload_libraries")
                assert a.fetchone() == ("pg_stat_statements",)
                a.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                a.execute("SELECT pg_stat_statements_reset()")
            app = psycopg2.connect(svc.primary, connect_timeout=3)
            try:
                with app.cursor() as c:
                    for k in range(7):
                        c.execute("SELECT %s + 1", (k,))
            finally:
                app.close()
            with admin.cursor() as a:
                a.execute("SELECT calls FROM pg_stat_statements WHERE query = 'SELECT $1 + $2'")
                assert a.fetchone() == (7,)
        finally:
            admin.close()


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(60)
def test_throwaway_primary_replica_redis_answer_and_vanish():
    import psycopg2
    import redis

    with services_for(replicas=1, redis=True, max_connections=20) as svc:
        dirs = dirs_of(svc)
        assert svc.source == "throwaway" and svc.can_configure
        assert len(svc.replicas) == 1 and svc.redis.startswith("redis://127.0.0.1:")
        assert svc.max_connections() == 20
        for dsn in (svc.primary, *svc.replicas):
            assert dsn.startswith("postgresql://labs@127.0.0.1:") and dsn.endswith("/labs")
        assert svc.primary_admin.startswith("postgresql://postgres@127.0.0.1:")

        primary = psycopg2.connect(svc.primary, connect_timeout=3)
        replica = psycopg2.connect(svc.replicas[0], connect_timeout=3)
        primary.autocommit = replica.autocommit = True
        try:
            with primary.cursor() as p, replica.cursor() as r:
                p.execute("SELECT pg_is_in_recovery(), current_setting('listen_addresses')")
                assert p.fetchone() == (False, "127.0.0.1")
                r.execute("SELECT pg_is_in_recovery()")
                assert r.fetchone() == (True,)
                sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                assert pg_mod.query_one(svc.primary_admin, sql) == 1  # needs a superuser
                p.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
                p.execute("INSERT INTO t VALUES (1, 'from the primary')")
                deadline = time.monotonic() + 5
                row = None
                while row is None and time.monotonic() < deadline:
                    try:
                        r.execute("SELECT v FROM t WHERE k = 1")
                        row = r.fetchone()
                    except psycopg2.errors.UndefinedTable:
                        pass
                    if row is None:
                        time.sleep(0.02)
                assert row == ("from the primary",)
        finally:
            primary.close()
            replica.close()

        client = redis.Redis.from_url(svc.redis, socket_timeout=3)
        assert client.ping()
        client.set("k", "v", ex=10)
        assert client.get("k") == b"v"
        assert client.config_get("save")["save"] == ""
        client.close()

        # With labs' monitor connected (a superuser session, as during a run) the
        # run's role gets exactly max_connections; the admin DSN still gets in.
        monitor = psycopg2.connect(svc.primary_admin, connect_timeout=3)
        conns = [monitor] + [psycopg2.connect(svc.primary, connect_timeout=3)
                             for _ in range(20)]
        try:
            with pytest.raises(psycopg2.OperationalError, match="reserved|too many"):
                psycopg2.connect(svc.primary, connect_timeout=3)
            psycopg2.connect(svc.primary_admin, connect_timeout=3).close()
        finally:
            for c in conns:
                c.close()

        # the executor may change the limit between runs: replicas follow, keep streaming
        svc.set_max_connections(30)
        assert svc.max_connections() == 30
        assert pg_mod.connection_limit(svc.replicas[0]) == 30
        svc.set_replica_delay(0.2)
        assert svc.replica_delay() == pytest.approx(0.2)
        ports = [port_of(d) for d in (svc.primary, *svc.replicas, svc.redis)]
    assert_nothing_left(dirs)
    for port in ports:  # nobody listens any more
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(60)
def test_cleanup_after_an_exception_in_the_block():
    dirs: list[str] = []
    with pytest.raises(ZeroDivisionError):
        with services_for(redis=True) as svc:
            dirs = dirs_of(svc)
            1 / 0  # noqa: B018
    assert_nothing_left(dirs)


CHILD = """
import json, sys, time
from labs.services import services_for
with services_for(replicas={replicas}, redis=True) as svc:
    c = svc.cluster
    dirs = [str(s.dir) for s in [c.primary, *c.replicas, c.redis]]
    print(json.dumps(dirs), flush=True)
    time.sleep(60)
"""


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "signum,replicas", [(signal.SIGINT, 1), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"]
)
def test_cleanup_on_signal(signum, replicas):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(replicas=replicas)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        dirs = json.loads(line)
        assert all(processes_in(d) for d in dirs[:1])  # the primary runs
        child.send_signal(signum)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert_nothing_left(dirs)


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(30)
def test_port_in_use_is_one_line_and_leaves_nothing():
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("labs-*"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for start in (lambda: start_primary(port=port), lambda: start_redis(port=port)):
            with pytest.raises(ServiceError) as err:
                start()
            message = str(err.value)
            assert "\n" not in message
            assert f"127.0.0.1:{port}" in message and "in use" in message
    after = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("labs-*"))
    assert not (after - before)


# ---------------------------------------------------------------------------
# `python -m labs services up|status|down`
# ---------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")
@pytest.mark.timeout(90)
def test_services_up_status_down_round_trip(isolated):
    up = labs("services", "up", "--json")
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        assert doc["route"] == "services-up" and doc["ok"] and not doc["already_running"]
        roles = [s["role"] for s in doc["servers"]]
        assert roles == ["primary", "replica", "redis"]
        dirs = [s["dir"] for s in doc["servers"]]
        state_file = isolated / "services.json"
        assert state_file.exists()

        # the servers outlived the command; status and a run find them
        status = labs("services", "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["ok"]
        with services_for(replicas=1, redis=True, max_connections=7) as svc:
            assert svc.source == "services-up" and not svc.can_configure
            assert svc.primary == doc["servers"][0]["dsn"]
            assert svc.max_connections() == 100  # not reconfigured per run
            with pytest.raises(ServiceError, match="throwaway"):
                svc.set_max_connections(7)
        with pytest.raises(ServiceError, match="--replicas 2"):
            with services_for(replicas=2):
                pass

        again = labs("services", "up")
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = labs("services", "down", "--json")
    assert down.returncode == 0, down.stderr
    assert len(json.loads(down.stdout)["stopped"]) == 3
    assert not state_file.exists()
    assert_nothing_left(dirs)
    status = labs("services", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["route"] == "throwaway"


def test_services_down_with_nothing_up():
    out = labs("services", "down")
    assert out.returncode == 0 and "nothing to stop" in out.stdout


def test_stale_state_is_ignored_with_a_warning(isolated, caplog):
    from labs.services.discovery import from_state

    isolated.mkdir(parents=True)
    (isolated / "services.json").write_text(
        json.dumps({"version": 1, "replicas": [], "primary": {
            "pid": 999999999, "dsn": "postgresql://labs@127.0.0.1:1/labs",
            "dir": "/tmp/labs-pg-gone", "port": 1, "bindir": "/usr/lib/postgresql/15/bin"}})
    )
    with caplog.at_level("WARNING", logger="labs.services"):
        assert from_state() is None
    assert "not running" in caplog.text


def test_state_file_cannot_point_stop_elsewhere():
    for bad in ("/", "/tmp", "relative/labs-pg-x", "/home/someone"):
        with pytest.raises(ServiceError, match="state file"):
            checked_dir(bad, "labs-pg-")
    assert checked_dir("/tmp/labs-pg-abc", "labs-pg-") == Path("/tmp/labs-pg-abc")
    with pytest.raises(ServiceError):
        LocalCluster.from_state({"primary": {"bindir": "/x", "dir": "/", "port": 1}})


# ---------------------------------------------------------------------------
# Connection strings from the environment
# ---------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.timeout(30)
@pytest.mark.skipif(
    not system_services_answer(),
    reason="no Postgres (postgres@127.0.0.1:5432) and Redis (127.0.0.1:6379) on this machine",
)
def test_env_route_uses_the_given_servers(monkeypatch):
    monkeypatch.setenv("LABS_PG_PRIMARY", "postgresql://postgres@127.0.0.1:5432/postgres")
    monkeypatch.setenv("LABS_REDIS", "redis://127.0.0.1:6379/0")
    with services_for(redis=True, max_connections=5) as svc:
        assert svc.source == "env" and not svc.can_configure and svc.cluster is None
        assert svc.primary.endswith(":5432/postgres") and svc.redis.endswith(":6379/0")
        assert svc.max_connections() >= 1  # whatever the server has; 5 is not applied
    # a primary is not a replica
    monkeypatch.setenv("LABS_PG_REPLICAS", "postgresql://postgres@127.0.0.1:5432/postgres")
    with pytest.raises(ServiceError, match="LABS_PG_REPLICAS: 127.0.0.1:5432 .*not a standby"):
        with services_for(replicas=1):
            pass
    status = labs("services", "status", "--json")
    assert status.returncode == 2  # the replica variable names a primary
    assert json.loads(status.stdout)["route"] == "env"


def test_bad_env_dsn_is_one_line_exit_2(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LABS_PG_PRIMARY", f"postgresql://postgres:secret@127.0.0.1:{port}/x")
    for args in (["services", "status"], ["run", str(DEMO)]):
        out = labs(*args)
        assert out.returncode == 2
        line = one_line(out.stderr)
        assert line.startswith("labs: LABS_PG_PRIMARY: ")
        assert f"127.0.0.1:{port}" in line and "secret" not in line
    assert "secret" not in labs("services", "status").stdout


@pytest.mark.parametrize(
    "env,kw,field",
    [
        ({"LABS_REDIS": "redis://127.0.0.1:1/0"}, {}, "LABS_PG_PRIMARY"),
        ({"LABS_PG_PRIMARY": "postgresql://p@127.0.0.1:1/p"}, {"replicas": 1}, "LABS_PG_REPLICAS"),
        ({"LABS_PG_PRIMARY": "postgresql://p@127.0.0.1:1/p"}, {"redis": True}, "LABS_REDIS"),
    ],
)
def test_incomplete_env_names_the_variable(env, kw, field):
    with pytest.raises(ServiceError) as err:
        from_env(env=env, **kw)
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


def test_redact():
    assert redact("postgresql://u:pw@h:1/d") == "postgresql://u:***@h:1/d"
    assert redact("host=h password=pw dbname=d") == "host=h password=*** dbname=d"
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"


# ---------------------------------------------------------------------------
# Missing binaries, bad arguments, the executor not being there
# ---------------------------------------------------------------------------


def test_missing_binaries_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LABS_PG_BINDIR", raising=False)
    monkeypatch.delenv("LABS_REDIS_SERVER", raising=False)
    monkeypatch.setattr(pg_mod, "DEBIAN_ROOT", tmp_path / "nothing")
    for find, package in ((pg_mod.find_bindir, "postgresql"), (find_redis_server, "redis-server")):
        with pytest.raises(ServiceError) as err:
            find()
        assert f"apt-get install {package}," in str(err.value)  # the one package needed
    # the same search, as one answer (what live tests skip with)
    assert "apt-get install redis-server," in missing_binaries(postgres=False)
    assert "apt-get install postgresql," in missing_binaries(redis=False)
    assert missing_binaries(postgres=False, redis=False) is None


@pytest.mark.parametrize(
    "args,start",
    [
        (["services", "up", "--replicas", "-1"], "labs: --replicas: must be an integer >= 0"),
        (["services", "up", "--max-connections", "0"], "labs: --max-connections: must be"),
        (["services", "restart"], "labs: argument action: invalid choice"),
        (["services"], "labs: the following arguments are required: action"),
        (["launch"], "labs: argument command: invalid choice"),
    ],
)
def test_bad_arguments_one_line_exit_2(args, start, capsys):
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(start)
    assert captured.out == ""


# ---------------------------------------------------------------------------
# compose.yaml (no Docker engine here: check its shape)
# ---------------------------------------------------------------------------


def test_compose_file_parses_and_matches_the_env_vars():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "compose.yaml").read_text()
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert set(services) == {"pg-primary", "pg-replica", "redis"}
    for svc in services.values():
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
    primary = " ".join(services["pg-primary"]["command"])
    assert "wal_level=replica" in primary and "max_wal_senders" in primary
    assert "host replication all samenet trust" in primary
    replica = " ".join(services["pg-replica"]["command"])
    assert "pg_basebackup" in replica and " -R " in replica
    assert services["redis"]["image"].startswith("redis:7")
    assert '"--save", ""' in text or "--save" in services["redis"]["command"]
    for var, port in [("LABS_PG_PRIMARY", 55432), ("LABS_PG_REPLICAS", 55433),
                      ("LABS_REDIS", 56379)]:
        assert f"{var}=" in text and f"127.0.0.1:{port}" in text
