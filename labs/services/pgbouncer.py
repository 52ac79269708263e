"""PgBouncer, one kind of service: a connection pooler in front of the run's primary.

With a ``[pgbouncer]`` section a scenario's pools connect to PgBouncer, and
PgBouncer's server connections are what Postgres counts against
``max_connections`` (the contract).  Live, that is a real ``pgbouncer`` process
(Debian bookworm ships 1.18), started the way the other local servers are: in its
own temporary directory (``labs-pgbouncer-XXXX``, holding ``pgbouncer.ini``, the
auth file, its log and pidfile), listening on 127.0.0.1 only (no Unix socket), on
a free port, and removed afterwards.  PgBouncer refuses to run as root ("PgBouncer
should not run as root"), so as root it runs as the unprivileged user Postgres
runs as (``labs-postgres``, or ``$LABS_PG_USER``).  Attached (one run) it is a
child process in the foreground; detached (``python -m labs services up
--pgbouncer``) it daemonizes with ``-d``.  Either way it is stopped with SIGTERM
(1.18: "fast exit", clients are dropped), then whatever is left in its
directory is killed.

``pgbouncer.ini`` is written from the scenario's ``[pgbouncer]``
(:class:`simlib.pgbouncer.PgBouncerConfig`): its fields ``pool_mode``,
``default_pool_size``, ``min_pool_size``, ``reserve_pool_size``,
``reserve_pool_timeout``, ``max_client_conn``, ``max_db_connections``,
``query_wait_timeout``, ``server_idle_timeout``, ``server_lifetime``,
``server_login_retry`` and ``server_round_robin`` are PgBouncer's settings of
the same names (:data:`SETTINGS`); ``network_rtt`` and ``connect_time`` are the
model's and are not written.  The rest is fixed here, to suit labs' own
primaries, which trust every loopback connection: one database entry for the
primary's database (and ``*`` for any other) pointing at the primary,
``auth_type = trust`` with an auth file naming the run's role (``labs``, with
its password when the primary's DSN has one: PgBouncer logs in to Postgres with
it) and the admin role (``postgres``), ``admin_users = postgres`` and
``stats_users = labs`` for the admin console, and ``ignore_startup_parameters =
extra_float_digits`` (JDBC and some drivers send it; PgBouncer refuses a startup
parameter it does not know).  Connection logging is off: a run that connects
per request would fill the log, which is only read when a start fails.

A running PgBouncer -- one ``services up --pgbouncer`` started, or one named by
``LABS_PGBOUNCER`` -- takes another scenario's settings through its admin console
(:func:`apply_config`): ``SET key = 'value'`` for each of the twelve, then
``SHOW CONFIG`` read back to check them, so runs with different ``[pgbouncer]``
settings can share one PgBouncer.  What PgBouncer 1.18 does with ``SET``, as
tried here (``src/admin.c``, ``src/main.c``):

* all twelve settings above are changeable at runtime (``SHOW CONFIG``:
  ``changeable = yes``) and take effect at once: the pools read ``pool_mode``,
  the pool sizes and the timeouts whenever they use them;
* the value must be quoted when it is not a bare word: ``SET
  reserve_pool_timeout = 0.5`` is a syntax error, ``= '0.5'`` works; seconds may
  have fractions (kept to the microsecond); booleans are ``1``/``0`` only
  (``'on'``, ``'true'``: "SET failed"); integers are not range-checked
  (``default_pool_size = '-1'`` is accepted);
* a setting that cannot change at runtime (``listen_port``, ``pidfile``,
  ``unix_socket_dir``, ``pkt_buf``: ``changeable = no``) is answered with
  ``SET`` all the same and left as it was -- hence the read-back;
* ``RELOAD`` reads ``pgbouncer.ini`` again and undoes every ``SET``; so for a
  PgBouncer of labs' own the new settings are written into its
  ``pgbouncer.ini`` too.

A PgBouncer of your own is named by ``LABS_PGBOUNCER``: a libpq connection
string through it to the database the run uses (``postgresql://USER@HOST:PORT/DB``),
checked by connecting to its admin console (database ``pgbouncer``, as the same
user: the user must be one of its ``admin_users`` or ``stats_users``) and then
through it to the database.  Like every ``LABS_*`` variable it takes the
environment route, so ``LABS_PG_PRIMARY`` must name the primary behind it.  The
program is ``$LABS_PGBOUNCER_BIN`` when set, else ``pgbouncer`` on PATH, else
Debian's ``/usr/sbin/pgbouncer`` (``/usr/sbin`` is not on an ordinary user's PATH).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from labs.pgbouncer_admin import ADMIN_DATABASE, ConfigRow, Console, ConsoleError
from labs.services.base import Member, ServiceKind, Tier, register_kind
from labs.services.checks import CHECK_TIMEOUT, Probe, first_line, redact
from labs.services.common import (
    LOOPBACK,
    LocalServer,
    ServiceError,
    as_user,
    find_program,
    install_hint,
    last_meaningful_line,
    one_line,
    port_open,
    start_retrying_port,
    tail,
)
from labs.services.postgres import (
    APP_ROLE,
    ROLE,
    PostgresServer,
    driver_problem,
    postgres_address,
    postgres_form_problem,
    query_one,
    server_user,
)
from labs.topology import PRIMARY
from simlib.pgbouncer import PgBouncerConfig

if TYPE_CHECKING:  # for annotations only
    from simlib.scenario import Scenario

#: The Topology role of PgBouncer's endpoints: ``topology.endpoint(PGBOUNCER)``.
PGBOUNCER = "pgbouncer"
ADMIN_ROLE = ROLE  # who labs reads the admin console as: the primary's superuser's name
PACKAGE = "pgbouncer"  # what to install when the program is missing
ENV_PGBOUNCER = "LABS_PGBOUNCER"  # a PgBouncer of your own
ENV_BIN = "LABS_PGBOUNCER_BIN"
DEBIAN_BINARY = Path("/usr/sbin/pgbouncer")
START_TIMEOUT = 15.0
INI, AUTH_FILE, STDERR = "pgbouncer.ini", "userlist.txt", "stderr.log"


# ---------------------------------------------------------------------------
# The scenario's settings, as pgbouncer.ini and SET write them
# ---------------------------------------------------------------------------


def _seconds(value: Any) -> str:
    """Seconds as PgBouncer reads them: a decimal, to the microsecond it keeps."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _flag(value: object) -> str:
    return "1" if value else "0"  # PgBouncer's booleans are integers


