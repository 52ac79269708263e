"""PgBouncer between the applications' pools and Postgres: its rules, read from its source.

The scenario's ``[pgbouncer]`` puts one PgBouncer in front of the primary.  The
applications' pools then connect to PgBouncer (cheap: PgBouncer answers the
login itself), and PgBouncer's *server* connections are what Postgres counts
against ``max_connections``.  What it models, rule for rule, from PgBouncer
1.18 (Debian bookworm's), ``src/objects.c`` and ``src/janitor.c``:

* **Pool modes, each with its release point.**  A client is linked to a
  server connection when it sends a query and no server is linked yet
  (``find_server``).  ``session``: the server stays linked until the client
  disconnects, then ``server_reset_query`` (``DISCARD ALL``, one round trip)
  runs before anyone else may have it.  ``transaction``: released when the
  transaction ends; for a request that is after its query *and* the pool's
  reset (``ROLLBACK``/``COMMIT``) on return, with the client's own Python in
  between.  ``statement``: released after each statement; the reset goes to
  PgBouncer alone (a driver in autocommit sends no ``ROLLBACK``; multi-statement
  transactions are refused in this mode).
* **Waiting.**  A client that finds no idle server joins the pool's waiting
  list at the end, and a released server goes to the first waiter
  (``release_server`` -> ``reuse_on_release``; ``per_loop_activate`` walks
  the list in order): FIFO, a :class:`~simlib.pools.base.WaitQueue`.
* **Idle servers are reused LIFO** (``release_server`` prepends to
  ``idle_server_list``, ``find_server`` takes the first), or FIFO with
  ``server_round_robin``.
* **One server launch at a time per pool** (``launch_new_connection``: "Allow
  only a single connection attempt at a time"), and only while the pool has
  fewer than ``default_pool_size`` servers.  Beyond that the **reserve pool**
  (``reserve_pool_size`` more) opens only once the first waiter has waited
  ``reserve_pool_timeout``.  ``max_db_connections`` caps the database's
  servers.  A failed connect (Postgres refusing: ``max_connections``) makes
  the pool wait ``server_login_retry`` before it tries again, and the clients
  keep waiting meanwhile.
* **The janitor** runs every 1/3 s (``JANITOR_PERIOD``): it opens servers up
  to ``min_pool_size`` (one per turn, while any client is connected),
  disconnects waiting clients older than ``query_wait_timeout`` ("query_wait_timeout":
  the application sees an error and its connection to PgBouncer is gone),
  closes idle servers past ``server_idle_timeout`` (not below
  ``min_pool_size``) and past ``server_lifetime``.  So these timeouts fire on
  the janitor's ticks, up to 1/3 s late.  ``server_lifetime`` is also enforced
  when a server is released (``life_over``), spacing such closes
  ``server_lifetime / default_pool_size`` apart so a pool does not reconnect
  all at once.
* **Clients.**  At most ``max_client_conn`` client connections; one more is
  refused at login ("no more connections allowed (max_client_conn)").
* **The extra hop.**  Every message between the application and Postgres goes
  through PgBouncer: ``network_rtt`` more per round trip (this section's,
  besides ``[database] network_rtt``).  A login at PgBouncer costs ``connect_time``.

Left out: ``server_check_delay`` (a server idle 30 s is tested with ``SELECT 1``
before reuse: one round trip, rarely), ``client_idle_timeout`` and PgBouncer's
own CPU (it is one thread; at the course's rates it is far from busy).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import simpy

from simlib.config import Rule, Section, choice, flag, integer, number
from simlib.database import Connection, ConnectionRefused, DatabaseServer, ProcessorSharing
from simlib.distributions import Constant, Distribution, ScenarioError, parse_distribution
from simlib.metrics import Recorder

#: PgBouncer's janitor runs every third of a second (janitor.c: ``full_maint_period``).
JANITOR_PERIOD = 1.0 / 3.0


@dataclass(frozen=True, slots=True)
class PgBouncerConfig(Section):
    """The scenario's ``[pgbouncer]``: PgBouncer's own settings, names and defaults.

    ``network_rtt`` (the extra hop) and ``connect_time`` (a client's login at
    PgBouncer) are the model's, not PgBouncer's; every other field is
    ``pgbouncer.ini``'s, in seconds.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {
        "pool_mode": choice("session", "transaction", "statement"),
        "default_pool_size": integer(">=", 1),
        "min_pool_size": integer(">=", 0),
        "reserve_pool_size": integer(">=", 0),
        "reserve_pool_timeout": number(">=", 0),
        "max_client_conn": integer(">=", 1),
        "max_db_connections": integer(">=", 0),
        "query_wait_timeout": number(">=", 0),
        "server_idle_timeout": number(">=", 0),
        "server_lifetime": number(">=", 0),
        "server_login_retry": number(">=", 0),
        "server_round_robin": flag,
        "network_rtt": number(">=", 0),
        "connect_time": parse_distribution,
    }

    pool_mode: Literal["session", "transaction", "statement"] = "session"
    default_pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_client_conn: int = 100
    max_db_connections: int = 0  # 0 = no limit
    query_wait_timeout: float = 120.0  # 0 = wait forever
    server_idle_timeout: float = 600.0  # 0 = never
    server_lifetime: float = 3600.0  # 0 = a server is used once, then closed
    server_login_retry: float = 15.0
    server_round_robin: bool = False
    network_rtt: float = 0.00005  # the extra hop: application -> PgBouncer -> Postgres
    connect_time: Distribution = Constant(0.0003)  # a client's login at PgBouncer

    def check(self, field: str, given: Mapping[str, object]) -> None:
        if self.min_pool_size > self.default_pool_size:
            raise ScenarioError(
                f"{field}.min_pool_size" if field else "min_pool_size",
                f"must be an integer <= default_pool_size ({self.default_pool_size})",
                self.min_pool_size,
            )

    def server_limit(self) -> int:
        """The most server connections PgBouncer opens to Postgres."""
        limit = self.default_pool_size + self.reserve_pool_size
        if self.max_db_connections:
            limit = min(limit, self.max_db_connections)
        return limit


