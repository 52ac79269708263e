"""Postgres, one kind of service: a primary from ``initdb`` and streaming replicas.

Each server labs starts gets its own temporary directory (``labs-pg-XXXX``)
holding the data directory, its log and its Unix socket, and listens on 127.0.0.1
only, on a free port, with trust authentication for 127.0.0.1 and nothing else.
Durability is switched off (``fsync``, ``synchronous_commit``,
``full_page_writes``): these servers hold nothing worth keeping and start in about
a second.

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

Where the installation has it, ``pg_stat_statements`` is preloaded, so that a run
or a lesson can ``CREATE EXTENSION pg_stat_statements`` and read what each
statement cost on the server (lesson 11).

Everything labs sets lives in ``labs.conf`` in the data directory, included at
the end of ``postgresql.conf``; changing ``max_connections`` or the replica
delay rewrites that file and restarts or reloads the server.

As a kind of service (:class:`Postgres`, registered at the end of this module)
it serves every run: a primary, ``[replicas].count`` streaming replicas
(``pg_basebackup -R``) whose ``recovery_min_apply_delay`` is a constant
``[replicas].lag`` (a standby delays every commit by the same amount; a random lag
cannot be imposed), and ``database.max_connections`` slots for the run's role.
Servers of your own are named by ``LABS_PG_PRIMARY`` and ``LABS_PG_REPLICAS``
(comma separated); each must be a libpq connection string, and is asked
``SELECT pg_is_in_recovery()`` to tell a primary from a standby.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from labs.services.base import Member, ServiceKind, Tier, register_kind
from labs.services.checks import CHECK_TIMEOUT, Probe, bad_port, first_line, scheme, scrub
from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    install_hint,
    one_line,
    poll,
    run,
    start_retrying_port,
)
from labs.topology import PRIMARY, REPLICA
from simlib.distributions import Constant

if TYPE_CHECKING:  # for annotations only
    from simlib.scenario import Scenario

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
ENV_PRIMARY = "LABS_PG_PRIMARY"  # servers of your own
ENV_REPLICAS = "LABS_PG_REPLICAS"
DEFAULT_MAX_CONNECTIONS = 100  # of a throwaway server, when the run names none
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
    """One local Postgres server (primary or standby) in its own temp directory.

    ``dir`` holds ``data/``, ``postgres.log`` and the Unix socket.
    """

    PREFIX: ClassVar[str] = "labs-pg-"
    KIND: ClassVar[str] = "postgres"
    LOG: ClassVar[str] = "postgres.log"
    PIDFILE: ClassVar[str] = "data/postmaster.pid"  # the postmaster's
    SCHEME: ClassVar[str] = "postgresql"
    PATH: ClassVar[str] = DATABASE
    USER: ClassVar[str] = APP_ROLE  # the run: exactly ``max_connections`` slots
    ADMIN_USER: ClassVar[str] = ROLE  # monitoring and set-up, in the reserved slots
    STOP_GRACE: ClassVar[float] = 2.0

    bindir: Path
    user: str | None
    max_connections: int = 100
    standby: bool = False
    delay: float = 0.0  # recovery_min_apply_delay, seconds (standby only)
    name: str = "primary"

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def label(self) -> str:
        return f"{self.KIND} {self.name}"

    # -- state ---------------------------------------------------------------

    def to_state(self) -> dict[str, object]:
        return super().to_state() | {
            "name": self.name,
            "bindir": str(self.bindir),
            "user": self.user,
            "max_connections": self.max_connections,
            "standby": self.standby,
            "delay": self.delay,
            "admin_dsn": self.admin_dsn,
        }

    @classmethod
    def fields_from_state(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "bindir": Path(entry["bindir"]),
            "user": entry.get("user"),
            "max_connections": int(entry.get("max_connections", 100)),
            "standby": bool(entry.get("standby", False)),
            "delay": float(entry.get("delay", 0.0)),
            "name": str(entry.get("name", "primary")),
        }

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
        if self.has_pg_stat_statements():
            # the per-statement counters lesson 11 profiles with; the extension's
            # views appear in a database after CREATE EXTENSION pg_stat_statements
            lines.append("shared_preload_libraries = 'pg_stat_statements'")
        if self.standby:
            lines.append(f"recovery_min_apply_delay = '{round(self.delay * 1000)}ms'")
        return "\n".join(lines) + "\n"

    def has_pg_stat_statements(self) -> bool:
        """Whether this installation ships pg_stat_statements (Debian: in ``postgresql-15``).

        The library sits in the ``lib`` directory beside the real ``bin`` one, which
        may be behind a symlink on PATH (``/usr/local/bin/postgres``).
        """
        real_bindir = (self.bindir / "postgres").resolve().parent
        return (real_bindir.parent / "lib" / "pg_stat_statements.so").exists()

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
        self.check_port()
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


def check_max_connections(n: object) -> int:
    """``n`` as a connection limit; ServiceError unless it is an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ServiceError(f"database.max_connections: must be an integer >= 1, got {n!r}")
    return n