#: The [pgbouncer] fields that are PgBouncer settings of the same name, and how each
#: value is written (``network_rtt`` and ``connect_time`` are the model's own).
SETTINGS: Mapping[str, Callable[[object], str]] = {
    "pool_mode": str,
    "default_pool_size": str,
    "min_pool_size": str,
    "reserve_pool_size": str,
    "reserve_pool_timeout": _seconds,
    "max_client_conn": str,
    "max_db_connections": str,
    "query_wait_timeout": _seconds,
    "server_idle_timeout": _seconds,
    "server_lifetime": _seconds,
    "server_login_retry": _seconds,
    "server_round_robin": _flag,
}


def ini_settings(config: PgBouncerConfig) -> dict[str, str]:
    """The scenario's settings as pgbouncer.ini (and ``SET``) values, by name."""
    return {key: write(getattr(config, key)) for key, write in SETTINGS.items()}


def _agrees(shown: ConfigRow | None, wanted: str) -> bool:
    """Whether ``SHOW CONFIG`` prints ``wanted`` (numbers compared as numbers)."""
    if shown is None:
        return False
    try:
        return abs(float(shown.value) - float(wanted)) < 1e-6
    except ValueError:
        return shown.value == wanted


# ---------------------------------------------------------------------------
# Finding the program
# ---------------------------------------------------------------------------


def find_pgbouncer() -> str:
    """The pgbouncer program: ``$LABS_PGBOUNCER_BIN`` if set (and only that), else PATH,
    else Debian's /usr/sbin/pgbouncer."""
    return find_program("pgbouncer", ENV_BIN, PACKAGE, fallback=DEBIAN_BINARY)


