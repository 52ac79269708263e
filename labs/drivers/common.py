"""What every live driver shares: the run context, request records, the query,
error classification, and the thread-based request path.

A *driver* wraps one real pool library.  The executor (labs/executor.py)
builds a :class:`RunContext` (clock, application_name, where connects are
counted), opens the driver, lets a load generator (labs/loadgen.py) call
``serve(record)`` for every request, and closes the driver.  Everything a
driver measures goes into the request's :class:`Record` or into the context's
connect log; the executor turns those into simlib's metrics afterwards.

All times are ``time.perf_counter()`` seconds *relative to the run's start*
(``ctx.now()``), so records from threads, the asyncio loop and the monitor
share one clock.

Outcomes follow simlib.metrics: ``OK``, ``TIMEOUT`` (the pool refused to hand
out a connection under its rules: QueuePool ``TimeoutError``, psycopg2
``PoolError`` "exhausted", psycopg_pool ``PoolTimeout``/``TooManyRequests``,
asyncpg ``acquire(timeout=...)`` expiring) and ``ERROR`` (anything else; a
server refusal ``53300 too_many_connections`` is an error and is also counted
as a refusal).
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from simlib.metrics import ERROR, OK, TIMEOUT

__all__ = [
    "ERROR",
    "OK",
    "TIMEOUT",
    "TOO_MANY_CONNECTIONS",
    "BIG_TIMEOUT",
    "CURRENT_RECORD",
    "KEYED_TABLE",
    "PoolTimeoutError",
    "QuerySpec",
    "Record",
    "RunContext",
    "SyncDriver",
    "classify",
    "failed",
]

#: SQLSTATE of "sorry, too many clients already" / "remaining connection slots are reserved".
TOO_MANY_CONNECTIONS = "53300"

#: The keyed path's table: one row per key, ``(key int, version bigint)``.
KEYED_TABLE = "labs_kv"

#: What a scenario's ``inf`` timeout becomes for libraries that need a number
#: (threading waits accept at most threading.TIMEOUT_MAX): about 11 days.
BIG_TIMEOUT = 1e6


class PoolTimeoutError(Exception):
    """Raised by drivers to mark a pool-level refusal when the library has no class of its own."""


@dataclass(slots=True)
class Record:
    """One request, as measured.  Times are run-relative seconds; None = did not happen."""

    index: int
    scheduled: float  # when the load generator meant to send it (latency starts here)
    service: float  # seconds of database time drawn for it
    started: float | None = None  # when a thread/task actually began it
    got: float | None = None  # connection in hand
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


#: The request the current thread or asyncio task is serving (set by ``serve``).
CURRENT_RECORD: ContextVar[Record | None] = ContextVar("labs_current_record", default=None)


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """How a service time becomes SQL: ``pg_sleep(s)`` or a calibrated CPU burn.

    ``select_one`` (bench/bench_harness.py) replaces both with a plain
    ``SELECT 1`` without a parameter, so the harness can be timed against
    ``pgbench`` on the cheapest possible query.  Only the asyncpg driver
    supports it (it sends :meth:`params`); the thread-based drivers always
    pass one parameter.
    """

    cpu_bound: bool = False
    seconds_per_row: float = 0.0  # from calibration (cpu_bound only)
    select_one: bool = False  # plain SELECT 1, no parameter (service time ignored)

    def argument(self, service: float) -> float | int:
        """The query's single parameter for ``service`` seconds of database time."""
        if not self.cpu_bound:
            return max(0.0, float(service))
        return max(1, min(2_000_000_000, round(service / self.seconds_per_row)))

    def params(self, service: float) -> tuple[float | int, ...]:
        """The query's parameters: ``(argument(service),)``, or none for ``select_one``."""
        return () if self.select_one else (self.argument(service),)

    def keyed_sql(self, write: bool, style: str) -> str:
        """The keyed path's statement, with placeholders for ``key`` and ``arg``.

        A read returns the key's version as of the statement's start (its
        snapshot) and then does the service time's work, in one statement::

            SELECT (SELECT version FROM labs_kv WHERE key = :key), pg_sleep(:arg)

        A write does the work first and then bumps the version, so the row
        lock is held only from the update to the commit, not for the whole
        service time (hot keys would otherwise serialise their writers)::

            WITH work AS MATERIALIZED (SELECT pg_sleep(:arg))
            UPDATE labs_kv SET version = version + 1 FROM work
            WHERE key = :key RETURNING version

        Parameters: ``{"key": k, "arg": a}`` for 'pyformat' and 'named',
        ``(k, a)`` for 'dollar' (see :meth:`keyed_params`).
        """
        key, arg = {
            "pyformat": ("%(key)s", "%(arg)s"),
            "named": (":key", ":arg"),
            "dollar": ("$1", "$2"),
        }[style]
        if self.cpu_bound:
            cast = "::int" if style == "dollar" else ""
            work = f"(SELECT count(*) FROM (SELECT generate_series(1, {arg}{cast})) AS s)"
        else:
            work = f"pg_sleep({arg})"
        if write:
            return (
                f"WITH work AS MATERIALIZED (SELECT {work}) "
                f"UPDATE {KEYED_TABLE} SET version = version + 1 FROM work "
                f"WHERE key = {key} RETURNING version"
            )
        return f"SELECT (SELECT version FROM {KEYED_TABLE} WHERE key = {key}), {work}"

    def keyed_params(self, style: str, key: int, service: float) -> dict | tuple:
        """The parameters of :meth:`keyed_sql` for ``key`` and ``service`` seconds."""
        arg = self.argument(service)
        return (key, arg) if style == "dollar" else {"key": key, "arg": arg}

    def sql(self, style: str) -> str:
        """The statement with a placeholder in ``style``: 'pyformat', 'named' or 'dollar'."""
        if self.select_one:
            return "SELECT 1"
        ph = {"pyformat": "%s", "named": ":arg", "dollar": "$1"}[style]
        if not self.cpu_bound:
            return f"SELECT pg_sleep({ph})"
        cast = "::int" if style == "dollar" else ""
        # generate_series in the select list streams (ProjectSet): no tuplestore,
        # so the cost stays linear in n and never spills to disk.
        return f"SELECT count(*) FROM (SELECT generate_series(1, {ph}{cast})) AS s"


