"""PgBouncer's faults in a run: counted as errors, named in one line, nothing left running.

``labs.diagnose`` turns a run's commonest messages into one line; the unit
tests feed it the messages the real servers print (quoted from a live run
here), the live ones run ``python -m labs run`` as a subprocess:

* PgBouncer refusing clients past ``max_client_conn`` (a throwaway PgBouncer
  with ``max_client_conn = 3`` in front of pools that want 15);
* PgBouncer killed in the middle of a run (one ``services up --pgbouncer``
  started); the next run says in one line that it is gone and runs on
  throwaway servers.  (A dead ``LABS_PGBOUNCER`` is refused in one line, exit
  2: ``tests/test_pgbouncer_service.py``.)

Each live command runs with ``TMPDIR`` and ``LABS_STATE_DIR`` of its own, so
"nothing left" means no process in those directories and an empty ``TMPDIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs import pgbouncer_admin as admin
from labs.diagnose import diagnose
from labs.services import missing_binaries
from simlib.scenario import load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
MISSING = missing_binaries(redis=False, pgbouncer=True)
live = pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}")

SCENARIO = """
name = "through-pgbouncer"
seed = 7

[workload]
kind = "open"
rate = 200.0
duration = {duration}
warmup = 0.5

[query]
service_time = {{ dist = "exponential", mean = 0.010 }}

[pool]
kind = "sqlalchemy"
pool_size = 10
max_overflow = 5
pool_timeout = 5.0