# ---------------------------------------------------------------------------
# One server
# ---------------------------------------------------------------------------


@dataclass
class PgBouncerServer(LocalServer):
    """One local pgbouncer in its own temp directory, in front of one primary.

    ``dsn`` reaches the primary's database through PgBouncer as the run's role;
    ``admin_dsn`` is its admin console (database ``pgbouncer``) as the admin role.
    """

    PREFIX: ClassVar[str] = "labs-pgbouncer-"
    KIND: ClassVar[str] = "pgbouncer"
    LOG: ClassVar[str] = "pgbouncer.log"
    PIDFILE: ClassVar[str] = "pgbouncer.pid"  # written once it listens, in both modes
    SCHEME: ClassVar[str] = "postgresql"
    ADMIN_USER: ClassVar[str] = ADMIN_ROLE
    STOP_GRACE: ClassVar[float] = 2.0

    binary: str = "pgbouncer"
    user: str | None = None  # the OS user it runs as (None: ourselves)
    upstream_host: str = LOOPBACK  # the primary it fronts
    upstream_port: int = 5432
    database: str = "labs"  # the primary's database, as the run names it
    role: str = APP_ROLE  # who the run connects as, and PgBouncer to Postgres
    config: PgBouncerConfig = field(default_factory=PgBouncerConfig)
    detached: bool = False
    _proc: subprocess.Popen | None = field(default=None, repr=False)  # attached only

    def _url(self, user: str, database: str) -> str:
        return (f"{self.SCHEME}://{quote(user, safe='')}@{LOOPBACK}:{self.port}/"
                f"{quote(database, safe='')}")

    @property
    def dsn(self) -> str:
        return self._url(self.role, self.database)

    @property
    def admin_dsn(self) -> str:
        return self._url(self.ADMIN_USER, ADMIN_DATABASE)

    @property
    def ini(self) -> Path:
        return self.dir / INI

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    # -- state ---------------------------------------------------------------

    def to_state(self) -> dict[str, object]:
        return super().to_state() | {
            "admin_dsn": self.admin_dsn,
            "binary": self.binary,
            "user": self.user,
            "upstream_host": self.upstream_host,
            "upstream_port": self.upstream_port,
            "database": self.database,
            "role": self.role,
            "settings": {key: getattr(self.config, key) for key in SETTINGS},
        }

    @classmethod
    def fields_from_state(cls, entry: Mapping[str, Any]) -> dict[str, Any]:
        settings = entry.get("settings") or {}
        return {
            "binary": str(entry.get("binary", "pgbouncer")),
            "user": entry.get("user"),
            "upstream_host": str(entry.get("upstream_host", LOOPBACK)),
            "upstream_port": int(entry.get("upstream_port", 5432)),
            "database": str(entry.get("database", "labs")),
            "role": str(entry.get("role", APP_ROLE)),
            "config": replace(PgBouncerConfig(),
                              **{k: v for k, v in settings.items() if k in SETTINGS}),
            "detached": True,  # only `services up` writes state: a daemon
        }

    # -- files -----------------------------------------------------------------

    def _write(self, name: str, text: str) -> None:
        path = self.dir / name
        path.write_text(text)
        if self.user is not None:  # pgbouncer reads them as that user
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o600)  # the auth file may hold the primary's password

    def _ini(self) -> str:
        target = f"host={self.upstream_host} port={self.upstream_port}"
        lines = [
            "; written by labs (labs/services/pgbouncer.py); rewritten when settings change",
            "[databases]",
            f"{self.database} = {target} dbname={self.database}",
            f"* = {target}",
            "",
            "[pgbouncer]",
            f"listen_addr = {LOOPBACK}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",  # loopback TCP only, like the other servers
            "auth_type = trust",  # labs' primaries trust loopback; the auth file names users
            f"auth_file = {self.dir / AUTH_FILE}",
            f"admin_users = {ADMIN_ROLE}",
            f"stats_users = {self.role}",
            f"pidfile = {self.dir / self.PIDFILE}",
            f"logfile = {self.logfile}",
            "ignore_startup_parameters = extra_float_digits",
            "log_connections = 0",
            "log_disconnections = 0",
            "; the scenario's [pgbouncer]",
            *(f"{key} = {value}" for key, value in ini_settings(self.config).items()),
        ]
        return "\n".join(lines) + "\n"

    def write_ini(self) -> None:
        self._write(INI, self._ini())

    def write_auth_file(self, password: str = "") -> None:
        """The users PgBouncer lets in, with the password it logs in to Postgres with."""
        def entry(user: str, secret: str) -> str:
            return '"{}" "{}"\n'.format(user.replace('"', '""'), secret.replace('"', '""'))

        users = {self.role: password, ADMIN_ROLE: password if self.role == ADMIN_ROLE else ""}
        self._write(AUTH_FILE, "".join(entry(u, p) for u, p in users.items()))

    # -- life cycle ----------------------------------------------------------

    def start(self, password: str = "") -> None:
        self.check_port()
        self.write_auth_file(password)
        self.write_ini()
        argv = as_user([self.binary, *(["-d"] if self.detached else []), str(self.ini)],
                       self.user)
        # stderr to a file: a config it cannot load is reported before the log opens
        with open(self.dir / STDERR, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    cwd=self.dir,
                    start_new_session=True,  # our Ctrl-C is ours to handle
                )
            except OSError as e:
                raise ServiceError(
                    f"pgbouncer: cannot run {self.binary}: {e.strerror}; {install_hint(PACKAGE)}"
                ) from None
        self._proc = proc

        def listening() -> bool:
            if self.pid() is not None and port_open(self.port):
                return True
            if " FATAL " in tail(self.logfile):  # the daemon died after forking
                raise self.start_failed("FATAL in its log")
            # `-d`: the parent exits 0 once it forked; anything else is a failure
            if proc.poll() is not None and (proc.returncode or not self.detached):
                raise self.start_failed(f"exited with status {proc.returncode}")
            return False

        self.wait_ready(listening, START_TIMEOUT, "not listening", interval=0.02)
        if self.detached:  # the parent of the daemon (it is no server): collect it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            self._proc = None

    def start_failed(self, fallback: str) -> ServiceError:
        # a port taken: the warning names the cause ("Address already in use"),
        # the FATAL after it only says "nowhere to listen on"
        text = tail(self.dir / STDERR) + "\n" + tail(self.logfile)
        taken = [ln for ln in text.splitlines() if "cannot listen" in ln]
        detail = one_line(taken[-1], 300) if taken else last_meaningful_line(text)
        return ServiceError(
            f"{self.label} on {LOOPBACK}:{self.port} did not start: {detail or fallback}"
        )

    def shutdown(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)  # 1.18: "fast exit"

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            # dead by now (SIGTERM, else reap's SIGKILL), and runuser with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None