@dataclass
class RunContext:
    """Per-run state shared by driver, load generator and monitor."""

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


def _timeout_classes() -> tuple[type[BaseException], ...]:
    classes: list[type[BaseException]] = [PoolTimeoutError, TimeoutError]
    try:
        import sqlalchemy.exc

        classes.append(sqlalchemy.exc.TimeoutError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import psycopg2.pool

        classes.append(psycopg2.pool.PoolError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import psycopg_pool

        classes += [psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests]
    except ImportError:  # pragma: no cover
        pass
    return tuple(classes)


_TIMEOUTS: tuple[type[BaseException], ...] | None = None


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE carried by a driver exception (or its SQLAlchemy-wrapped original)."""
    for e in (exc, getattr(exc, "orig", None), exc.__cause__):
        if e is None:
            continue
        code = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
    text = str(exc).lower()
    # psycopg2 reports connection-time failures without a pgcode.
    if "too many clients" in text or "remaining connection slots" in text:
        return TOO_MANY_CONNECTIONS
    return None


def classify(exc: BaseException) -> tuple[int, str | None]:
    """(outcome, sqlstate) for an exception raised while serving a request."""
    global _TIMEOUTS
    if _TIMEOUTS is None:
        _TIMEOUTS = _timeout_classes()
    if isinstance(exc, _TIMEOUTS):
        return TIMEOUT, None
    return ERROR, sqlstate_of(exc)


class SyncDriver:
    """Base of the thread-based drivers: one request = checkout, query, release.

    Subclasses implement ``open``, ``close``, ``checkout() -> (handle, waited)``,
    ``execute(handle, arg)`` and ``release(handle, ok)``, and set ``limit``
    (the most connections the pool may hold; sizes the thread pool).
    """

    kind = "?"
    limit = 10

    def __init__(self, scenario, ctx: RunContext) -> None:
        self.scenario = scenario
        self.config = scenario.pool
        self.ctx = ctx

    # -- to implement -------------------------------------------------------
    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def checkout(self):  # -> tuple[handle, bool]
        raise NotImplementedError

    def execute(self, handle, arg) -> None:
        raise NotImplementedError

    def execute_keyed(self, handle, write: bool, key: int, service: float) -> int:
        """The keyed statement (QuerySpec.keyed_sql); commits a write; returns the version."""
        raise NotImplementedError

    def release(self, handle, ok: bool) -> None:
        raise NotImplementedError

    def details(self) -> dict:
        return {}

    # -- the request path -----------------------------------------------------
    def serve(self, rec: Record) -> bool:
        """Carry one request through the pool; fills ``rec``; True if it succeeded."""
        ctx = self.ctx
        rec.started = ctx.now()
        CURRENT_RECORD.set(rec)
        try:
            self.call(rec, None)
            rec.outcome = OK
        except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
            failed(rec, exc)
        rec.finished = ctx.now()
        return rec.outcome == OK

    def call(self, rec: Record, write: bool | None) -> int | None:
        """One database call: checkout, statement, release; fills ``rec``'s times.

        ``write`` None runs the plain statement; True/False the keyed write or
        read of ``rec.key`` (labs/access.py), whose version is returned.  A
        failure is raised after the connection has been given back.
        """
        ctx = self.ctx
        handle = None
        try:
            handle, waited = self.checkout()
            rec.waited = rec.waited or waited
            rec.got = ctx.now()
            if ctx.stopping.is_set():
                raise RuntimeError("run stopped before the query was sent")
            if write is None:
                version = None
                self.execute(handle, ctx.query.argument(rec.service))
            else:
                version = self.execute_keyed(handle, write, rec.key, rec.service)
            rec.query_done = ctx.now()
            h, handle = handle, None
            self.release(h, True)
            rec.released = ctx.now()
            return version
        except BaseException:
            if handle is not None:
                try:
                    self.release(handle, False)
                except Exception:  # noqa: BLE001
                    pass
                rec.released = ctx.now()
            raise


def failed(rec: Record, exc: BaseException) -> None:
    """Record ``exc`` as the request's outcome (see :func:`classify`)."""
    rec.outcome, rec.sqlstate = classify(exc)
    rec.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
