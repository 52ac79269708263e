"""What every pool model shares: its descriptor, its configuration, its interface, its queue.

One pool library is one module of :mod:`simlib.pools`, and the module exports
one :class:`PoolKind` named ``KIND``: everything the project knows about that
library, in one object.

* ``key``: the scenario's ``pool.kind`` (``"sqlalchemy"``); the module, the
  live driver (``labs/drivers/<key>.py``) and every table use the same name;
* ``config``: a :class:`PoolConfig` dataclass with the library's own parameter
  names and defaults, and the rules that check them;
* ``model``: the :class:`PoolModel` subclass that simulates the library;
* ``rules``: the rules modelled, in a sentence or three (the README's table);
* ``source``: where in the library those rules were read;
* ``asynchronous``: its requests are asyncio tasks on one event loop, not
  threads (:mod:`simlib.interpreter`: no forced switches);
* ``call``: how an application creates it, with ``{args}`` for the settings
  (``simlib advise`` prints the recommended ones this way).

Scenario validation, :func:`simlib.pools.make_pool`, the live calibration and
the README's rules table all read these descriptors, so adding a library is
one module: the package finds every module's ``KIND`` by itself.

Extension hooks.  A :class:`PoolConfig` subclass sets ``kind`` and ``RULES``,
and implements :meth:`PoolConfig.connection_limit` and
:meth:`PoolConfig.round_trips` (and :meth:`~simlib.config.Section.check` for
rules between parameters).  A :class:`PoolModel` subclass (generic in its
configuration class, ``PoolModel[QueuePoolConfig]``) implements
:meth:`~PoolModel.checkout`, :meth:`~PoolModel.release` and
:meth:`~PoolModel.discard` (a connection the server ended), and may override
:meth:`~PoolModel.setup` (its own state), :meth:`~PoolModel.start`
(connections opened before traffic) and :meth:`~PoolModel.reset_delay`.

A pool model answers two questions for a request:

* ``checkout(request)``: a generator (use with ``yield from``) that returns a
  :class:`~simlib.database.Connection` once the request has one in hand, or
  raises :class:`PoolTimeout` (no connection within the library's rules) or
  :class:`~simlib.database.ConnectionRefused` (the server said no);
* ``release(conn)``: a generator that gives the connection back, following the
  library's rules for keeping or closing it.

``reset_delay(conn)`` tells how long resetting the connection on return takes
(the ``ROLLBACK``/``COMMIT`` round trip).  The request pays it right after its
query, in the same timeout, which keeps one simulated request down to very few
events (:mod:`simlib.request`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Sized
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import simpy

from simlib.config import Section
from simlib.database import Connection, Server
from simlib.interpreter import Interpreter, Unlocked
from simlib.metrics import Recorder


class Waiting(Protocol):
    """What a pool knows of a request: only whether it had to wait (it sets that)."""

    waited: bool


#: What a checkout or release generator yields to SimPy and returns.
Checkout = Generator[simpy.Event, Any, Connection]
Release = Generator[simpy.Event, Any, None]


class PoolTimeout(Exception):
    """The request got no connection under the pool's rules (timed out, or exhausted)."""


@dataclass(frozen=True, slots=True)
class RoundTrips:
    """Round trips a pool adds around a request's query.

    ``checkout``: at the checkout of a connection it did not just open (a
    pre-ping); ``release``: when the connection is returned (the reset:
    ``ROLLBACK`` or ``COMMIT``).  The model charges ``network_rtt`` for each;
    the live calibration takes the same charges off what it measured, so a
    round trip is never counted twice.
    """

    checkout: int = 0
    release: int = 0


class PoolConfig(Section):
    """A pool library's parameters: its own names and defaults (a frozen dataclass).

    Subclasses set ``kind`` and ``RULES`` and implement the two questions
    the rest of the project asks of any pool: how many connections it may
    hold, and which round trips it adds.
    """

    __slots__ = ()
    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            cls.UNKNOWN = f'not a parameter of pool kind "{cls.kind}"'

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, **Section.to_dict(self)}

    def connection_limit(self) -> int | None:
        """The most connections the pool opens at once; None: no client-side limit."""
        raise NotImplementedError

    def round_trips(self) -> RoundTrips:
        """The round trips it adds around each query (see :class:`RoundTrips`)."""
        return RoundTrips()

    def checkout_wait(self) -> float:
        """The longest a checkout waits at the limit before it fails (0: at once; inf: forever)."""
        return math.inf