def _upstream(primary: str) -> dict[str, str]:
    """host, port, user, password and dbname of the primary's DSN (URI or key=value)."""
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(primary)
    except Exception as e:
        raise ServiceError(f"pgbouncer: the primary's DSN {redact(primary)!r} is not a "
                           f"Postgres connection string ({first_line(e)})") from None
    return params


def start_pgbouncer(
    primary: str | PostgresServer,
    config: PgBouncerConfig | None = None,
    *,
    port: int | None = None,
    detached: bool = False,
    binary: str | None = None,
) -> PgBouncerServer:
    """Start pgbouncer in front of ``primary`` on ``port`` (default: a free one).

    ``primary``: a server labs started (PgBouncer then runs as its user) or any
    Postgres DSN, e.g. ``LABS_PG_PRIMARY``'s (a DSN without a host means
    127.0.0.1; its password, if any, goes into the auth file).  ``config``: the
    scenario's ``[pgbouncer]`` (default: PgBouncer's own defaults).  Stop it with
    ``.stop()``.
    """
    program = binary or find_pgbouncer()
    if isinstance(primary, PostgresServer):
        user, dsn = primary.user, primary.dsn
    else:
        user, dsn = server_user(), primary
    params = _upstream(dsn)
    kwargs = {
        "binary": program,
        "user": user,
        "upstream_host": params.get("host") or LOOPBACK,
        "upstream_port": int(params.get("port") or 5432),
        "database": params.get("dbname") or params.get("user") or getpass.getuser(),
        "role": params.get("user") or getpass.getuser(),  # as libpq defaults them
        "config": config or PgBouncerConfig(),
        "detached": detached,
    }
    password = params.get("password", "")
    return start_retrying_port(
        lambda: PgBouncerServer.create(port, owner=user, **kwargs),
        lambda server: server.start(password),
        port,
        "pgbouncer",
    )