class ClientRefused(ConnectionRefused):
    """PgBouncer refused a client login: ``max_client_conn`` reached."""

    message = "no more connections allowed (max_client_conn)"


class _Waiter:
    """A client whose query waits for a server: its event, since when, and for whom."""

    __slots__ = ("event", "since", "client", "done")

    def __init__(self, event: simpy.Event, since: float, client: Connection) -> None:
        self.event = event
        self.since = since
        self.client = client
        self.done = False


class PgBouncer:
    """One PgBouncer pool (one database and user) in front of the primary.

    To the applications' pools it is a server (the interface of
    :class:`~simlib.database.DatabaseServer`): they connect to it, close,
    and send their queries through it.  Their connections are PgBouncer's
    *clients*.  Its own connections to ``primary`` are its *servers*, opened
    and closed by the rules in the module doc.  The request path
    (:mod:`simlib.request`) calls :meth:`link` before a query, and
    :meth:`statement_done` and :meth:`transaction_done` after.

    ``uniform`` draws the janitor's phase: its ticks fall anywhere within
    the first third of a second, as a live PgBouncer's do relative to a run.
    """

    multiplexed = True

    def __init__(
        self,
        env: simpy.Environment,
        config: PgBouncerConfig,
        primary: DatabaseServer,
        connect_time: Callable[[], float],
        recorder: Recorder,
        uniform: Callable[[], float],
    ) -> None:
        self.env = env
        self.config = config
        self.primary = primary
        self.recorder = recorder
        self.connect_time = connect_time
        # A round trip through PgBouncer crosses both hops.
        self.rtt = primary.rtt + config.network_rtt
        self.cpu: ProcessorSharing | None = primary.cpu
        self.max_connections = config.max_client_conn
        self.clients = 0  # client connections, logins in progress included
        self.links: dict[Connection, Connection] = {}  # client -> its linked server
        # client -> when its transaction's first statement reached PgBouncer
        # (SHOW STATS's xact_start: set before find_server, so the wait counts)
        self.xact_start: dict[Connection, float] = {}
        self.idle: deque[Connection] = deque()  # idle servers, the next to use first
        self.idle_since: dict[Connection, float] = {}
        self.servers = 0  # server connections, the one logging in included
        self.launching = False
        self.last_failed: float | None = None  # when the last failed launch began
        self.last_lifetime_close = -math.inf
        self.waiting: deque[_Waiter] = deque()
        self.waiting_live = 0
        self.limit = config.default_pool_size
        self.per_statement = config.pool_mode == "statement"
        self.db_limit = config.max_db_connections or math.inf
        env.process(self._janitor(uniform() * JANITOR_PERIOD))

    # -- the application side: client connections ---------------------------
    def begin_connect(self) -> float:
        self.clients += 1
        return self.connect_time()

    def finish_connect(self) -> Connection:
        if self.clients > self.config.max_client_conn:
            self.clients -= 1
            self.recorder.refused()
            raise ClientRefused()
        self.recorder.connection_opened()
        return Connection(self.env.now)

    def abandon_connect(self) -> None:
        self.clients -= 1

    def connect(self) -> Generator[simpy.Event, Any, Connection]:
        delay = self.begin_connect()
        if delay > 0:
            yield self.env.timeout(delay)
        return self.finish_connect()

    def preopen(self) -> Connection:
        if self.clients >= self.config.max_client_conn:
            raise ClientRefused()
        self.clients += 1
        self.recorder.connection_opened(counted=False)
        return Connection(self.env.now)

    def close(self, conn: Connection) -> None:
        """A client disconnects; in session mode its server is reset and released."""
        if conn.closed:
            return
        conn.closed = True
        self.clients -= 1
        self.recorder.connection_closed()
        server = self.links.pop(conn, None)
        self.xact_start.pop(conn, None)
        if server is not None:
            # server_reset_query (DISCARD ALL) runs before the server is idle.
            reset = self.primary.rtt if self.config.pool_mode == "session" else 0.0
            if reset > 0:
                self.env.timeout(reset).callbacks.append(lambda _t: self._release(server))
            else:
                self._release(server)

    def orphan(self, conn: Connection) -> None:
        """A client that vanished: PgBouncer keeps it (no ``client_idle_timeout`` modelled)."""
        self.recorder.connection_closed()
        # Still a client to PgBouncer (counted against max_client_conn), and
        # in session mode its server stays linked to it.
        conn.closed = True

    def idle_in_transaction(self, conn: Connection, seconds: float) -> None:
        """A client leaves its transaction open: its linked server idles in it on Postgres."""
        server = self.links.get(conn)
        if server is None:
            return
        server.on_lost = lambda: self._server_lost(server, conn)
        self.primary.idle_in_transaction(server, seconds)

    def _server_lost(self, server: Connection, client: Connection) -> None:
        # Postgres ended the session: PgBouncer closes the client linked to it.
        self.links.pop(client, None)
        self.xact_start.pop(client, None)
        self.servers -= 1
        if not client.closed:
            client.closed = True
            self.clients -= 1
            self.recorder.connection_closed()
            if client.on_lost is not None:
                client.on_lost()
        self._launch()

    # -- the request path's hooks -----------------------------------------
    def link(self, conn: Connection, asked: float) -> simpy.Event | None:
        """Link ``conn`` to a server before its query: None at once, else an event.

        The event's value is True when a server was linked, False when the
        janitor disconnected the client for ``query_wait_timeout``.
        """
        if conn in self.links:
            self.recorder.pgbouncer_waited(asked, 0.0)
            return None
        server = self._take_idle()
        if server is not None:
            self.links[conn] = server
            self.xact_start[conn] = asked
            self.recorder.pgbouncer_waited(asked, 0.0)
            return None
        waiter = _Waiter(self.env.event(), asked, conn)
        self.waiting.append(waiter)
        self.waiting_live += 1
        timeout = self.config.reserve_pool_timeout
        if self.config.reserve_pool_size and timeout:
            self.env.timeout(timeout).callbacks.append(lambda _t: self._launch())
        self._launch()
        return waiter.event

    def statement_done(self, conn: Connection) -> None:
        if self.config.pool_mode == "statement":
            self._unlink(conn)

    def transaction_done(self, conn: Connection) -> None:
        if self.config.pool_mode == "transaction":
            self._unlink(conn)

    def _unlink(self, conn: Connection) -> None:
        server = self.links.pop(conn, None)
        started = self.xact_start.pop(conn, None)
        if started is not None:
            self.recorder.pgbouncer_unlinked(started)
        if server is not None:
            self._release(server)

    # -- servers ----------------------------------------------------------
    def _take_idle(self) -> Connection | None:
        while self.idle:
            server = self.idle.popleft()
            del self.idle_since[server]
            if not server.closed:
                return server
        return None

    def _release(self, server: Connection) -> None:
        """``release_server``: lifetime first, then the first waiter, else idle (LIFO)."""
        if server.closed:  # Postgres ended it meanwhile
            return
        if self._life_over(server):
            self._close_server(server)
            self.last_lifetime_close = self.env.now
            self._launch()
            return
        if self._hand(server):
            return
        self.idle_since[server] = self.env.now
        if self.config.server_round_robin:
            self.idle.append(server)
        else:
            self.idle.appendleft(server)

    def _hand(self, server: Connection) -> bool:
        """Give ``server`` to the first client still waiting; False when none waits."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if waiter.done:
                continue
            waiter.done = True
            self.waiting_live -= 1
            self.links[waiter.client] = server
            self.xact_start[waiter.client] = waiter.since
            self.recorder.pgbouncer_waited(waiter.since, self.env.now - waiter.since)
            waiter.event.succeed(True)
            return True
        return False

    def _life_over(self, server: Connection) -> bool:
        """``life_over``: past ``server_lifetime``, and the last such close far enough back."""
        lifetime = self.config.server_lifetime
        now = self.env.now
        if now - server.created < lifetime:
            return False
        gap = lifetime / self.limit
        return now - self.last_lifetime_close >= gap

    def _close_server(self, server: Connection) -> None:
        self.servers -= 1
        self.idle_since.pop(server, None)
        self.primary.close(server)

    def _may_launch(self) -> bool:
        """``launch_new_connection``'s rules: one at a time, the pool's size, the reserve."""
        config = self.config
        now = self.env.now
        if self.launching:
            return False
        if self.last_failed is not None and now - self.last_failed < config.server_login_retry:
            return False
        if self.servers >= self.limit:
            if not (config.reserve_pool_timeout and config.reserve_pool_size):
                return False
            first = self._first_waiter()
            if first is None or now - first.since < config.reserve_pool_timeout:
                return False
            if self.servers >= self.limit + config.reserve_pool_size:
                return False
        return self.servers < self.db_limit

    def _first_waiter(self) -> _Waiter | None:
        while self.waiting and self.waiting[0].done:
            self.waiting.popleft()
        return self.waiting[0] if self.waiting else None

    def _launch(self, for_minimum: bool = False) -> None:
        """Open a server if clients wait (or for ``min_pool_size``) and the rules allow."""
        if not for_minimum and self.waiting_live == 0:
            return
        if self._may_launch():
            self.launching = True
            self.servers += 1
            self.env.process(self._login())

    def _login(self) -> Generator[simpy.Event, Any, None]:
        started = self.env.now
        try:
            server = yield from self.primary.connect()
        except ConnectionRefused:
            # Postgres said no (max_connections): wait server_login_retry.
            self.servers -= 1
            self.launching = False
            self.last_failed = started
            return
        self.launching = False
        self.last_failed = None
        self._release(server)
        self._launch()

    def _janitor(self, phase: float) -> Generator[simpy.Event, Any, None]:
        """Every 1/3 s: the waiting clients' timeout, idle servers, ``min_pool_size``."""
        env = self.env
        config = self.config
        yield env.timeout(phase)
        while True:
            now = env.now
            wait_limit = config.query_wait_timeout
            if wait_limit and self.waiting_live:
                for waiter in self.waiting:
                    if not waiter.done and now - waiter.since > wait_limit:
                        self._disconnect_waiter(waiter)
            self._check_idle(now)
            if (self.servers < config.min_pool_size and self.clients > 0):
                self._launch(for_minimum=True)
            self._launch()  # a login retry, a reserve that is due
            yield env.timeout(JANITOR_PERIOD)

    def _disconnect_waiter(self, waiter: _Waiter) -> None:
        # "query_wait_timeout": the client's connection is closed under it.
        waiter.done = True
        self.waiting_live -= 1
        client = waiter.client
        if not client.closed:
            client.closed = True
            self.clients -= 1
            self.recorder.connection_closed()
        waiter.event.succeed(False)

    def _check_idle(self, now: float) -> None:
        """``check_unused_servers``: close idle servers past their idle timeout or lifetime."""
        config = self.config
        for server in list(self.idle):
            idle = now - self.idle_since[server]
            if (config.server_idle_timeout and idle > config.server_idle_timeout
                    and (config.min_pool_size == 0 or self.servers > config.min_pool_size)):
                self.idle.remove(server)
                self._close_server(server)
            elif now - server.created >= config.server_lifetime and self._life_over(server):
                self.idle.remove(server)
                self._close_server(server)
                self.last_lifetime_close = now
