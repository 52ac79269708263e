"""Throwaway Postgres servers: a primary from ``initdb`` and streaming replicas.

Each server gets its own temporary directory (``labs-pg-XXXX``) holding the data
directory, its log and its Unix socket, and listens on 127.0.0.1 only, on a free
port, with trust authentication for 127.0.0.1 and nothing else.  Durability is
switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): these
servers hold nothing worth keeping and start in about a second.

Postgres refuses to run as root.  As root, the servers run as the unprivileged
system user ``labs-postgres`` (created when missing), or ``postgres`` if that
cannot be created.

Roles and connection slots: the run connects as ``labs`` (not a superuser; owns
the database ``labs``) through ``dsn``; monitoring and set-up may use the
superuser ``postgres`` through ``admin_dsn``.  The server runs with
``max_connections = N + 3`` and ``superuser_reserved_connections = 3``, so the
run's role gets exactly the scenario's N slots and an admin connection never
takes one of them.  ``connection_limit(dsn)`` reports the slots a DSN's role has.

Everything labs sets lives in ``labs.conf`` in the data directory, included at
the end of ``postgresql.conf``; changing ``max_connections`` or the replica
delay rewrites that file and restarts or reloads the server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from labs.services.common import (
    INSTALL_HINT,
    ServiceError,
    check_port_free,
    checked_dir,
    free_port,
    last_meaningful_line,
    make_dir,
    one_line,
    pid_alive,
    reap,
    register,
    remove_dir,
    run,
    start_retrying_port,
    tail,
    unregister,
    wait_gone,
)

ROLE = "postgres"  # the superuser role initdb creates: admin_dsn
APP_ROLE = "labs"  # an ordinary role that owns DATABASE: dsn (what a run uses)
DATABASE = "labs"
RESERVED = 3  # superuser_reserved_connections: admin slots on top of max_connections
OS_USER = "labs-postgres"  # who runs the servers when we are root
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
START_TIMEOUT = 30
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <version>/bin per major


# ---------------------------------------------------------------------------
# Finding the binaries and the user
# ---------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path:
    """The directory with initdb, pg_ctl, postgres and pg_basebackup.

    Looked for in ``$LABS_PG_BINDIR``, next to ``initdb`` on PATH, in
    ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    if os.environ.get("LABS_PG_BINDIR"):
        candidates.append(Path(os.environ["LABS_PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    candidates += sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    best: tuple[Path, list[str]] | None = None
    for d in candidates:
        missing = [t for t in TOOLS if not os.access(d / t, os.X_OK)]
        if not missing:
            return d
        if best is None or len(missing) < len(best[1]):
            best = (d, missing)
    if best is None:
        raise ServiceError(
            "postgres: initdb not found (looked on PATH, in `pg_config --bindir` and "
            f"{DEBIAN_ROOT}/*/bin); {INSTALL_HINT}"
        )
    raise ServiceError(
        f"postgres: {', '.join(best[1])} missing in {best[0]}; {INSTALL_HINT}"
    )


def server_user() -> str | None:
    """The OS user to run Postgres as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("LABS_PG_USER")
    if wanted:
        try:
            pwd.getpwnam(wanted)
        except KeyError:
            raise ServiceError(
                f"LABS_PG_USER: must name an existing user, got {wanted!r}"
            ) from None
        return wanted
    for name in (OS_USER,):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    useradd = shutil.which("useradd")
    if useradd:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
                capture_output=True,
                timeout=30,
            )
        with contextlib.suppress(KeyError):
            pwd.getpwnam(OS_USER)
            return OS_USER
    with contextlib.suppress(KeyError):
        pwd.getpwnam("postgres")
        return "postgres"
    raise ServiceError(
        "postgres refuses to run as root: need an unprivileged user, got none "
        f"(could not create {OS_USER!r}); create one or set LABS_PG_USER"
    )


# ---------------------------------------------------------------------------
# One server
# ---------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """One local Postgres server (primary or standby) in its own temp directory."""

    bindir: Path
    user: str | None
    dir: Path  # temp directory: data/, postgres.log, the Unix socket
    port: int
    max_connections: int = 100
    standby: bool = False
    delay: float = 0.0  # recovery_min_apply_delay, seconds (standby only)
    name: str = "primary"

    # -- paths and addresses -------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def logfile(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def dsn(self) -> str:
        """For the run: role ``labs``, exactly ``max_connections`` slots."""
        return f"postgresql://{APP_ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """Superuser ``postgres``: monitoring and set-up, in the reserved slots."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, if it is running."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # -- state ---------------------------------------------------------------

    def to_state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "bindir": str(self.bindir),
            "user": self.user,
            "dir": str(self.dir),
            "port": self.port,
            "max_connections": self.max_connections,
            "standby": self.standby,
            "delay": self.delay,
            "pid": self.pid(),
            "dsn": self.dsn,
            "admin_dsn": self.admin_dsn,
        }

    @classmethod
    def from_state(cls, d: dict) -> PostgresServer:
        return cls(
            bindir=Path(d["bindir"]),
            user=d.get("user"),
            dir=checked_dir(d["dir"], "labs-pg-"),
            port=int(d["port"]),
            max_connections=int(d.get("max_connections", 100)),
            standby=bool(d.get("standby", False)),
            delay=float(d.get("delay", 0.0)),
            name=str(d.get("name", "primary")),
        )

    # -- configuration -------------------------------------------------------

    def _conf(self) -> str:
        lines = [
            "# written by labs (labs/services/postgres.py); rewritten on every change",
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.dir}'",
            # the run's role (not a superuser) gets exactly max_connections slots,
            # admin connections (superuser) use the reserved ones
            f"max_connections = {self.max_connections + RESERVED}",
            f"superuser_reserved_connections = {RESERVED}",
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "hot_standby = on",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "wal_retrieve_retry_interval = '100ms'",
            f"cluster_name = 'labs-{self.name}'",
            "logging_collector = off",
        ]
        if self.standby:
            lines.append(f"recovery_min_apply_delay = '{round(self.delay * 1000)}ms'")
        return "\n".join(lines) + "\n"

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o600)

    def write_conf(self) -> None:
        self._write(self.datadir / "labs.conf", self._conf())

    def _pg_ctl(self, *args: str, what: str, timeout: float = START_TIMEOUT + 10):
        return run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            user=self.user,
            timeout=timeout,
            what=what,
        )

    # -- life cycle ----------------------------------------------------------

    def initdb(self) -> None:
        run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                ROLE,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            user=self.user,
            timeout=120,
            what=f"postgres {self.name}: initdb",
        )
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\ninclude_if_exists = 'labs.conf'\n")
        self._write(
            self.datadir / "pg_hba.conf",
            "# written by labs: trust on loopback only; `all` does not cover replication\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n",
        )
        self.write_conf()

    def basebackup(self, primary: PostgresServer) -> None:
        run(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                ROLE,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            user=self.user,
            timeout=120,
            what=f"postgres {self.name}: pg_basebackup from 127.0.0.1:{primary.port}",
        )
        self.write_conf()  # own port, socket, cluster_name and delay

    def start(self) -> None:
        check_port_free(self.port, f"postgres {self.name}")
        try:
            self._pg_ctl(
                "-w", "-t", str(START_TIMEOUT), "-l", str(self.logfile), "start",
                what=f"postgres {self.name}: start",
            )
        except ServiceError as e:
            detail = last_meaningful_line(tail(self.logfile)) or str(e)
            raise ServiceError(
                f"postgres {self.name} on 127.0.0.1:{self.port} did not start: {detail} "
                f"(log: {self.logfile})"
            ) from None

    def create_app_role(self) -> None:
        conn = connect(self.admin_dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
                cur.execute(f"CREATE DATABASE {DATABASE} OWNER {APP_ROLE}")
        finally:
            conn.close()

    def restart(self) -> None:
        self.write_conf()
        self._pg_ctl("-m", "fast", "-w", "-t", str(START_TIMEOUT), "stop",
                     what=f"postgres {self.name}: stop")
        self.start()

    def reload(self) -> None:
        self.write_conf()
        self._pg_ctl("reload", what=f"postgres {self.name}: reload", timeout=20)

    def stop(self) -> None:
        """Stop the server at once (immediate mode), kill leftovers, delete the directory."""
        unregister(self)
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ServiceError):
                self._pg_ctl("-m", "immediate", "-w", "-t", "10", "stop",
                             what=f"postgres {self.name}: stop", timeout=15)
            wait_gone(pid, 2)
        reap(self.dir)
        remove_dir(self.dir)