# ---------------------------------------------------------------------------
# Settings of a running PgBouncer
# ---------------------------------------------------------------------------


def apply_config(
    admin_dsn: str, config: PgBouncerConfig, server: PgBouncerServer | None = None
) -> dict[str, str]:
    """Give a running PgBouncer the scenario's settings; returns them as ``SHOW CONFIG`` does.

    ``admin_dsn``: any DSN of it whose user is one of its ``admin_users`` (the
    console is found on the same host and port).  Each setting is ``SET``, then
    ``SHOW CONFIG`` is read back (1.18 answers ``SET`` even where it changes
    nothing).  ``server``: the PgBouncer's :class:`PgBouncerServer`, when it is
    labs' own: its ``pgbouncer.ini`` is rewritten first, so that a ``RELOAD``
    keeps the new settings.  ServiceError, in one line, when a setting is refused
    or does not take.
    """
    wanted = ini_settings(config)
    if server is not None:
        server.config = config
        server.write_ini()
    where = f"pgbouncer at {postgres_address(admin_dsn)}"
    with _console(admin_dsn, "cannot apply [pgbouncer]") as console:
        for key, value in wanted.items():
            console.set(key, value)
        shown = console.config()
        _drop_servers(console)
    for key, value in wanted.items():
        if not _agrees(shown.get(key), value):
            got = shown[key].value if key in shown else "absent"
            raise ServiceError(f"{where}: pgbouncer.{key}: must become {value} after SET, "
                               f"got {got}")
    return {key: shown[key].value for key in wanted}


#: Seconds apply_config waits for PgBouncer to close the servers of earlier settings.
DRAIN_TIMEOUT = 5.0


def close_servers(admin_dsn: str) -> None:
    """Have a running PgBouncer close its server connections (see :func:`_drop_servers`)."""
    with _console(admin_dsn, "cannot close its servers") as console:
        _drop_servers(console)


@contextlib.contextmanager
def _console(admin_dsn: str, doing: str) -> Iterator[Console]:
    """PgBouncer's admin console; a failure is one ServiceError line: where, ``doing``, why."""
    where = f"pgbouncer at {postgres_address(admin_dsn)}"
    try:
        with Console.open(admin_dsn, CHECK_TIMEOUT) as console:
            yield console
    except ConsoleError as e:
        raise ServiceError(f"{where}: {doing}: {e}") from None
    except Exception as e:  # the driver's: PgBouncer not answering
        raise ServiceError(f"{where}: {doing}: {driver_problem(e, admin_dsn)}") from None


def _drop_servers(console: Console) -> None:
    """Close every server connection the earlier settings opened (``RECONNECT``).

    A smaller ``default_pool_size`` only stops PgBouncer from *launching*
    servers: the ones it holds stay idle in the pool and are handed out as
    before (``find_server`` takes any idle server), so a run after a run with
    a larger pool would see the larger pool.  ``RECONNECT`` closes each server
    once released, which between runs is at once; new ones are then launched
    under the new settings.  Waits until the console shows at most
    ``min_pool_size`` of them per pool (those it reopens at once).
    """
    console.command("RECONNECT")
    floor = int(console.config()["min_pool_size"].value)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        pools = [p for p in console.pools() if p.database != "pgbouncer"]
        if all(p.servers <= floor for p in pools):
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# A PgBouncer of your own
# ---------------------------------------------------------------------------