class _Waiter:
    """One parked request: the event that resumes it, and whether anyone ended its wait."""

    __slots__ = ("event", "done")

    def __init__(self, event: simpy.Event) -> None:
        self.event = event
        self.done = False


class _Waiters:
    """Parked requests in arrival order, each woken through the interpreter once.

    A waiter whose deadline passed stays in the deque and is skipped when its
    turn comes; removing it from the middle would cost O(n) for nothing.
    """

    #: what a waiter resumes with when its deadline passes first
    EXPIRED: Any = None

    def __init__(self, interpreter: Interpreter) -> None:
        self.interpreter = interpreter
        self.env = interpreter.env
        self._queue: deque[_Waiter] = deque()
        self.live = 0  # waiters still waiting

    def __len__(self) -> int:
        return self.live

    def wait(self, timeout: float) -> simpy.Event:
        """Join the queue; the event fires when woken (holding the interpreter then)."""
        waiter = _Waiter(self.env.event())
        self._queue.append(waiter)
        self.live += 1
        if timeout != float("inf"):
            def expire(_timer: simpy.Event) -> None:
                self._end(waiter, self.EXPIRED)

            self.env.timeout(timeout).callbacks.append(expire)
        return waiter.event

    def _end(self, waiter: _Waiter, value: Any) -> bool:
        if waiter.done:
            return False
        waiter.done = True
        self.live -= 1
        self.interpreter.wake(waiter.event, value)
        return True

    def _wake_first(self, value: Any) -> bool:
        queue = self._queue
        while queue:
            if self._end(queue.popleft(), value):
                return True
        return False


class WaitQueue(_Waiters):
    """Requests waiting for a connection, each *handed* one in turn: a fair, FIFO hand-off.

    psycopg_pool's rule (``_add_to_pool``: ``self._waiting.popleft().set(conn)``):
    a returned connection is assigned to the longest-waiting client before
    anyone else can see it, so nobody overtakes.  PgBouncer hands a released
    server to the first waiting client the same way.

    A waiter resumes with the connection handed to it, or with ``None`` when
    its deadline passes first.
    """

    def hand(self, item: object) -> bool:
        """Give ``item`` to the longest-waiting live waiter; False if none waits."""
        return self._wake_first(item)


class NotifyQueue(_Waiters):
    """Requests waiting on a condition: a return *wakes* the first, who must run to take it.

    The rule of ``threading.Condition`` (SQLAlchemy's ``QueuePool`` waits on
    one: ``sqlalchemy/util/queue.py``) and of ``asyncio.Queue`` (asyncpg's
    pool, SQLAlchemy's ``AsyncAdaptedQueuePool``).  A return puts the
    connection in the idle queue and notifies the first waiter
    (``Condition.notify`` releases ``_waiters[0]``; ``Queue._wakeup_next``
    sets the first getter's future), and that is all.  The connection stays
    in the idle queue for whoever *runs* first: the woken waiter must get the
    GIL (or its turn on the event loop) before it can look, and a thread that
    checks out meanwhile finds the queue not empty and takes it without
    waiting.  The woken waiter then finds it empty and waits again, at the
    back (``while self._empty(): self.not_empty.wait(remaining)``;
    ``while self.empty(): self._getters.append(getter)``).

    A waiter resumes with True when notified, or False when its deadline
    passes first.  The pool model loops around it (see
    :meth:`PoolModel.wait_until_idle`).
    """

    EXPIRED = False

    def notify(self) -> bool:
        """Wake the first waiter still waiting; False if none waits."""
        return self._wake_first(True)


class ClientCosts(Protocol):
    """The CPU seconds the library's Python spends on each operation (``[client]``)."""

    @property
    def ping(self) -> float: ...

    @property
    def reset(self) -> float: ...

    @property
    def connect(self) -> float: ...


@dataclass(frozen=True, slots=True)
class NoCosts:
    """Free Python: what a pool driven alone (a test of its rules) is given."""

    ping: float = 0.0
    reset: float = 0.0
    connect: float = 0.0


C = TypeVar("C", bound=PoolConfig)


