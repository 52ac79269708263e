"""Faults through the real command line: one clear line, exit 2, nothing left behind.

Every test runs ``python -m labs ...`` as a subprocess and checks what the
issue asks of bad input and faults -- an unreachable server, a wrong
connection string, missing programs, a server that does not start:

* exit status 2 and exactly one line on stderr, starting ``labs: ``, naming
  what is wrong and saying how to fix it; no traceback, no password;
* nothing on stdout when ``--json`` was asked for and the command failed
  (``services status --json`` excepted: its document is the answer), and no
  ``--out`` file: no partial results;
* nothing left running and no temporary directories.  Each command runs in a
  world of its own: ``TMPDIR`` is a fresh directory, so every directory labs
  makes lands there and "no leftovers" means it is empty afterwards;
  ``LABS_STATE_DIR`` is another; and a marker variable is put in its
  environment.  A leftover process is one whose working directory or command
  line is inside the world, or that still carries the marker (Postgres and
  Redis rewrite their process titles, which can hide the environment; the
  working directory cannot hide).  Processes of other sessions on the machine
  are none of these, so the check holds while others run servers too.

Live tests (marked ``live``) start one throwaway Postgres and one Redis for the
module, to have a real server with the wrong database, the wrong user, or the
other protocol on its port.  Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labs.services import (
    find_bindir,
    missing_binaries,
    start_primary,
    start_redis,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["scenarios/demo.toml", "--set", "workload.duration=0.5", "--set", "workload.warmup=0.1"]
CACHE = ["--set", "cache.ttl=60"]  # the scenario needs Redis
ALL_LABS_VARS = ("LABS_PG_PRIMARY", "LABS_PG_REPLICAS", "LABS_REDIS", "LABS_PG_BINDIR",
                 "LABS_REDIS_SERVER", "LABS_STATE_DIR")
# the clause after the last ";" says what to do about it
FIX = re.compile(r"; .*\b(correct|start|install|point|unset|export|set|stop)\b")


PG_MISSING = missing_binaries(redis=False)
REDIS_MISSING = missing_binaries(postgres=False)
needs_postgres = pytest.mark.skipif(PG_MISSING is not None, reason=f"{PG_MISSING}")
needs_redis = pytest.mark.skipif(REDIS_MISSING is not None, reason=f"{REDIS_MISSING}")


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# An isolated world per test
# ---------------------------------------------------------------------------


@dataclass
class World:
    root: Path  # everything of this test; world-traversable (Postgres runs as another user)
    tmp: Path  # TMPDIR of the command
    state: Path  # LABS_STATE_DIR of the command
    bin: Path  # fake programs
    mark: str  # a variable=value in the command's environment

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ALL_LABS_VARS}
        name, value = self.mark.split("=")
        env.update(TMPDIR=str(self.tmp), LABS_STATE_DIR=str(self.state), **{name: value})
        env.update(extra)
        return env

    def leftovers(self) -> list[str]:
        """Processes of this world still running: in its directories or carrying the mark."""
        root = os.path.realpath(self.root)
        mark = self.mark.encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue  # gone meanwhile
            if state == "Z":
                continue
            if (cwd == root or cwd.startswith(root + "/") or root.encode() in cmdline
                    or mark in environ.split(b"\0")):
                found.append(entry + " " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
        return found

    def assert_clean(self, state_file: bool = False) -> None:
        deadline = time.monotonic() + 3
        while (procs := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not procs, f"left running: {procs}"
        assert not list(self.tmp.iterdir()), f"temp dirs left: {list(self.tmp.iterdir())}"
        assert (self.state / "services.json").exists() == state_file


@pytest.fixture
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="dbperf-faults-"))
    root.chmod(0o755)
    w = World(root, root / "tmp", root / "state", root / "bin",
              f"DBPERF_FAULT_TEST={uuid.uuid4().hex}")
    for d in (w.tmp, w.state, w.bin):
        d.mkdir(mode=0o755)
    try:
        yield w
    finally:
        shutil.rmtree(root, ignore_errors=True)


def labs(world: World, *args: str, env: dict[str, str] | None = None,
         argv: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m labs ARGS`` in ``world``, with LABS_* from ``env`` only."""
    return subprocess.run(
        argv or [sys.executable, "-m", "labs", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
        env=world.env(**(env or {})),
    )


def assert_fault(out: subprocess.CompletedProcess, start: str, *mentions: str,
                 fix: bool = True, stdout: str | None = "") -> str:
    """Exit 2, one stderr line ``labs: START...`` naming ``mentions``; returns the line."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith(f"labs: {start}"), line
    for m in mentions:
        assert m in line, (m, line)
    if fix:
        assert FIX.search(line), f"says no fix: {line}"
    if stdout is not None:
        assert out.stdout == stdout
    return line


# ---------------------------------------------------------------------------
# Unreachable servers, wrong connection strings (no server needed)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["run", *DEMO, "--json"],
    ["compare", *DEMO, "--json"],
    ["run", *DEMO],
])
def test_unreachable_primary(world, command):
    port = closed_port()
    dsn = f"postgresql://labs:s3cret@127.0.0.1:{port}/labs"
    out = labs(world, *command, env={"LABS_PG_PRIMARY": dsn})
    line = assert_fault(out, "LABS_PG_PRIMARY: ", f"127.0.0.1:{port}", "refused",
                        f"start Postgres on 127.0.0.1:{port}")
    assert "s3cret" not in line
    world.assert_clean()


def test_unreachable_primary_status_json(world):
    port = closed_port()
    dsn = f"postgresql://labs:s3cret@127.0.0.1:{port}/labs"
    out = labs(world, "services", "status", "--json", env={"LABS_PG_PRIMARY": dsn})
    assert_fault(out, "LABS_PG_PRIMARY: ", f"127.0.0.1:{port}", "refused", stdout=None)
    doc = json.loads(out.stdout)  # the status document is the answer, even when it is "no"
    assert doc["route"] == "env" and doc["ok"] is False
    assert doc["servers"][0]["answers"] is False
    assert "s3cret" not in out.stdout + out.stderr
    world.assert_clean()


@pytest.mark.parametrize("dsn,mentions", [
    ("postgresql://labs:s3cret@[::1", ["Postgres connection string", "IPv6"]),
    ("not a connection string", ["Postgres connection string", 'missing "="']),
    ("mysql://root@127.0.0.1:3306/labs", ["scheme mysql:// is not postgresql://"]),
    ("redis://127.0.0.1:6379/0", ["scheme redis:// is not postgresql://"]),  # swapped
    ("postgresql://labs@127.0.0.1:99999/labs", ["port must be 1..65535, got 99999"]),
    ("host=127.0.0.1 port=five dbname=labs", ["port must be 1..65535, got five"]),
], ids=["malformed", "garbage", "mysql-scheme", "redis-url", "port-range", "port-word"])
def test_malformed_primary_dsn(world, dsn, mentions):
    # the form is checked before connecting: none of these touches the network
    for args in (["run", *DEMO, "--json"], ["services", "status"]):
        out = labs(world, *args, env={"LABS_PG_PRIMARY": dsn})
        line = assert_fault(out, "LABS_PG_PRIMARY: must be a Postgres connection string",
                            *mentions, "correct LABS_PG_PRIMARY", stdout=None)
        assert "s3cret" not in out.stdout + line
        assert args[0] == "services" or out.stdout == ""
    world.assert_clean()


@pytest.mark.parametrize("url,mentions", [
    ("http://u:s3cret@127.0.0.1:6379/0", ["scheme must be redis://", "got http://"]),
    ("redis://127.0.0.1:port/0", ["Redis URL", "Port could not be cast"]),
], ids=["http-scheme", "bad-port"])
def test_malformed_redis_url(world, url, mentions):
    out = labs(world, "services", "status", "--json",
               env={"LABS_PG_PRIMARY": f"postgresql://labs@127.0.0.1:{closed_port()}/labs",
                    "LABS_REDIS": url})
    assert out.returncode == 2 and json.loads(out.stdout)["ok"] is False
    problems = json.loads(out.stdout)["problems"]
    redis_line = [p for p in problems if p.startswith("LABS_REDIS: ")]
    assert redis_line and all(m in redis_line[0] for m in mentions), problems
    assert "s3cret" not in out.stdout + out.stderr
    world.assert_clean()


def test_redis_without_primary(world):
    out = labs(world, "run", *DEMO, "--json", env={"LABS_REDIS": "redis://127.0.0.1:1/0"})
    assert_fault(out, "LABS_PG_PRIMARY: must be set when LABS_REDIS is", "export")
    world.assert_clean()


def test_validate_writes_no_partial_result(world):
    from labs import cli

    if "validate" not in cli.build_parser().format_help():
        pytest.skip("no `labs validate` in this version")
    result = world.root / "validate.json"
    out = labs(world, "validate", "--quick", "--only", "light-load", "--json",
               "--out", str(result),
               env={"LABS_PG_PRIMARY": f"postgresql://labs@127.0.0.1:{closed_port()}/labs"})
    assert_fault(out, "", "refused")
    assert not result.exists() and not list(world.root.glob(".validate.json*"))
    world.assert_clean()


# ---------------------------------------------------------------------------
# Missing programs
# ---------------------------------------------------------------------------


def test_pg_bindir_without_postgres(world):
    out = labs(world, "run", *DEMO, "--json", env={"LABS_PG_BINDIR": str(world.bin)})
    assert_fault(out, "LABS_PG_BINDIR: must be a directory with initdb", str(world.bin),
                 "apt-get install postgresql")
    world.assert_clean()


def test_redis_server_override_missing(world):
    nothing = str(world.bin / "redis-server")
    out = labs(world, "services", "up", "--json", env={"LABS_REDIS_SERVER": nothing})
    assert_fault(out, "LABS_REDIS_SERVER: must name an executable redis-server", nothing,
                 "apt-get install redis-server")
    world.assert_clean()


@needs_postgres
def test_redis_server_not_on_path(world):
    # Postgres is found (LABS_PG_BINDIR), Redis is not: `services up` starts nothing
    out = labs(world, "services", "up", "--json",
               env={"PATH": str(world.bin), "LABS_PG_BINDIR": str(find_bindir())})
    assert_fault(out, "redis: redis-server not found on PATH", "apt-get install redis-server")
    world.assert_clean()


HARNESS = """
import sys
from pathlib import Path
import labs.services.postgres as postgres
postgres.DEBIAN_ROOT = Path(sys.argv[1])  # hide /usr/lib/postgresql/*/bin
from labs.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_postgres_not_installed(world):
    # PATH without initdb/pg_config and no /usr/lib/postgresql: as on a bare machine
    argv = [sys.executable, "-c", HARNESS, str(world.bin / "nothing"), "run", *DEMO, "--json"]
    out = labs(world, argv=argv, env={"PATH": str(world.bin)})
    assert_fault(out, "postgres: initdb not found", "apt-get install postgresql")
    world.assert_clean()


# ---------------------------------------------------------------------------
# A server that does not start: the half-started one is stopped and removed
# ---------------------------------------------------------------------------

FAKE_INITDB = """#!/bin/sh
# fake initdb: the data directory with a postgresql.conf, as labs expects
mkdir -p "$2" && echo "# fake" > "$2/postgresql.conf"
"""
FAKE_INITDB_FAILS = """#!/bin/sh
echo "initdb: error: could not create directory \\"$2\\": No space left on device" >&2
exit 1
"""
FAKE_PG_CTL = """#!/bin/sh
# fake pg_ctl: "start" leaves a stray process in the data directory and fails,
# as a server that dies half way through its start does
data=""; log=""; prev=""
for a in "$@"; do
  case "$prev" in -D) data="$a";; -l) log="$a";; esac
  prev="$a"
done
case " $* " in *" start "*)
  (cd "$data" && exec sleep 300) </dev/null >/dev/null 2>&1 &
  echo "FATAL:  could not create shared memory segment: No space left on device" >> "$log"
  echo "pg_ctl: could not start server" >&2
  exit 1;;
esac
"""


def fake_bindir(world: World, initdb: str) -> Path:
    fails = "#!/bin/sh\nexit 1\n"
    for name, text in [("initdb", initdb), ("pg_ctl", FAKE_PG_CTL),
                       ("postgres", fails), ("pg_basebackup", fails)]:
        path = world.bin / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return world.bin


def test_initdb_fails(world):
    out = labs(world, "run", *DEMO, "--json",
               env={"LABS_PG_BINDIR": str(fake_bindir(world, FAKE_INITDB_FAILS))})
    assert_fault(out, "postgres primary: initdb failed: ", "No space left on device", fix=False)
    world.assert_clean()


def test_postgres_dies_while_starting(world):
    out = labs(world, "run", *DEMO, "--json",
               env={"LABS_PG_BINDIR": str(fake_bindir(world, FAKE_INITDB))})
    assert_fault(out, "postgres primary on 127.0.0.1:", "did not start",
                 "could not create shared memory segment", fix=False)
    world.assert_clean()  # the stray process in the data directory was killed


@needs_redis
def test_services_up_stops_redis_when_postgres_fails(world):
    # Redis starts first (real), then the primary fails: Redis must go too
    out = labs(world, "services", "up", "--json",
               env={"LABS_PG_BINDIR": str(fake_bindir(world, FAKE_INITDB_FAILS))})
    assert_fault(out, "postgres primary: initdb failed: ", fix=False)
    world.assert_clean(state_file=False)


@pytest.mark.live
@needs_postgres
@pytest.mark.timeout(60)
def test_unwritable_state_dir(world):
    # `services up` starts a primary, cannot record it, and stops it again
    blocker = world.root / "a-file"
    blocker.write_text("")
    out = labs(world, "services", "up", "--replicas", "0", "--no-redis", "--json",
               env={"LABS_STATE_DIR": str(blocker / "state")})
    assert_fault(out, f"LABS_STATE_DIR: {blocker / 'state'} must be a writable directory",
                 "set LABS_STATE_DIR")
    world.assert_clean()


# ---------------------------------------------------------------------------
# Real servers, wrong details (live)
# ---------------------------------------------------------------------------


@dataclass
class Servers:
    pg_port: int
    redis_port: int


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    if PG_MISSING or REDIS_MISSING:
        pytest.skip(f"server binaries missing: {PG_MISSING or REDIS_MISSING}")
    primary = start_primary(max_connections=10)
    try:
        redis = start_redis()
        try:
            yield Servers(primary.port, redis.port)
        finally:
            redis.stop()
    finally:
        primary.stop()


@pytest.mark.live
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dsn,mentions", [
    ("postgresql://labs@127.0.0.1:{pg}/nosuchdb",
     ['database "nosuchdb" does not exist', "correct the user or database name"]),
    ("postgresql://nosuchuser@127.0.0.1:{pg}/labs",
     ['role "nosuchuser" does not exist', "correct the user or database name"]),
    ("postgresql://labs@127.0.0.1:{redis}/labs",  # Redis on that port: times out
     ["does not answer as Postgres", "point LABS_PG_PRIMARY at a Postgres server"]),
], ids=["wrong-database", "wrong-user", "redis-port"])
def test_wrong_primary_details(world, servers, dsn, mentions):
    dsn = dsn.format(pg=servers.pg_port, redis=servers.redis_port)
    out = labs(world, "run", *DEMO, "--json", env={"LABS_PG_PRIMARY": dsn})
    assert_fault(out, "LABS_PG_PRIMARY: 127.0.0.1:", *mentions)
    world.assert_clean()