PGBOUNCER_FORM = ("a PgBouncer connection string to the database the run uses "
                  "(postgresql://USER@HOST:PORT/DATABASE or key=value pairs)")


def pgbouncer_problem(dsn: str) -> str | None:
    """None if ``dsn`` reaches PgBouncer's admin console and, through it, its database.

    The console (database ``pgbouncer``) is what tells PgBouncer from Postgres:
    Postgres has no such database.
    """
    try:
        with Console.open(dsn, CHECK_TIMEOUT) as console:
            console.version()
    except Exception as e:
        problem = driver_problem(e, dsn)
        if f'database "{ADMIN_DATABASE}" does not exist' in problem:
            return "answers as Postgres, not as PgBouncer (it has no admin console database)"
        if "not allowed" in problem:
            return f"PgBouncer's admin console refuses this user ({problem})"
        return problem
    try:
        query_one(dsn, "SELECT 1", timeout=CHECK_TIMEOUT)
    except Exception as e:
        return f"PgBouncer answers, its database does not: {driver_problem(e, dsn)}"
    return None


# ---------------------------------------------------------------------------
# The kind
# ---------------------------------------------------------------------------

PGBOUNCER_TIER = Tier(
    PGBOUNCER, "pgbouncer", ENV_PGBOUNCER,
    Probe("PgBouncer", PGBOUNCER_FORM, "must answer as PgBouncer", postgres_form_problem,
          pgbouncer_problem, postgres_address),
    env_missing="{var}: the scenario has a [pgbouncer] and needs a PgBouncer DSN, got nothing; "
    "export e.g. {var}=postgresql://labs@127.0.0.1:56432/labs (a PgBouncer in front of "
    "LABS_PG_PRIMARY), or unset the LABS_* variables",
    state_missing="pgbouncer: `labs services up` started no PgBouncer and the scenario has a "
    "[pgbouncer]; run `python -m labs services down` then "
    "`python -m labs services up --pgbouncer`",
)


def wanted_config(wants: Mapping[str, object]) -> PgBouncerConfig | None:
    """The settings a run's ``pgbouncer`` keyword asks for (None: no PgBouncer).

    ``False``/None: none; ``True``: PgBouncer's defaults; a
    :class:`~simlib.pgbouncer.PgBouncerConfig`: the scenario's ``[pgbouncer]``.
    """
    value = wants["pgbouncer"]
    if value is None or value is False:
        return None
    if value is True:
        return PgBouncerConfig()
    if isinstance(value, PgBouncerConfig):
        return value
    raise ServiceError(f"pgbouncer: must be true, false or a [pgbouncer] section "
                       f"(simlib.pgbouncer.PgBouncerConfig), got {value!r}")


def _primary(started: Sequence[Member]) -> PostgresServer:
    for member in started:
        if member.tier.role == PRIMARY and isinstance(member.server, PostgresServer):
            return member.server
    raise ServiceError("pgbouncer: must front a primary, got none started before it")


class PgBouncer(ServiceKind[str]):
    """One pgbouncer in front of the primary, for runs that ask for ``pgbouncer=``."""

    name = "pgbouncer"
    tiers = (PGBOUNCER_TIER,)
    keywords: ClassVar[Mapping[str, object]] = {"pgbouncer": False}
    server = PgBouncerServer
    rank = 20  # after Postgres: it fronts the primary started before it
    optional = True  # only runs with a [pgbouncer] need the program

    def find_binary(self) -> str:
        return find_pgbouncer()

    def count(self, tier: Tier, wants: Mapping[str, object]) -> int:
        return 0 if wanted_config(wants) is None else 1

    def start(
        self, wants: Mapping[str, object], binary: str, *, detached: bool,
        started: Sequence[Member],
    ) -> Iterator[tuple[Tier, LocalServer]]:
        yield PGBOUNCER_TIER, start_pgbouncer(
            _primary(started), wanted_config(wants), detached=detached, binary=binary
        )

    def needs(self, scenario: Scenario) -> dict[str, object]:
        return {"pgbouncer": scenario.pgbouncer if scenario.pgbouncer is not None else False}


register_kind(PgBouncer())