class PoolModel(Generic[C]):
    """Base class: holds the environment, the server, the recorder and the configuration.

    ``uniform`` draws uniform numbers on [0, 1) from the replication's "pool"
    stream, for the libraries that jitter (psycopg_pool).  ``interpreter`` is
    the application process's :class:`~simlib.interpreter.Interpreter`: a
    request holds it while the pool's code runs, and the pool drops it around
    every wait (:meth:`blocked`, :meth:`connect`, :meth:`io`), as the real
    library's thread or task does.
    """

    def __init__(
        self,
        env: simpy.Environment,
        server: Server,
        recorder: Recorder,
        config: C,
        uniform: Callable[[], float],
        interpreter: Interpreter | None = None,
        costs: ClientCosts | None = None,
    ) -> None:
        self.env = env
        self.server = server
        self.recorder = recorder
        self.config = config
        self.uniform = uniform
        self.interpreter = Unlocked(env) if interpreter is None else interpreter
        costs = NoCosts() if costs is None else costs
        #: CPU seconds of the library's Python for a pre-ping, a reset, a connect
        self.ping_cpu = costs.ping
        self.reset_cpu = costs.reset
        self.connect_cpu = costs.connect
        trips = config.round_trips()
        #: seconds of the pre-ping at checkout, and of the reset on return
        self.ping = server.rtt * trips.checkout
        self.reset = server.rtt * trips.release
        self.setup()

    def setup(self) -> None:
        """The library's own state: idle connections, waiters, counters (hook)."""

    def start(self) -> None:
        """Open the connections the library opens before the service starts (hook)."""

    def checkout(self, request: Waiting) -> Checkout:
        """A connection for ``request`` under the library's rules (hook; see the module doc)."""
        raise NotImplementedError

    def reset_delay(self, conn: Connection) -> float:
        """Seconds the reset on return takes for ``conn`` (hook)."""
        return self.reset

    def release(self, conn: Connection) -> Release:
        """Give ``conn`` back under the library's rules (hook)."""
        raise NotImplementedError

    def discard(self, conn: Connection) -> Release:
        """``conn`` comes back broken (the server ended it): forget it the library's way (hook)."""
        raise NotImplementedError

    # -- what the hooks use -----------------------------------------------
    def blocked(self, event: simpy.Event) -> Generator[simpy.Event, Any, Any]:
        """Wait for ``event`` (a lock) without holding the interpreter."""
        return self.interpreter.blocked(event)

    def connect(self) -> Generator[simpy.Event, Any, Connection]:
        """Open a connection on the server, not holding the interpreter meanwhile."""
        interp = self.interpreter
        conn: Connection = yield from interp.run_blocking(self.server.connect())
        yield from interp.compute(self.connect_cpu)  # the driver's side: startup, SCRAM
        return conn

    def io(self, seconds: float) -> Generator[simpy.Event, Any, None]:
        """A round trip (a pre-ping) of ``seconds``, not holding the interpreter meanwhile."""
        return self.interpreter.io(seconds)

    def wait_until_idle(
        self, request: Waiting, waiters: NotifyQueue, idle: Sized, timeout: float,
        cancel_on_timeout: bool = False,
    ) -> Generator[simpy.Event, Any, bool]:
        """Wait on ``waiters`` until ``idle`` is not empty when it is our turn to run.

        The loop of ``Condition``-based ``Queue.get(timeout=...)`` and of
        ``asyncio.Queue.get()``: while empty, wait (at the back) for a
        notification or the deadline, then run again and look.  True: ``idle``
        holds a connection *now*, for the caller to take before it drops the
        interpreter; False: the deadline passed.

        ``cancel_on_timeout``: asyncio's ``wait_for`` cancels a getter at its
        deadline even if it was woken and an item waits for it; the woken
        getter then passes its wake-up to the next (``Queue.get``'s
        ``except`` branch).  A ``Condition`` waiter looks first and takes it.
        """
        env = self.env
        deadline = env.now + timeout
        while not idle:
            remaining = deadline - env.now
            if remaining <= 0:
                return False
            request.waited = True
            notified = yield from self.interpreter.parked(waiters.wait(remaining))
            if cancel_on_timeout and env.now >= deadline:
                if notified and idle:
                    waiters.notify()
                return False
        return True


@dataclass(frozen=True, slots=True)
class PoolKind:
    """Everything the project knows about one pool library (see the module doc)."""

    key: str
    config: type[PoolConfig]
    model: type[PoolModel[Any]]
    rules: str
    source: str
    #: asyncio tasks on one event loop (never preempted), not threads
    asynchronous: bool = False
    #: how an application makes this pool, ``{args}`` for its settings (``advise`` prints it)
    call: str = "{args}"

    def __post_init__(self) -> None:
        if self.config.kind != self.key:
            raise ValueError(f"pool kind {self.key!r}: its config says kind {self.config.kind!r}")