[pgbouncer]
pool_mode = "transaction"
default_pool_size = 4
max_client_conn = {max_client_conn}
"""

MAX_CLIENT_CONN = ('OperationalError: (psycopg2.OperationalError) connection to server at '
                   '"127.0.0.1", port 42147 failed: FATAL:  no more connections allowed '
                   '(max_client_conn)')
REFUSED = ('OperationalError: (psycopg2.OperationalError) connection to server at '
           '"127.0.0.1", port 32887 failed: Connection refused')


def scenario(max_client_conn: int = 100, duration: float = 3.0):
    text = SCENARIO.format(max_client_conn=max_client_conn, duration=duration)
    return parse_scenario(tomllib.loads(text))


def details(*messages: tuple[str, int]) -> dict[str, object]:
    return {"errors_top": [{"error": m, "count": c} for m, c in messages]}


# ---------------------------------------------------------------------------
# The line, from the messages the servers print
# ---------------------------------------------------------------------------


def test_no_line_for_a_run_without_failures() -> None:
    assert diagnose(scenario(), {"error_rate": 0.0, "timeout_rate": 0.0}, details()) is None
    # a stray error in thousands is not a fault
    assert diagnose(scenario(), {"error_rate": 0.0004}, details(("x", 1))) is None


def test_max_client_conn_is_named_with_its_setting() -> None:
    line = diagnose(scenario(3), {"error_rate": 0.42}, details((MAX_CLIENT_CONN, 268)))
    assert line is not None and "\n" not in line
    assert line.startswith("42.0% of requests failed: PgBouncer refused clients past "
                           "max_client_conn = 3")
    assert "raise pgbouncer.max_client_conn" in line


def test_pgbouncer_gone_is_told_from_postgres_by_its_port() -> None:
    line = diagnose(scenario(), {"error_rate": 0.55}, details((REFUSED, 448)), "32887")
    assert line is not None and "PgBouncer at port 32887 stopped answering" in line
    assert "services up --pgbouncer" in line
    # the same message from another port is not PgBouncer's
    other = diagnose(scenario(), {"error_rate": 0.55}, details((REFUSED, 448)), "6432")
    assert other is not None and "stopped answering" not in other
    assert "the commonest error (448 times)" in other


def test_too_many_clients_and_query_wait_timeout() -> None:
    s = scenario()
    line = diagnose(s, {"error_rate": 0.1},
                    details(("FATAL: sorry, too many clients already", 10)))
    assert line is not None and "Postgres behind PgBouncer refused connections past " \
        f"max_connections = {s.database.max_connections}" in line
    line = diagnose(s, {"error_rate": 0.1},
                    details(("ERROR: query_wait_timeout", 10)))
    assert line is not None and "query_wait_timeout = 120 s" in line


def test_the_pool_full_is_named_with_its_limit_and_wait() -> None:
    s = load_scenario(ROOT / "labs/suite/03-overload-timeouts.toml")
    line = diagnose(s, {"timeout_rate": 0.25}, details())
    limit, wait = s.pool.connection_limit(), s.pool.checkout_wait()
    assert line == (f"25.0% timed out: the pool was full (all {limit} connections in use) and "
                    f"they waited {wait:g} s in vain; make the pool larger (under "
                    "max_connections), the queries shorter, or the timeout longer")


# ---------------------------------------------------------------------------
# Live, through the command line
# ---------------------------------------------------------------------------


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory of the test's own that Postgres's unprivileged user can enter."""
    root = Path(tempfile.mkdtemp(prefix="dbperf-pgbouncer-faults-"))
    root.chmod(0o755)
    (root / "tmp").mkdir(mode=0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def world(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABS_")}
    env["TMPDIR"] = str(root / "tmp")
    env["LABS_STATE_DIR"] = str(root / "state")
    return env


def scenario_file(root: Path, max_client_conn: int, duration: float) -> Path:
    path = root / "s.toml"
    path.write_text(SCENARIO.format(max_client_conn=max_client_conn, duration=duration))
    return path


def labs(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def processes_in(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            found.append(int(proc.name))
    return found


def _transactions(dsn: str) -> int:
    """Transactions PgBouncer has counted for the run's database (0: none, or no answer)."""
    try:
        row = admin.stats_of(admin.show_stats(dsn), "labs")
    except Exception:  # not listening yet
        return 0
    return 0 if row is None else row.total_xact_count


def assert_nothing_left(tmp_path: Path) -> None:
    deadline = time.monotonic() + 10
    while processes_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(tmp_path) == []
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.live
@live
@pytest.mark.timeout(120)
def test_max_client_conn_reached_is_counted_and_named(place: Path) -> None:
    tmp_path = place
    env, path = world(tmp_path), scenario_file(tmp_path, max_client_conn=3, duration=3.0)
    run = labs(env, "run", str(path), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    # PgBouncer lets in 3 clients (labs' console probe is one of them): the pools
    # that want more fail those requests, counted as errors, not a crash.
    assert doc["metrics"]["error_rate"]["value"] > 0.1
    assert doc["metrics"]["throughput_rps"]["value"] > 20
    top = doc["details"]["errors_top"][0]["error"]
    assert "no more connections allowed (max_client_conn)" in top
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("labs: through-pgbouncer: ")
    assert "PgBouncer refused clients past max_client_conn = 3" in lines[0]
    assert_nothing_left(tmp_path)


@pytest.mark.live
@live
@pytest.mark.timeout(180)
def test_pgbouncer_killed_mid_run_is_counted_and_named(place: Path) -> None:
    tmp_path = place
    env, path = world(tmp_path), scenario_file(tmp_path, max_client_conn=100, duration=4.0)
    up = labs(env, "services", "up", "--replicas", "0", "--no-redis", "--pgbouncer", "--json")
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((tmp_path / "state" / "services.json").read_text())
        pid = state["pgbouncer"]["pid"]
        run = subprocess.Popen([sys.executable, "-m", "labs", "run", str(path), "--json"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # kill PgBouncer about half-way through the window (0.5 s warm-up + 4 s),
        # counted from when the run's first transactions reach it
        deadline = time.monotonic() + 60
        while not _transactions(state["pgbouncer"]["dsn"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.5)
        os.kill(pid, signal.SIGKILL)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        doc = json.loads(out)
        errors = doc["metrics"]["error_rate"]["value"]
        assert 0.1 < errors < 0.95  # served before the kill, failed after
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "stopped answering during the run" in lines[0]
        # the next run sees the dead PgBouncer in the services' state, says so in
        # one line and runs on throwaway servers instead (the contract's order)
        again = labs(env, "run", str(path), "--json")
        assert again.returncode == 0, again.stderr
        line = again.stderr.strip()
        assert "\n" not in line and line.startswith("labs: ")
        assert f"pgbouncer: process {pid} is not running" in line
        assert json.loads(again.stdout)["metrics"]["error_rate"]["value"] == 0
    finally:
        down = labs(env, "services", "down")
    assert down.returncode == 0, down.stderr
    assert_nothing_left(tmp_path)
