"""The database server: connections, round trips, and cores shared by queries.

What it models, and which real behaviour it follows:

* **Opening a connection** costs ``connect_time`` (TCP handshake, the startup
  packet, the fork of a Postgres backend process, authentication).  The new
  backend takes a connection slot as soon as it starts (Postgres: a PGPROC in
  ``InitProcess``), but whether an ordinary role may stay is decided late,
  after authentication (``InitPostgres``: unless enough slots are still free,
  ``FATAL: remaining connection slots are reserved for non-replication
  superuser connections``).  So the model counts every attempt in progress
  against ``max_connections`` and decides at the *end* of the connect: an
  attempt is refused when the open connections plus the attempts still
  starting (itself included) exceed the limit.  A refusal costs the whole
  connect time, and doomed attempts crowd out one another while they last,
  which is why a pool that hammers a full server gets refused more than a
  count of open connections suggests.
* **A round trip** (``network_rtt``) is paid by every message the client waits
  for: the query itself, a pre-ping ``SELECT 1``, the ``ROLLBACK``/``COMMIT``
  that resets a connection returned to a pool.
* **Query service time.**  A query that *waits* (``cpu_bound = false``, like
  ``pg_sleep`` or waiting on I/O) simply takes its service time, however many
  run at once.  A *CPU-bound* query needs a core: with ``n`` queries running
  on ``k`` cores, each progresses at rate ``min(1, k/n)``.  This is processor
  sharing, the textbook model of an operating system time-slicing runnable
  backends.  It is why "more connections" stops helping once the cores are
  busy, and why it makes low-variance queries *slower*: every query in the
  crowd finishes late instead of the early ones finishing on time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import Any, Protocol

import simpy

from simlib.config import Database as DatabaseConfig
from simlib.metrics import Recorder


class ConnectionRefused(Exception):
    """The server refused a new connection: ``max_connections`` reached."""

    message = "FATAL: sorry, too many clients already"


class Connection:
    """One server connection (one Postgres backend) as a pool holds it."""

    __slots__ = ("created", "fresh", "queries", "expire_at", "closed", "on_lost")

    def __init__(self, created: float) -> None:
        self.created = created
        # SQLAlchemy skips the pre-ping on a connection's first checkout.
        self.fresh = True
        self.queries = 0
        self.expire_at = float("inf")
        self.closed = False
        #: called when the server ends the session, for a library that notices
        #: at once (asyncpg's protocol sees the socket close); None: nobody does
        self.on_lost: Callable[[], None] | None = None


class Server(Protocol):
    """What an application's pool and its requests use of the server they connect to.

    A :class:`DatabaseServer` when they connect to Postgres itself; a
    connection pooler standing in between (:class:`simlib.pgbouncer.PgBouncer`)
    offers the same, and lends its own server connections in :meth:`link`.
    """

    rtt: float
    cpu: ProcessorSharing | None
    multiplexed: bool
    per_statement: bool

    def begin_connect(self) -> float: ...
    def finish_connect(self) -> Connection: ...
    def abandon_connect(self) -> None: ...
    def connect(self) -> Generator[simpy.Event, Any, Connection]: ...
    def preopen(self) -> Connection: ...
    def close(self, conn: Connection) -> None: ...
    def orphan(self, conn: Connection) -> None: ...
    def idle_in_transaction(self, conn: Connection, seconds: float) -> None: ...
    def link(self, conn: Connection, asked: float) -> simpy.Event | None: ...
    def statement_done(self, conn: Connection) -> None: ...
    def transaction_done(self, conn: Connection) -> None: ...


class ProcessorSharing:
    """``cores`` cores shared equally by the jobs present (``cores = 0``: unlimited).

    Every job progresses at the same rate ``r(n) = min(1, k/n)``.  We follow a
    single "virtual time" V that advances at that rate; a job that arrives at
    virtual time V with work w finishes when V reaches V + w.  So only the job
    with the smallest finishing virtual time matters, and each arrival or
    departure reschedules one wake-up.  Wake-ups that an arrival has made
    obsolete are recognised by a generation number and ignored (SimPy cannot
    cancel a timeout).
    """

    def __init__(self, env: simpy.Environment, cores: int) -> None:
        self.env = env
        self.cores = cores
        self._heap: list[tuple[float, int, simpy.Event]] = []
        self._virtual = 0.0
        self._last = 0.0
        self._generation = 0
        self._count = 0  # tie-breaker for equal finishing times

    def _rate(self) -> float:
        n = len(self._heap)
        return 1.0 if n <= self.cores else self.cores / n

    def _advance(self) -> None:
        now = self.env.now
        if self._heap:
            self._virtual += (now - self._last) * self._rate()
        self._last = now

    def run(self, work: float) -> simpy.Event:
        """An event that fires when ``work`` seconds of CPU have been served."""
        done = self.env.event()
        self._advance()
        self._count += 1
        heapq.heappush(self._heap, (self._virtual + work, self._count, done))
        self._reschedule()
        return done

    def _reschedule(self) -> None:
        self._generation += 1
        if not self._heap:
            return
        finish = self._heap[0][0]
        delay = max(0.0, (finish - self._virtual) / self._rate())
        generation = self._generation
        wake = self.env.timeout(delay)
        wake.callbacks.append(lambda _ev: self._wake(generation))

    def _wake(self, generation: int) -> None:
        if generation != self._generation:
            return  # an arrival or departure since then rescheduled us
        self._advance()
        # Finish every job whose work is done (allow for float rounding).
        while self._heap and self._heap[0][0] <= self._virtual + 1e-12:
            _, _, done = heapq.heappop(self._heap)
            done.succeed()
        self._reschedule()


class DatabaseServer:
    """A Postgres server as the pools and requests see it.

    One object per server, shared by every pool that connects to it: the
    primary and each replica are one each, and the many pools of a fleet of
    application processes all share the primary's.  Its connection slots
    (``max_connections``) and its cores are the server's, whoever uses them.

    What a pool calls, and what a tier that stands between pools and a
    server (a connection pooler, :class:`simlib.pgbouncer.PgBouncer`)
    provides in its place: ``rtt``, ``connect()`` (or ``begin_connect`` /
    ``finish_connect`` / ``abandon_connect`` for a connect that may be
    cancelled), ``preopen()``, ``close(conn)`` and ``orphan(conn)``; a
    request's query runs on ``cpu`` when that is not None.  A pooler also
    sets ``multiplexed`` and implements the request path's three hooks,
    :meth:`link`, :meth:`statement_done` and :meth:`transaction_done`,
    which a server the applications reach directly has no use for.

    ``direct``: the applications connect here themselves, so every
    connection is theirs as well as the server's (both counts move); False
    when a pooler's server connections are all it sees.
    """

    #: True for a tier that lends server connections per transaction (PgBouncer)
    multiplexed = False
    #: True when a server goes back after each statement (PgBouncer's statement mode)
    per_statement = False

    def __init__(
        self,
        env: simpy.Environment,
        config: DatabaseConfig,
        connect_time: Callable[[], float],
        recorder: Recorder,
        cpu_bound: bool,
        direct: bool = True,
    ) -> None:
        self.env = env
        self.direct = direct
        self.idle_session_timeout = config.idle_session_timeout
        self.rtt = config.network_rtt
        self.max_connections = config.max_connections
        self.idle_in_transaction_timeout = config.idle_in_transaction_session_timeout
        self.connect_time = connect_time
        self.recorder = recorder
        self.connections = 0  # open connections
        self.starting = 0  # connection attempts in progress (they hold a slot too)
        # With unlimited cores a CPU-bound query is just a fixed delay, so we
        # only build the processor-sharing machinery when it can matter.
        self.cpu: ProcessorSharing | None = (
            ProcessorSharing(env, config.cores) if cpu_bound and config.cores > 0 else None
        )

    def begin_connect(self) -> float:
        """Start a connection attempt: it takes a slot now; returns how long it takes."""
        self.starting += 1
        return self.connect_time()

    def finish_connect(self) -> Connection:
        """End an attempt begun with :meth:`begin_connect`: the new connection, or refused.

        Refused when the open connections, the other attempts still starting
        and this one exceed ``max_connections``.
        """
        self.starting -= 1
        recorder = self.recorder
        if self.connections + self.starting + 1 > self.max_connections:
            recorder.refused()
            recorder.server_refusal()
            raise ConnectionRefused()
        self.connections += 1
        recorder.server_connection(+1)
        if self.direct:
            recorder.connection_opened()
        return Connection(self.env.now)

    def abandon_connect(self) -> None:
        """The client gave up on an attempt (a timeout cancelled it): free its slot."""
        self.starting -= 1

    def connect(self) -> Generator[simpy.Event, Any, Connection]:
        """Open a connection (a generator for ``yield from``).

        Returns the new :class:`Connection`, or raises :class:`ConnectionRefused`
        after the connect time has passed.
        """
        delay = self.begin_connect()
        if delay > 0:
            yield self.env.timeout(delay)
        return self.finish_connect()

    def preopen(self) -> Connection:
        """A connection that exists before the service starts taking requests.

        Pools that connect in their constructor (psycopg2, asyncpg, psycopg_pool)
        are built before an application serves traffic, so their first
        connections cost the requests nothing.
        """
        if self.connections + self.starting >= self.max_connections:
            raise ConnectionRefused()
        self.connections += 1
        self.recorder.server_connection(+1)
        if self.direct:
            self.recorder.connection_opened(counted=False)
        conn = Connection(self.env.now)
        return conn

    def close(self, conn: Connection) -> None:
        """Close a connection: the client sends Terminate and does not wait."""
        if conn.closed:
            return
        conn.closed = True
        self.connections -= 1
        self.recorder.server_connection(-1)
        if self.direct:
            self.recorder.connection_closed()

    def orphan(self, conn: Connection) -> None:
        """The client vanished without closing ``conn`` (a frozen, reclaimed environment).

        Nobody sends Terminate, so the backend stays, idle, holding its slot,
        until ``idle_session_timeout`` ends it (never, when 0).  The
        application no longer counts it.
        """
        if conn.closed:
            return
        if self.direct:
            self.recorder.connection_closed()
        conn.closed = True  # for the client: gone; the server still holds the slot
        if self.idle_session_timeout:
            timer = self.env.timeout(self.idle_session_timeout)
            timer.callbacks.append(lambda _t: self._end_orphan())

    def _end_orphan(self) -> None:
        self.connections -= 1
        self.recorder.server_connection(-1)
        self.recorder.session_terminated()

    # -- a pooler's hooks: nothing to do when the applications connect here --
    def link(self, conn: Connection, asked: float) -> simpy.Event | None:
        """An event to wait for before ``conn``'s next query reaches Postgres; None: go on."""
        return None

    def statement_done(self, conn: Connection) -> None:
        """A statement's result is back on ``conn``."""

    def transaction_done(self, conn: Connection) -> None:
        """``conn``'s transaction ended (the pool's reset on return is done)."""

    def idle_in_transaction(self, conn: Connection, seconds: float) -> None:
        """``conn`` sits in an open transaction for ``seconds``, doing nothing.

        Postgres shows it ``idle in transaction`` meanwhile.  With
        ``idle_in_transaction_session_timeout`` on and shorter, the backend
        ends the session when it runs out (``FATAL: terminating connection
        due to idle-in-transaction timeout``): its slot is free from then on,
        and the client finds the connection broken when it next uses it.
        """
        recorder = self.recorder
        recorder.idle_in_transaction(+1)
        limit = self.idle_in_transaction_timeout
        if limit and seconds > limit:
            timer = self.env.timeout(limit)
            timer.callbacks.append(lambda _t: self._terminate(conn))
        else:
            timer = self.env.timeout(seconds)
            timer.callbacks.append(lambda _t: recorder.idle_in_transaction(-1))

    def _terminate(self, conn: Connection) -> None:
        self.recorder.idle_in_transaction(-1)
        if not conn.closed:
            self.recorder.session_terminated()
            self.close(conn)
            if conn.on_lost is not None:
                conn.on_lost()
