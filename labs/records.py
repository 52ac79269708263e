"""What a live run measures, and the clock it measures it on.

The executor (:mod:`labs.executor`) builds one :class:`RunContext` per run
(its clock, the ``application_name`` that tells the run's connections apart on
the server, the query to send (:mod:`labs.query`), where connects are logged), a load generator
(:mod:`labs.loadgen`) makes one :class:`Record` per request, and the request
path (:mod:`labs.drivers.base`, :mod:`labs.access`) fills the record in.
Afterwards :mod:`labs.live_metrics` turns the records into simlib's metrics
with simlib's rules.

All times are ``time.perf_counter()`` seconds *relative to the run's start*
(``ctx.now()``), so records from threads, the asyncio loop and the probes
share one clock.

Outcomes follow simlib.metrics: ``OK``, ``TIMEOUT`` (the pool refused to hand
out a connection under its rules) and ``ERROR`` (anything else).
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from labs.query import KEYED_TABLE, QuerySpec
from simlib.metrics import ERROR, OK, TIMEOUT

__all__ = [
    "CURRENT_RECORD",
    "ERROR",
    "KEYED_TABLE",
    "OK",
    "TIMEOUT",
    "Record",
    "RunContext",
]

@dataclass(slots=True)
class Record:
    """One request, as measured.  Times are run-relative seconds; None = did not happen."""

    index: int
    scheduled: float  # when the load generator meant to send it (latency starts here)
    service: float  # seconds of database time drawn for it
    started: float | None = None  # when a thread/task actually began it
    asked: float | None = None  # when it (first) asked a pool for a connection
    got: float | None = None  # connection in hand
    gave_up: float | None = None  # when the checkout raised (timed out, refused, failed)
    query_done: float | None = None  # query result back
    released: float | None = None  # connection given back to the pool (or closed)
    finished: float | None = None
    outcome: int | None = None  # OK / TIMEOUT / ERROR; None = unfinished
    waited: bool = False
    connect_s: float = 0.0  # seconds this request itself spent opening connections
    sqlstate: str | None = None
    error: str | None = None
    # -- the keyed request path (labs/access.py): cache, replicas, versions --
    key: int = -1  # the key read or written (-1: the plain path, no key)
    write: bool = False
    client: int = -1  # who sent it (closed-loop client, or open-loop user; -1: nobody)
    newest: int = 0  # newest version committed on the primary when the request began
    version: int | None = None  # the version read (or written)
    source: str | None = None  # "cache", "coalesced", "primary" or "replica<i>"
    cache_error: bool = False  # a Redis call failed: the read fell back to the database
    failover: bool = False  # its replica failed: the read went to the primary
    # -- leaks ([client] leak_fraction): the connection kept after the answer --
    leak: float = 0.0  # seconds it keeps its connection after answering (0: it does not leak)
    leaked: bool = False  # it answered and left its connection to the closer
    terminated: bool = False  # the server had ended the leaked session when it came back
    leak_error: str | None = None  # what the release of the leaked connection raised


#: The request the current thread or asyncio task is serving (set when it starts).
CURRENT_RECORD: ContextVar[Record | None] = ContextVar("labs_current_record", default=None)


@dataclass
class RunContext:
    """Per-run state shared by driver, load generator and probes."""

    dsn: str
    application_name: str
    query: QuerySpec
    t0: float = field(default_factory=time.perf_counter)
    #: run-relative times at which a new server connection was opened
    connects: list[float] = field(default_factory=list)
    #: seconds each timed connect took (where the driver can time it)
    connect_durations: list[float] = field(default_factory=list)
    #: set when the run is being wound down: requests still queued skip their query
    stopping: threading.Event = field(default_factory=threading.Event)
    #: contexts of the run's other databases (replicas): same clock and logs
    children: list[RunContext] = field(default_factory=list, repr=False)
    #: server settings for every session of the run (``-c name=value`` at connect,
    #: e.g. ``idle_in_transaction_session_timeout`` in ms); empty: the server's own
    session_settings: dict[str, str] = field(default_factory=dict)
    #: the pools reach Postgres through PgBouncer in transaction or statement
    #: mode, where a server connection changes between transactions
    multiplexed: bool = False

    def for_database(self, dsn: str) -> RunContext:
        """A context for another database of the same run (a replica's pool).

        It shares this one's clock, connect logs and stop flag, so connects to
        any database count once, in one frame of time.
        """
        child = RunContext(
            dsn=dsn,
            application_name=self.application_name,
            query=self.query,
            t0=self.t0,
            connects=self.connects,
            connect_durations=self.connect_durations,
            stopping=self.stopping,
            session_settings=self.session_settings,
        )
        self.children.append(child)
        return child

    def restart_clock(self, at: float | None = None) -> None:
        """Make "now" time zero; times already logged move to the new frame (negative).

        ``at``: a ``time.perf_counter()`` value to use as time zero instead of
        now.  perf_counter is the system's monotonic clock on Linux, the same
        in every process, so processes that share one run share its frame.
        """
        t0 = time.perf_counter() if at is None else at
        shift = t0 - self.t0
        self.connects[:] = [t - shift for t in self.connects]
        self.t0 = t0
        for child in self.children:
            child.t0 = t0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def asyncpg_options(self) -> dict[str, int]:
        """asyncpg's connect options: no statement cache behind a multiplexing PgBouncer.

        asyncpg prepares every statement once per connection and reuses it by
        name; when PgBouncer hands the next transaction another server, that
        name is unknown there (``prepared statement "__asyncpg_stmt_1__" does
        not exist``), so the cache is turned off (``statement_cache_size=0``).
        """
        return {"statement_cache_size": 0} if self.multiplexed else {}

    def libpq_options(self) -> dict[str, str]:
        """``session_settings`` as libpq's ``options`` keyword (psycopg2, psycopg); {} if none.

        Set only when there is something to set: a PgBouncer in front refuses
        an ``options`` startup parameter it has not been told to ignore.
        """
        if not self.session_settings:
            return {}
        return {"options": " ".join(f"-c {k}={v}" for k, v in self.session_settings.items())}

    def connected(self, duration: float | None = None) -> None:
        # list.append is atomic under the GIL: safe from any thread.
        self.connects.append(self.now())
        if duration is not None:
            self.connect_durations.append(duration)
            # Charge the connect to the request that waited for it, when it
            # happened on that request's own thread or task (QueuePool, no
            # pool, asyncpg); psycopg_pool connects on its worker threads.
            rec = CURRENT_RECORD.get()
            if rec is not None:
                rec.connect_s += duration