def _new_server(bindir: Path, user: str | None, name: str, port: int | None, **kw):
    d = make_dir("labs-pg-", owner=user)
    server = PostgresServer(
        bindir=bindir, user=user, dir=d, port=port or free_port(), name=name, **kw
    )
    register(server, server.stop)
    return server


def start_primary(
    max_connections: int = 100, *, port: int | None = None, bindir: Path | None = None
) -> PostgresServer:
    """initdb + start a primary on ``port`` (default: a free one). Stop it with ``.stop()``."""
    check_max_connections(max_connections)
    if port is not None:
        check_port_free(port, "postgres primary")
    bindir = bindir or find_bindir()
    user = server_user()

    def start(server: PostgresServer) -> None:
        server.initdb()
        server.start()
        server.create_app_role()

    return start_retrying_port(
        lambda: _new_server(bindir, user, "primary", port, max_connections=max_connections),
        start,
        port,
    )


def start_replica(
    primary: PostgresServer,
    *,
    delay: float = 0.0,
    port: int | None = None,
    index: int = 1,
    wait: float = 30.0,
) -> PostgresServer:
    """pg_basebackup -R from ``primary``, start it, wait until it streams."""
    check_delay(delay)
    server = _new_server(
        primary.bindir,
        primary.user,
        f"replica{index}",
        port,
        max_connections=primary.max_connections,  # a standby needs >= the primary's
        standby=True,
        delay=delay,
    )
    try:
        server.basebackup(primary)
        server.start()
        wait_streaming(primary, server, wait)
        return server
    except BaseException:
        server.stop()
        raise


