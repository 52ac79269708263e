"""What every live driver shares: the driver's hooks, one database call, and outcomes.

A *driver* wraps one real pool library.  The executor (labs/executor.py) opens
it before the run, a load generator (labs/loadgen.py) sends every request
through :meth:`Driver.serve`, and the executor closes it afterwards.  Everything
a driver measures goes into the request's :class:`~labs.records.Record` or into
the context's connect log; labs/live_metrics.py turns those into simlib's
metrics afterwards.

**Extension hooks.**  A driver module (``labs/drivers/<kind>.py``, named after
its simlib pool kind) defines a :class:`Driver` subclass, exports it as
``DRIVER``, and implements these hooks:

* ``open()`` / ``close()``: create the library's pool (engine) and dispose of it;
* ``checkout() -> handle``: a connection from the pool;
* ``must_wait() -> bool`` (plain, non-blocking; default False): whether the
  pool is at its limit so a checkout now has to queue (``p_wait``), read just
  before ``checkout`` -- so a request that then times out has waited too;
* ``execute(handle, rec, write) -> version``: the request's statement; ``write``
  None is the plain statement (``version`` None), True/False the keyed write
  or read of ``rec.key`` (labs/access.py), returning the version;
* ``release(handle, ok)``: give the connection back (``ok`` False after a failure);
* ``details() -> dict``: versions and facts for the run's JSON.

Three more serve leaks (``[client] leak_fraction``), with defaults:
``begin(handle)`` opens a transaction before the statement of a request that
will leave one open (default: nothing, because the library has one open after
the statement already), ``commit(handle)`` ends the transaction of a leaking
request that leaves none open (default: nothing, autocommit), and
``lost(handle) -> bool`` says, without a round trip, whether the server has
ended the session (default False).

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

import asyncio
import heapq
import itertools
import select
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from labs.records import CURRENT_RECORD, ERROR, OK, TIMEOUT, Record, RunContext
from labs.steps import Steps, run, run_async
from simlib.scenario import Scenario

__all__ = [
    "BIG_TIMEOUT",
    "IDLE_IN_TRANSACTION_TIMEOUT",
    "TOO_MANY_CONNECTIONS",
    "Driver",
    "LoopCloser",
    "PoolTimeoutError",
    "ThreadCloser",
    "classify",
    "failed",
    "served",
    "socket_has_news",
]

#: SQLSTATE of "sorry, too many clients already" / "remaining connection slots are reserved".
TOO_MANY_CONNECTIONS = "53300"

#: SQLSTATE of "terminating connection due to idle-in-transaction timeout".
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"

#: Seconds the end of a run waits for the leaked connections' releases to finish.
FLUSH_TIMEOUT = 10.0

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


def socket_has_news(fileno: int) -> bool:
    """True when the server has sent something on an idle connection's socket.

    An idle session gets nothing unasked but its own end: Postgres sends
    ``FATAL`` (an idle-in-transaction timeout, a terminated backend) and
    closes.  So a readable socket -- data, or the end of the stream -- means
    the session is gone.  Non-blocking (``select`` with a zero timeout), and
    it reads nothing, so the library finds everything where it left it.
    """
    if fileno < 0:
        return True
    try:
        readable, _, _ = select.select([fileno], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class ThreadCloser:
    """Gives leaked connections back when their time is up: one timer thread, one heap.

    ``hold(handle, rec)`` parks a connection until ``rec.leak`` seconds from
    now; the thread then runs ``give_back(handle, rec)`` (the driver's normal
    release path, as steps) on itself.  ``flush()`` gives back everything
    still held at once and waits for it (the end of the run, before the pool
    is closed).
    """

    def __init__(self, give_back: Callable[[Any, Record], Steps[None]],
                 clock: Callable[[], float]) -> None:
        self.give_back = give_back
        self.clock = clock
        self._heap: list[tuple[float, int, Any, Record]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._flushing = False
        self._thread: threading.Thread | None = None
        self.held_max = 0

    def hold(self, handle: Any, rec: Record) -> None:
        with self._cv:
            heapq.heappush(self._heap, (self.clock() + rec.leak, next(self._seq), handle, rec))
            self.held_max = max(self.held_max, len(self._heap))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="labs-leak-closer",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def _next(self) -> tuple[Any, Record] | None:
        """The next connection due (waiting for it); None when flushed and empty."""
        with self._cv:
            while True:
                if not self._heap:
                    if self._flushing:
                        return None
                    self._cv.wait()
                    continue
                delay = self._heap[0][0] - self.clock()
                if delay <= 0 or self._flushing:
                    _, _, handle, rec = heapq.heappop(self._heap)
                    return handle, rec
                self._cv.wait(delay)

    def _loop(self) -> None:
        while (item := self._next()) is not None:
            run(self.give_back(*item))  # outside the lock: requests may park meanwhile

    def flush(self) -> None:
        """Give back every connection still held, now, and wait (bounded) for it."""
        with self._cv:
            self._flushing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=FLUSH_TIMEOUT)


class LoopCloser:
    """The asyncio closer: ``loop.call_later`` starts a task that gives the connection back."""

    def __init__(self, give_back: Callable[[Any, Record], Steps[None]]) -> None:
        self.give_back = give_back
        self._timers: dict[int, tuple[asyncio.TimerHandle, Any, Record]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count()
        self.held_max = 0

    def hold(self, handle: Any, rec: Record) -> None:
        key = next(self._seq)
        timer = asyncio.get_running_loop().call_later(rec.leak, self._fire, key)
        self._timers[key] = (timer, handle, rec)
        self.held_max = max(self.held_max, len(self._timers))

    def _fire(self, key: int) -> None:
        _, handle, rec = self._timers.pop(key)
        task = asyncio.get_running_loop().create_task(run_async(self.give_back(handle, rec)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Give back every connection still held, now, and wait (bounded) for it."""
        for key in list(self._timers):
            self._timers[key][0].cancel()
            self._fire(key)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=FLUSH_TIMEOUT)


