"""What every live driver shares: the driver's hooks, one database call, and outcomes.

A *driver* wraps one real pool library.  The executor (labs/executor.py) opens
it before the run, a load generator (labs/loadgen.py) sends every request
through :meth:`Driver.serve`, and the executor closes it afterwards.  Everything
a driver measures goes into the request's :class:`~labs.records.Record` or into
the context's connect log; labs/live_metrics.py turns those into simlib's
metrics afterwards.

**Extension hooks.**  A driver module (``labs/drivers/<kind>.py``, named after
its simlib pool kind) defines a :class:`Driver` subclass, exports it as
``DRIVER``, and implements five hooks:

* ``open()`` / ``close()``: create the library's pool (engine) and dispose of it;
* ``checkout() -> (handle, waited)``: a connection from the pool, and whether
  the pool was at its limit so the request had to queue (``p_wait``);
* ``execute(handle, rec, write) -> version``: the request's statement; ``write``
  None is the plain statement (``version`` None), True/False the keyed write
  or read of ``rec.key`` (labs/access.py), returning the version;
* ``release(handle, ok)``: give the connection back (``ok`` False after a failure);
* ``details() -> dict``: versions and facts for the run's JSON.

A thread-based driver (``asynchronous = False``) writes them as plain methods
that block; an asyncio driver (``asynchronous = True``) as coroutine functions.
The request path around them, :meth:`Driver.call`, is written once as steps
(:mod:`labs.steps`), so the same text runs on a thread or on the event loop.
``timeouts`` lists the library's exceptions that mean "the pool refused under
its rules"; the package finds every module's ``DRIVER`` by itself.

Outcomes follow simlib.metrics: ``OK``, ``TIMEOUT`` (the pool refused to hand
out a connection under its rules: QueuePool ``TimeoutError``, psycopg2
``PoolError`` "exhausted", psycopg_pool ``PoolTimeout``/``TooManyRequests``,
asyncpg ``acquire(timeout=...)`` expiring) and ``ERROR`` (anything else; a
server refusal ``53300 too_many_connections`` is an error and is also counted
as a refusal).
"""

from __future__ import annotations

from typing import Any, ClassVar

from labs.records import CURRENT_RECORD, ERROR, OK, TIMEOUT, Record, RunContext
from labs.steps import Steps
from simlib.scenario import Scenario

__all__ = [
    "BIG_TIMEOUT",
    "TOO_MANY_CONNECTIONS",
    "Driver",
    "PoolTimeoutError",
    "classify",
    "failed",
    "served",
]

#: SQLSTATE of "sorry, too many clients already" / "remaining connection slots are reserved".
TOO_MANY_CONNECTIONS = "53300"

#: What a scenario's ``inf`` timeout becomes for libraries that need a number
#: (threading waits accept at most threading.TIMEOUT_MAX): about 11 days.
BIG_TIMEOUT = 1e6


class PoolTimeoutError(Exception):
    """Raised by drivers to mark a pool-level refusal when the library has no class of its own."""


#: Timeouts whatever the library: ours, and ``asyncio.TimeoutError`` (= TimeoutError).
GENERIC_TIMEOUTS: tuple[type[BaseException], ...] = (PoolTimeoutError, TimeoutError)


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


def classify(
    exc: BaseException, timeouts: tuple[type[BaseException], ...] = GENERIC_TIMEOUTS
) -> tuple[int, str | None]:
    """(outcome, sqlstate) for an exception raised while serving a request."""
    if isinstance(exc, timeouts):
        return TIMEOUT, None
    return ERROR, sqlstate_of(exc)


def failed(
    rec: Record, exc: BaseException, timeouts: tuple[type[BaseException], ...] = GENERIC_TIMEOUTS
) -> None:
    """Record ``exc`` as the request's outcome (see :func:`classify`)."""
    rec.outcome, rec.sqlstate = classify(exc, timeouts)
    rec.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def served(
    ctx: RunContext,
    rec: Record,
    path: Steps[Any],
    timeouts: tuple[type[BaseException], ...] = GENERIC_TIMEOUTS,
) -> Steps[bool]:
    """Run one request's ``path`` and record its start, end and outcome; True if it succeeded."""
    rec.started = ctx.now()
    CURRENT_RECORD.set(rec)
    try:
        yield from path
        rec.outcome = OK
    except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
        failed(rec, exc, timeouts)
    rec.finished = ctx.now()
    return rec.outcome == OK


class Driver:
    """One pool library, live (see the module doc for the hooks to implement)."""

    kind: ClassVar[str] = "?"
    asynchronous: ClassVar[bool] = False
    #: the library's exceptions for "no connection under the pool's rules"
    timeouts: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        self.scenario = scenario
        self.config: Any = scenario.pool  # the kind's config class; each driver reads its own
        self.ctx = ctx
        #: the most connections the pool may hold (None: no client-side limit);
        #: sizes the load generator's threads
        self.limit: int | None = scenario.pool.connection_limit()
        #: every exception that counts as a pool timeout for this driver (built once:
        #: every request's outcome is classified against it)
        self.pool_timeouts = GENERIC_TIMEOUTS + self.timeouts

    # -- to implement (plain methods, or coroutine functions when asynchronous) --
    def open(self) -> Any:
        raise NotImplementedError

    def close(self) -> Any:
        raise NotImplementedError

    def checkout(self) -> Any:
        raise NotImplementedError

    def execute(self, handle: Any, rec: Record, write: bool | None) -> Any:
        raise NotImplementedError

    def release(self, handle: Any, ok: bool) -> Any:
        raise NotImplementedError

    def details(self) -> dict[str, object]:
        return {"limit": self.limit}

    # -- what the load generator calls, as steps ------------------------------------
    def opening(self) -> Steps[None]:
        """Open the library's pool (one step: blocking, or awaited)."""
        yield self.open, ()

    def closing(self) -> Steps[None]:
        yield self.close, ()

    def serve(self, rec: Record) -> Steps[bool]:
        """The plain request: one database call with the plain statement."""
        return served(self.ctx, rec, self.call(rec, None), self.pool_timeouts)

    def call(self, rec: Record, write: bool | None) -> Steps[int | None]:
        """One database call: checkout, statement, release; fills ``rec``'s times.

        ``write`` None runs the plain statement; True/False the keyed write or
        read of ``rec.key`` (labs/access.py), whose version is returned.  A
        failure is raised after the connection has been given back.
        """
        ctx = self.ctx
        handle = None
        try:
            handle, waited = yield self.checkout, ()
            rec.waited = rec.waited or waited
            rec.got = ctx.now()
            if ctx.stopping.is_set():
                raise RuntimeError("run stopped before the query was sent")
            version = yield self.execute, (handle, rec, write)
            rec.query_done = ctx.now()
            h, handle = handle, None
            yield self.release, (h, True)
            rec.released = ctx.now()
            return None if version is None else int(version)
        except GeneratorExit:
            raise
        except BaseException:
            # Also on cancellation (the run being wound down): a connection that
            # is never given back makes closing the pool wait for it.
            if handle is not None:
                try:
                    yield self.release, (handle, False)
                except Exception:  # noqa: BLE001 - the request's own failure is what counts
                    pass
                rec.released = ctx.now()
            raise