# ---------------------------------------------------------------------------
# Queries the services need
# ---------------------------------------------------------------------------


def connect(dsn: str, timeout: float = 3.0):
    import psycopg2

    return psycopg2.connect(dsn, connect_timeout=max(1, round(timeout)))


def query_one(dsn: str, sql: str, params: tuple = (), timeout: float = 3.0):
    conn = connect(dsn, timeout)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return None if row is None else row[0]
    finally:
        conn.close()


def server_max_connections(dsn: str) -> int:
    """The server's ``max_connections`` setting, as it is (any Postgres DSN)."""
    return int(query_one(dsn, "SHOW max_connections"))


def connection_limit(dsn: str) -> int:
    """How many connections the DSN's role can open: ``max_connections`` minus the
    superuser-reserved slots unless the role is a superuser.  For throwaway and
    ``services up`` servers and the run's DSN, that is the scenario's
    ``database.max_connections``.  (Per-role and per-database limits aside.)
    """
    return int(
        query_one(
            dsn,
            "SELECT current_setting('max_connections')::int - CASE WHEN "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN 0 "
            "ELSE current_setting('superuser_reserved_connections')::int END",
        )
    )


def replica_delay(dsn: str) -> float:
    """A standby's ``recovery_min_apply_delay`` in seconds."""
    ms = query_one(
        dsn, "SELECT setting::float FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
    )
    return float(ms or 0) / 1000.0


def wait_streaming(primary: PostgresServer, replica: PostgresServer, timeout: float) -> None:
    """Until the replica is in recovery and the primary shows it streaming."""
    deadline = time.monotonic() + timeout
    app = f"labs-{replica.name}"
    last = "not answering"
    while time.monotonic() < deadline:
        try:
            if not query_one(replica.admin_dsn, "SELECT pg_is_in_recovery()"):
                raise ServiceError(
                    f"postgres {replica.name}: must be a standby, got pg_is_in_recovery() = false"
                )
            state = query_one(
                primary.admin_dsn,
                "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                (app,),
            )
            if state == "streaming":
                return
            last = f"pg_stat_replication state {state or 'absent'}"
        except ServiceError:
            raise
        except Exception as e:  # server still coming up
            last = one_line(e, 200)
        time.sleep(0.05)
    raise ServiceError(
        f"postgres {replica.name}: not streaming from the primary after {timeout:g} s "
        f"({last}; log: {replica.logfile})"
    )


def check_max_connections(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ServiceError(f"database.max_connections: must be an integer >= 1, got {n!r}")


def check_delay(seconds: object) -> None:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds < float("inf")
    ):
        raise ServiceError(f"replica delay: must be a number of seconds >= 0, got {seconds!r}")