Closer = ThreadCloser | LoopCloser


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
        client = scenario.client
        #: a leaking request leaves its transaction open ([client] leak_in_transaction)
        self.leak_in_transaction = client.leak_in_transaction
        #: what gives leaked connections back (None: the scenario does not leak)
        self.closer: Closer | None = None
        if client.leak_fraction > 0:
            self.closer = (LoopCloser(self.give_back) if self.asynchronous
                           else ThreadCloser(self.give_back, ctx.now))

    # -- to implement (plain methods, or coroutine functions when asynchronous) --
    def open(self) -> Any:
        raise NotImplementedError

    def close(self) -> Any:
        raise NotImplementedError

    def checkout(self) -> Any:
        raise NotImplementedError

    def must_wait(self) -> bool:
        """The pool is at its limit: a checkout now queues (read without the pool's lock)."""
        return False

    def execute(self, handle: Any, rec: Record, write: bool | None) -> Any:
        raise NotImplementedError

    def release(self, handle: Any, ok: bool) -> Any:
        raise NotImplementedError

    def details(self) -> dict[str, object]:
        return {"limit": self.limit}

    # -- leaks: defaults (plain methods; an asyncio driver may make them coroutines) --
    def begin(self, handle: Any) -> Any:
        """Open a transaction for a request that will leave it open (default: one is open)."""
        return None

    def commit(self, handle: Any) -> Any:
        """End a leaking request's transaction now, so it idles outside one (default: none)."""
        return None

    def lost(self, handle: Any) -> bool:
        """Whether the server has ended this checked-out session (no round trip)."""
        return False

    def keeps_transaction(self, rec: Record, write: bool | None) -> bool:
        """This request leaves its transaction open (a leaking read or plain statement).

        A leaking write commits as usual (the keyed path counts versions from
        the commit) and keeps its connection idle outside a transaction.
        """
        return rec.leak > 0 and self.leak_in_transaction and not write

    # -- what the load generator calls, as steps ------------------------------------
    def opening(self) -> Steps[None]:
        """Open the library's pool (one step: blocking, or awaited)."""
        yield self.open, ()

    def closing(self) -> Steps[None]:
        """Give back the leaked connections still held, then close the pool."""
        if self.closer is not None:
            yield self.closer.flush, ()
        yield self.close, ()

    def serve(self, rec: Record) -> Steps[bool]:
        """The plain request: one database call with the plain statement."""
        return served(self.ctx, rec, self.call(rec, None), self.pool_timeouts)

    def call(self, rec: Record, write: bool | None) -> Steps[int | None]:
        """One database call: checkout, statement, release; fills ``rec``'s times.

        ``write`` None runs the plain statement; True/False the keyed write or
        read of ``rec.key`` (labs/access.py), whose version is returned.  A
        failure is raised after the connection has been given back.

        A request that leaks (``rec.leak > 0``) answers after its statement
        and hands its connection to the closer, which gives it back
        ``rec.leak`` seconds later through :meth:`give_back`; meanwhile the
        session idles inside its transaction (``leak_in_transaction``) or,
        committed now, outside one.
        """
        ctx = self.ctx
        handle = None
        if rec.asked is None:  # the keyed path may call twice (a failover): the first ask
            rec.asked = ctx.now()
        try:
            rec.waited = rec.waited or self.must_wait()
            try:
                handle = yield self.checkout, ()
            except BaseException:
                rec.gave_up = ctx.now()
                raise
            rec.got = ctx.now()
            if ctx.stopping.is_set():
                raise RuntimeError("run stopped before the query was sent")
            leaks = rec.leak > 0 and self.closer is not None
            keep_open = leaks and self.keeps_transaction(rec, write)
            if keep_open:
                yield self.begin, (handle,)
            version = yield self.execute, (handle, rec, write)
            rec.query_done = ctx.now()
            if leaks:
                if not keep_open:
                    yield self.commit, (handle,)
                h, handle = handle, None
                rec.leaked = True
                self.closer.hold(h, rec)  # type: ignore[union-attr]  # leaks: not None
                return None if version is None else int(version)
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

    def give_back(self, handle: Any, rec: Record) -> Steps[None]:
        """The closer's end of a leak: the driver's normal release, however it goes.

        When the server ended the session meanwhile (an idle-in-transaction
        timeout), the release fails or finds the connection dead, and the
        library gets rid of it its own way: SQLAlchemy invalidates the
        record (its next checkout reconnects), psycopg2's ``putconn`` raises
        from its rollback and is called again to close it, psycopg_pool
        discards a BAD connection and opens another in the background,
        asyncpg has already put the holder back (it reconnects on the next
        acquire).  ``rec.terminated`` records that the session was gone.
        """
        gone = self.lost(handle)
        try:
            yield self.release, (handle, True)
        except Exception as exc:  # noqa: BLE001 - measured, then cleaned up
            rec.leak_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            gone = (gone or bool(getattr(exc, "connection_invalidated", False))
                    or sqlstate_of(exc) == IDLE_IN_TRANSACTION_TIMEOUT or self.lost(handle))
            try:
                yield self.release, (handle, False)
            except Exception:  # noqa: BLE001 - the library's second chance; nothing more to do
                pass
        rec.terminated = gone
        rec.released = self.ctx.now()