def check_delay(seconds: object) -> float:
    """``seconds`` as a replica delay; ServiceError unless it is a finite number >= 0."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds < float("inf")
    ):
        raise ServiceError(f"replica delay: must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


# ---------------------------------------------------------------------------
# Changing the limit and the delay of running servers
# ---------------------------------------------------------------------------


def _ours(servers: Iterable[LocalServer | None]) -> list[PostgresServer]:
    """The Postgres servers among ``servers`` (a cluster holds servers of every kind)."""
    return [s for s in servers if isinstance(s, PostgresServer)]


def set_max_connections(
    primary: LocalServer | None, replicas: Sequence[LocalServer], n: int
) -> None:
    """Restart a primary and its replicas with ``max_connections = n``.

    A hot standby refuses to run with a smaller ``max_connections`` than its
    primary, so when raising the limit the replicas go first, when lowering
    it the primary goes first.
    """
    check_max_connections(n)
    heads, standbys = _ours([primary]), _ours(replicas)
    if not heads:
        raise ServiceError("max_connections: must have a local primary to restart, got none")
    head = heads[0]
    if n == head.max_connections:
        return
    order = [*standbys, head]
    if n < head.max_connections:
        order.reverse()
    for server in order:
        server.max_connections = n
        server.restart()
    for replica in standbys:
        wait_streaming(head, replica, 30)


def set_replica_delay(replicas: Sequence[LocalServer], seconds: float) -> None:
    """Set ``recovery_min_apply_delay`` on every replica (a reload, no restart)."""
    check_delay(seconds)
    for replica in _ours(replicas):
        replica.delay = seconds
        replica.reload()


# ---------------------------------------------------------------------------
# Connection strings of servers of your own
# ---------------------------------------------------------------------------

PG_SCHEMES = ("postgresql", "postgres")  # the URI schemes libpq accepts
PG_FORM = "a Postgres connection string (postgresql://USER@HOST:PORT/DATABASE or key=value pairs)"


def _parse(dsn: str) -> dict[str, str]:
    # psycopg2 only when a string is checked: `services status` without LABS_*
    # variables, and every throwaway run, need no driver to start
    from psycopg2.extensions import parse_dsn

    return parse_dsn(dsn)


def postgres_form_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a Postgres connection string libpq can use (None: it is)."""
    found = scheme(dsn)
    if found is not None and found not in PG_SCHEMES:
        return f"scheme {found}:// is not {' or '.join(s + '://' for s in PG_SCHEMES)}"
    try:
        params = _parse(dsn)
    except Exception as e:
        return scrub(first_line(e), dsn)
    return bad_port(params.get("port"))


def postgres_address(dsn: str) -> str:
    """host:port of a Postgres DSN (URI or key=value), for messages."""
    try:
        params = _parse(dsn)
    except Exception:
        return "?"
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def driver_problem(error: BaseException, dsn: str) -> str:
    """What went wrong in a libpq error about ``dsn``, without the address and the password."""
    problem = scrub(first_line(error), dsn)
    # libpq repeats the address we already name: keep what went wrong
    problem = re.sub(r'^connection to server at "[^"]*", port \d+ failed:\s*', "", problem)
    return re.sub(r"^FATAL:\s*", "", problem)


