"""Throwaway Postgres servers: a primary from ``initdb`` and streaming replicas.

Each server gets its own temporary directory (``labs-pg-XXXX``) holding the data
directory, its log and its Unix socket, and listens on 127.0.0.1 only, on a free
port, with trust authentication for 127.0.0.1 and nothing else.  Durability is
switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): these
servers hold nothing worth keeping and start in about a second.

The programs (``initdb``, ``pg_ctl``, ``postgres``, ``pg_basebackup``) are taken
from ``$LABS_PG_BINDIR`` when it is set -- and then only from there, so a wrong
value is reported rather than silently replaced -- else from the directory of
``initdb`` on PATH, ``pg_config --bindir`` or the newest
``/usr/lib/postgresql/*/bin``.

Postgres refuses to run as root.  As root, the servers run as the unprivileged
system user ``labs-postgres`` (created when missing), or ``postgres`` if that
cannot be created; ``$LABS_PG_USER`` names another.

Roles and connection slots: the run connects as ``labs`` (not a superuser; owns
the database ``labs``) through ``dsn``; monitoring and set-up may use the
superuser ``postgres`` through ``admin_dsn``.  The server runs with
``max_connections = N + 3 + 1`` and ``superuser_reserved_connections = 3``.
Postgres does not set reserved slots aside: an ordinary role is refused when
fewer than 3 slots would stay free, and superuser sessions take slots from the
same list.  So every admin session open during a run costs the run's role a
slot; labs holds exactly one (the pg_stat_activity monitor), hence the ``+ 1``,
recorded as the custom setting ``labs.admin_slots`` so that
``connection_limit(dsn)`` (the slots a DSN's role has during a run) can
subtract it: the run's role gets exactly the scenario's N slots.

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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    check_port_free,
    checked_dir,
    install_hint,
    one_line,
    poll,
    read_pidfile,
    run,
    start_retrying_port,
)

ROLE = "postgres"  # the superuser role initdb creates: admin_dsn
APP_ROLE = "labs"  # an ordinary role that owns DATABASE: dsn (what a run uses)
DATABASE = "labs"
RESERVED = 3  # superuser_reserved_connections: admin slots on top of max_connections
#: superuser sessions labs keeps open during a run (the monitor); they take
#: slots an ordinary role could otherwise use, so max_connections gets them too
ADMIN_SLOTS = 1
OS_USER = "labs-postgres"  # who runs the servers when we are root
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
PACKAGE = "postgresql"  # what to install when TOOLS are missing
ENV_BINDIR = "LABS_PG_BINDIR"
START_TIMEOUT = 30
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <version>/bin per major


# ---------------------------------------------------------------------------
# Finding the binaries and the user
# ---------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def _missing(bindir: Path) -> list[str]:
    return [t for t in TOOLS if not os.access(bindir / t, os.X_OK)]


def find_bindir() -> Path:
    """The directory with initdb, pg_ctl, postgres and pg_basebackup.

    ``$LABS_PG_BINDIR`` if set (and only that), else the directory of ``initdb``
    on PATH, ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.
    """
    explicit = os.environ.get(ENV_BINDIR, "").strip()
    if explicit:
        missing = _missing(Path(explicit))
        if missing:
            raise ServiceError(
                f"{ENV_BINDIR}: must be a directory with {', '.join(TOOLS)}, got {explicit} "
                f"without {', '.join(missing)}; point it at the directory `pg_config --bindir` "
                f"prints, or unset it to look in the usual places ({install_hint(PACKAGE)})"
            )
        return Path(explicit)
    candidates: list[Path] = []
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
        missing = _missing(d)
        if not missing:
            return d
        if best is None or len(missing) < len(best[1]):
            best = (d, missing)
    if best is None:
        raise ServiceError(
            "postgres: initdb not found (looked on PATH, in `pg_config --bindir` and "
            f"{DEBIAN_ROOT}/*/bin); {install_hint(PACKAGE)}, or set {ENV_BINDIR}"
        )
    raise ServiceError(
        f"postgres: {', '.join(best[1])} missing in {best[0]}; {install_hint(PACKAGE)}"
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
class PostgresServer(LocalServer):
    """One local Postgres server (primary or standby) in its own temp directory."""

    PREFIX: ClassVar[str] = "labs-pg-"
    STOP_GRACE: ClassVar[float] = 2.0

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
    def label(self) -> str:
        return f"postgres {self.name}"

    @property
    def dsn(self) -> str:
        """For the run: role ``labs``, exactly ``max_connections`` slots."""
        return f"postgresql://{APP_ROLE}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """Superuser ``postgres``: monitoring and set-up, in the reserved slots."""
        return f"postgresql://{ROLE}@{LOOPBACK}:{self.port}/{DATABASE}"

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, if it is running."""
        return read_pidfile(self.datadir / "postmaster.pid")

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
            dir=checked_dir(d["dir"], cls.PREFIX),
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
            f"listen_addresses = '{LOOPBACK}'",
            f"unix_socket_directories = '{self.dir}'",
            # the run's role (not a superuser) gets exactly max_connections slots
            # while labs' monitor (a superuser session) is connected
            f"max_connections = {self.max_connections + RESERVED + ADMIN_SLOTS}",
            f"superuser_reserved_connections = {RESERVED}",
            f"labs.admin_slots = {ADMIN_SLOTS}",
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

    def _tool(self, tool: str, *args: str, what: str, timeout: float):
        """Run one of TOOLS as the server's user; ``what`` says what for messages."""
        return run(
            [str(self.bindir / tool), *args],
            user=self.user,
            timeout=timeout,
            what=f"{self.label}: {what}",
            package=PACKAGE,
        )

    def _pg_ctl(self, *args: str, what: str, timeout: float = START_TIMEOUT + 10):
        return self._tool("pg_ctl", "-D", str(self.datadir), *args, what=what, timeout=timeout)

    # -- life cycle ----------------------------------------------------------

    def initdb(self) -> None:
        self._tool(
            "initdb", "-D", str(self.datadir), "-U", ROLE, "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
            what="initdb", timeout=120,
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
        self._tool(
            "pg_basebackup", "-D", str(self.datadir), "-h", LOOPBACK, "-p", str(primary.port),
            "-U", ROLE, "-R", "-X", "stream", "-c", "fast", "--no-sync",
            what=f"pg_basebackup from {LOOPBACK}:{primary.port}", timeout=120,
        )
        self.write_conf()  # own port, socket, cluster_name and delay

    def start(self) -> None:
        check_port_free(self.port, self.label)
        try:
            self._pg_ctl(
                "-w", "-t", str(START_TIMEOUT), "-l", str(self.logfile), "start", what="start"
            )
        except ServiceError as e:
            raise self.start_failed(str(e)) from None

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
        self._pg_ctl("-m", "fast", "-w", "-t", str(START_TIMEOUT), "stop", what="stop")
        self.start()

    def reload(self) -> None:
        self.write_conf()
        self._pg_ctl("reload", what="reload", timeout=20)

    def shutdown(self, pid: int) -> None:
        # immediate mode: nothing here is worth a checkpoint
        self._pg_ctl("-m", "immediate", "-w", "-t", "10", "stop", what="stop", timeout=15)


def start_primary(
    max_connections: int = 100, *, port: int | None = None, bindir: Path | None = None
) -> PostgresServer:
    """initdb + start a primary on ``port`` (default: a free one). Stop it with ``.stop()``."""
    check_max_connections(max_connections)
    bindir = bindir or find_bindir()
    user = server_user()

    def start(server: PostgresServer) -> None:
        server.initdb()
        server.start()
        server.create_app_role()

    return start_retrying_port(
        lambda: PostgresServer.create(
            port, owner=user, bindir=bindir, user=user, max_connections=max_connections
        ),
        start,
        port,
        "postgres primary",
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
    name = f"replica{index}"

    def start(server: PostgresServer) -> None:
        server.basebackup(primary)
        server.start()
        wait_streaming(primary, server, wait)

    return start_retrying_port(
        lambda: PostgresServer.create(
            port,
            owner=primary.user,
            bindir=primary.bindir,
            user=primary.user,
            name=name,
            max_connections=primary.max_connections,  # a standby needs >= the primary's
            standby=True,
            delay=delay,
        ),
        start,
        port,
        f"postgres {name}",
    )


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
            "ELSE current_setting('superuser_reserved_connections')::int END "
            "- coalesce(current_setting('labs.admin_slots', true)::int, 0)",
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
    app = f"labs-{replica.name}"
    last = "not answering"

    def streaming() -> bool:
        nonlocal last
        try:
            in_recovery = query_one(replica.admin_dsn, "SELECT pg_is_in_recovery()")
            state = query_one(
                primary.admin_dsn,
                "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                (app,),
            )
        except Exception as e:  # server still coming up
            last = one_line(e, 200)
            return False
        if not in_recovery:
            raise ServiceError(
                f"{replica.label}: must be a standby, got pg_is_in_recovery() = false"
            )
        last = f"pg_stat_replication state {state or 'absent'}"
        return state == "streaming"

    if not poll(streaming, timeout):
        raise ServiceError(
            f"{replica.label}: not streaming from the primary after {timeout:g} s ({last})"
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