@pytest.mark.live
@pytest.mark.timeout(60)
def test_redis_wrong_for_a_cache_scenario(world, servers):
    primary = f"postgresql://labs@127.0.0.1:{servers.pg_port}/labs"
    for url, mentions in [
        (f"redis://127.0.0.1:{closed_port()}/0", ["refused"]),
        (f"redis://127.0.0.1:{servers.pg_port}/0", ["does not answer as Redis"]),  # Postgres
    ]:
        env = {"LABS_PG_PRIMARY": primary, "LABS_REDIS": url}
        status = labs(world, "services", "status", env=env)
        assert_fault(status, "LABS_REDIS: 127.0.0.1:", *mentions, stdout=None)
        # `run` checks Redis only for a scenario with a [cache]; a version that
        # does not run [cache] yet may refuse the scenario instead -- one line either way
        run = labs(world, "run", *DEMO, *CACHE, "--json", env=env)
        line = assert_fault(run, "", fix=False)
        assert line.startswith(("labs: LABS_REDIS: ", "labs: cache: ")), line
        if line.startswith("labs: LABS_REDIS: "):
            assert all(m in line for m in mentions) and FIX.search(line)
    world.assert_clean()


@pytest.mark.live
@pytest.mark.timeout(60)
def test_primary_given_as_replica(world, servers):
    primary = f"postgresql://labs@127.0.0.1:{servers.pg_port}/labs"
    out = labs(world, "services", "status",
               env={"LABS_PG_PRIMARY": primary, "LABS_PG_REPLICAS": primary})
    assert_fault(out, f"LABS_PG_REPLICAS: 127.0.0.1:{servers.pg_port} must answer as a standby",
                 "not a standby", "point LABS_PG_REPLICAS at a streaming replica", stdout=None)
    world.assert_clean()


# ---------------------------------------------------------------------------
# Damaged state of `services up`
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [
    {"version": 1, "primary": {"pid": 1, "dsn": "postgresql://x@127.0.0.1:1/x"}},  # no dir
    {"version": 1, "primary": {"bindir": "/x", "dir": "/", "port": 1, "pid": 1,
                               "dsn": "postgresql://x@127.0.0.1:1/x"}},  # dir not ours
    {"version": 1, "primary": {"bindir": "/x", "dir": "/tmp/labs-pg-x", "port": "one",
                               "pid": 1, "dsn": "postgresql://x@127.0.0.1:1/x"}},
], ids=["missing-dir", "foreign-dir", "bad-port"])
def test_damaged_state_is_passed_over_and_down_deletes_it(world, doc):
    (world.state / "services.json").write_text(json.dumps(doc))
    status = labs(world, "services", "status", "--json")
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert json.loads(status.stdout)["route"] == "throwaway"
    assert "ignoring damaged" in status.stderr
    down = labs(world, "services", "down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] == []
    world.assert_clean(state_file=False)  # deleted, and nothing it named was touched