def postgres_problem(dsn: str, standby: bool | None = None) -> str | None:
    """None if the DSN answers (and is/is not a standby as asked), else why not."""
    try:
        in_recovery = query_one(dsn, "SELECT pg_is_in_recovery()", timeout=CHECK_TIMEOUT)
    except Exception as e:
        return driver_problem(e, dsn)
    if standby is True and not in_recovery:
        return "answers but is not a standby (pg_is_in_recovery() is false)"
    if standby is False and in_recovery:
        return "answers but is a standby, not a primary"
    return None


def _probe(duty: str, standby: bool) -> Probe:
    return Probe("Postgres", PG_FORM, duty, postgres_form_problem,
                 lambda dsn: postgres_problem(dsn, standby=standby), postgres_address)


# ---------------------------------------------------------------------------
# The kind
# ---------------------------------------------------------------------------

PRIMARY_TIER = Tier(
    PRIMARY, "primary", ENV_PRIMARY, _probe("must answer as a primary", standby=False),
    env_missing="{var}: must be set when {other} is, got nothing; export e.g. "
    "{var}=postgresql://postgres@127.0.0.1:55432/postgres, or unset {other}",
)
REPLICA_TIER = Tier(
    REPLICA, "replica", ENV_REPLICAS, _probe("must answer as a standby", standby=True), True,
    "{var}: the scenario needs {n} replica DSN(s) (comma separated), got {got}; "
    "add them or unset the LABS_* variables",
    "replicas.count: `labs services up` started {got} replica(s), the scenario needs {n}; "
    "run `python -m labs services down` then `python -m labs services up --replicas {n}`",
)


def _replicas(wants: Mapping[str, object]) -> int:
    n = wants["replicas"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ServiceError(f"replicas.count: must be an integer >= 0, got {n!r}")
    return n


def _limit(wants: Mapping[str, object]) -> int:
    n = wants["max_connections"]
    return check_max_connections(DEFAULT_MAX_CONNECTIONS if n is None else n)


class Postgres(ServiceKind[Path]):
    """A primary and its streaming replicas: the database of every run.

    Keywords: ``replicas`` (how many streaming replicas), ``max_connections``
    (the run's role's slots on labs' own servers; None: 100) and
    ``replica_delay`` (seconds each replica waits before it applies a commit).
    """

    name = "postgres"
    tiers = (PRIMARY_TIER, REPLICA_TIER)
    keywords: ClassVar[Mapping[str, object]] = {
        "replicas": 0, "max_connections": None, "replica_delay": 0.0,
    }
    server = PostgresServer
    rank = 10  # after Redis, which starts in a blink: a broken one shows before initdb

    def find_binary(self) -> Path:
        return find_bindir()

    def count(self, tier: Tier, wants: Mapping[str, object]) -> int:
        return 1 if tier.role == PRIMARY else _replicas(wants)

    def check(self, wants: Mapping[str, object]) -> None:
        super().check(wants)
        _limit(wants)
        check_delay(wants["replica_delay"])

    def start(
        self, wants: Mapping[str, object], binary: Path, *, detached: bool,
        started: Sequence[Member],
    ) -> Iterator[tuple[Tier, LocalServer]]:
        # pg_ctl starts every postmaster as a daemon: `detached` needs nothing more
        primary = start_primary(_limit(wants), bindir=binary)
        yield PRIMARY_TIER, primary
        delay = check_delay(wants["replica_delay"])
        for i in range(_replicas(wants)):
            yield REPLICA_TIER, start_replica(primary, delay=delay, index=i + 1)

    def needs(self, scenario: Scenario) -> dict[str, object]:
        reps = scenario.replicas
        lag = reps.lag if reps is not None else None
        return {
            "replicas": reps.count if reps is not None else 0,
            "max_connections": scenario.database.max_connections,
            # a standby delays every commit alike: only a constant lag can be imposed
            "replica_delay": float(lag.value) if isinstance(lag, Constant) else 0.0,
        }


register_kind(Postgres())
