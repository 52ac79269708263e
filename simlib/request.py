"""One request's trip through a pool to a database server, written once for every workload.

What a web handler with a pool does for each database call, in order:

1. **checkout**: ask the pool for a connection.  The pool's rules decide
   whether the request takes an idle one, opens one (paying ``connect_time``),
   waits, pings it, or gets none (:class:`~simlib.pools.base.PoolTimeout`, or
   the server refusing: :class:`~simlib.database.ConnectionRefused`);
2. **query**: one round trip plus the service time on the server (a
   CPU-bound query shares the server's cores with the others running);
3. **reset**: the client's own Python holding the connection (the
   ``[client]`` table's ``hold``), then the pool's reset on return
   (``ROLLBACK``/``COMMIT``).  Behind PgBouncer the order is the other way
   round for the server's sake: the transaction, and with it PgBouncer's
   server, ends at the reset's answer, and most of the client's own work
   (building the first statement, the pool's return path) lies outside it;
4. **release**: give the connection back under the pool's rules.

A request runs its Python holding the application process's interpreter
(:mod:`simlib.interpreter`) and drops it whenever it waits, so requests of
one process take turns, and who runs first decides who gets a released
connection.  A request that *leaks* (``[client] leak_fraction``) answers
after its query and keeps the connection ``leak_time`` longer, maybe idle in
a transaction that the server ends (``idle_in_transaction_session_timeout``).

:class:`RequestPath` is that sequence; the plain workload
(:mod:`simlib.workload`) and the keyed one (:mod:`simlib.access`: caches,
replicas, versions) both use it, so a rule about *using* a connection lives
here and nowhere else.  A :class:`Backend` is what a request is sent to: the
application's pool for one server (one SQLAlchemy engine per database URL).

The keyed path needs two moments of a query: when it starts (a Postgres
statement's snapshot is taken then, so that is the version a read sees) and
when its result is back (a write commits then).  :meth:`RequestPath.use`
takes them as two optional callbacks.  Without a ``commit`` the query and the
reset are one SimPy timeout, the same time in fewer events.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from simlib.database import Connection, ConnectionRefused, Server
from simlib.interpreter import Interpreter, Unlocked
from simlib.metrics import ERROR, OK, TIMEOUT, Recorder
from simlib.pools.base import PoolModel, PoolTimeout

#: What :meth:`RequestPath.use` returns: outcome (OK / TIMEOUT / ERROR), when the
#: connection was in hand, when the query's result was back (None where it did
#: not happen), and what the ``snapshot`` or ``commit`` callback returned (else 0).
Outcome = tuple[int, float | None, float | None, int]


class Request:
    """One request's state, as the pool and the recorder see it."""

    __slots__ = ("arrival", "waited", "key", "write", "client", "measured", "asked", "woke")

    def __init__(self, arrival: float, client: int = -1) -> None:
        self.arrival = arrival
        self.waited = False  # the pool made it queue (set by the pool)
        self.key = 0
        self.write = False
        self.client = client  # the closed-loop client or open-loop user; -1: nobody
        self.measured = False  # it arrived in the measured window
        self.asked: float | None = None  # when it first asked a pool for a connection
        # Its thread was blocked just before (an arrival, a think time): it
        # pays the waiting part of its dispatch (a wake-up); a thread that
        # goes straight on from its previous request does not.
        self.woke = True


class Backend:
    """The application's pool for one database server."""

    __slots__ = ("pool", "server")

    def __init__(self, pool: PoolModel[Any], server: Server) -> None:
        self.pool = pool
        self.server = server


class Leaks:
    """Which requests keep their connection after answering, and for how long.

    ``[client] leak_fraction`` of them, each for a ``leak_time`` drawn on its
    own stream; with ``leak_in_transaction`` the session idles in an open
    transaction meanwhile (and may be ended by the server).
    """

    def __init__(
        self, fraction: float, uniform: Callable[[], float], time: Callable[[], float],
        in_transaction: bool,
    ) -> None:
        self.fraction = fraction
        self.uniform = uniform
        self.time = time
        self.in_transaction = in_transaction

    def draw(self) -> float:
        """Seconds this request keeps its connection after answering (0: it does not leak)."""
        return self.time() if self.uniform() < self.fraction else 0.0


class RequestPath:
    """Checkout, query, reset, release: one database call of a request (see the module doc).

    The request's process holds ``interpreter`` while its Python runs and
    drops it for every wait (:mod:`simlib.interpreter`).  ``hold`` draws the
    client's CPU while the connection is out; ``leaks`` says which requests
    leak (None: none do).
    """

    def __init__(
        self,
        env: simpy.Environment,
        recorder: Recorder,
        service_time: Callable[[], float],
        hold: Callable[[], float] | None = None,
        interpreter: Interpreter | None = None,
        leaks: Leaks | None = None,
        cpu_share: float = 1.0,
    ) -> None:
        self.env = env
        self.recorder = recorder
        self.service_time = service_time
        self.hold = hold  # the client's own time with the connection; None: free
        self.interpreter = Unlocked(env) if interpreter is None else interpreter
        self.leaks = leaks
        self.cpu_share = cpu_share
        # Without client costs the waits between the query and the release
        # can be one timeout: nothing runs in between that could take time.
        self._merged = hold is None and leaks is None

    def use(
        self,
        request: Request,
        backend: Backend,
        snapshot: Callable[[float], int] | None = None,
        commit: Callable[[], int] | None = None,
    ) -> Generator[simpy.Event, Any, Outcome]:
        """One database call; returns its :data:`Outcome`.

        ``snapshot(got)`` runs when the connection is in hand and the query
        starts; ``commit()`` when its result is back, before the reset.  The
        caller holds the interpreter before and after.
        """
        env, recorder, pool = self.env, self.recorder, backend.pool
        if request.asked is None:
            request.asked = env.now
        try:
            conn = yield from pool.checkout(request)
        except PoolTimeout:
            return TIMEOUT, None, None, 0
        except ConnectionRefused:
            return ERROR, None, None, 0
        got = env.now
        recorder.checked_out()
        if request.measured and recorder.db_queries is not None:
            recorder.db_queries += 1
        version = 0 if snapshot is None else snapshot(got)
        reset = pool.reset_delay(conn)
        server = backend.server
        pooled = server.multiplexed
        # Through a pooler the query may first wait for a server (PgBouncer).
        wait = server.link(conn, got) if pooled else None
        if (wait is None and server.cpu is None and commit is None and self._merged
                and not pool.reset_cpu and not server.per_statement):
            # Round trip + service + reset in one wait: same result, fewer events.
            query = server.rtt + self.service_time()
            yield from self.interpreter.io(query + reset)
            done = got + query
            if pooled:
                server.transaction_done(conn)
        else:
            answered = yield from self._query(server, wait)
            if answered is None:
                # query_wait_timeout: PgBouncer closed this connection.
                yield from pool.discard(conn)
                recorder.checked_in()
                return ERROR, None, None, 0
            done = answered
            if pooled:
                server.statement_done(conn)
            if commit is not None:
                version = commit()
            if (yield from self._give_back(request, conn, backend, reset)):
                return OK, got, done, version  # leaked: it comes back later
        yield from pool.release(conn)
        recorder.checked_in()
        return OK, got, done, version

    def _give_back(self, request: Request, conn: Connection, backend: Backend, reset: float
                   ) -> Generator[simpy.Event, Any, bool]:
        """After the answer: the client's own work and the reset; True if the request leaked.

        Through PgBouncer the transaction ends with the reset's answer: the
        client's own work (building the statement before its first packet, the
        pool's return path after the reset) is outside it, so the server goes
        back before that work, not after.
        """
        pool, server = backend.pool, backend.server
        if server.multiplexed and self.leaks is None:
            yield from self._reset(pool, reset)
            server.transaction_done(conn)
            yield from self._client_work()
            return False
        yield from self._client_work()
        if self._leak(request, conn, backend, reset):
            return True
        yield from self._reset(pool, reset)
        if server.multiplexed:
            server.transaction_done(conn)
        return False

    def _client_work(self) -> Generator[simpy.Event, Any, None]:
        """The client's work while the connection is out (driver, result, return path)."""
        if self.hold is not None:
            yield from self.interpreter.work(self.hold(), self.cpu_share)

    def _reset(self, pool: PoolModel[Any], reset: float) -> Generator[simpy.Event, Any, None]:
        """The pool's reset on return (a ROLLBACK's CPU and round trip), if it has one."""
        if reset:
            yield from self.interpreter.compute(pool.reset_cpu)
            yield from self.interpreter.io(reset)

    def _query(self, server: Server, wait: simpy.Event | None
               ) -> Generator[simpy.Event, Any, float | None]:
        """The query's round trip and service; when its result is back (None: never sent).

        The caller holds the interpreter before and after.  ``wait``: a
        pooler's event to wait for first; the thread is in recv() meanwhile,
        as PgBouncer holds the query until a server is free.  It resumes
        False when PgBouncer gave up on it (``query_wait_timeout``).
        """
        env, interp = self.env, self.interpreter
        if wait is None and server.cpu is None:
            yield from interp.io(server.rtt + self.service_time())
            return env.now
        interp.drop()
        if wait is not None and not (yield wait):
            yield from interp.take()
            return None
        if server.cpu is None:
            yield env.timeout(server.rtt + self.service_time())
        else:
            if server.rtt:
                yield env.timeout(server.rtt)
            yield server.cpu.run(self.service_time())
        yield from interp.take()
        return env.now

    def _leak(self, request: Request, conn: Connection, backend: Backend, reset: float) -> bool:
        """Whether this request leaks its connection; if so, the leak has begun (a process)."""
        leak = 0.0 if self.leaks is None else self.leaks.draw()
        if leak <= 0:
            return False
        if request.measured:
            self.recorder.leaked += 1
        self.env.process(self._leaked(conn, backend, leak, reset))
        return True

    def _leaked(
        self, conn: Connection, backend: Backend, seconds: float, reset: float
    ) -> Generator[simpy.Event, Any, None]:
        """A connection the request kept: given back ``seconds`` after the answer, or found dead.

        The request has answered already; what holds the connection is an
        object closed late (a session the garbage collector finds, a
        background task).  Closing it runs the pool's return path like any
        other; a session the server ended meanwhile comes back broken and
        the pool gets rid of it its own way (:meth:`PoolModel.discard`).
        """
        assert self.leaks is not None
        interp = self.interpreter
        server = backend.server
        pool = backend.pool
        if self.leaks.in_transaction:
            server.idle_in_transaction(conn, seconds)
        yield self.env.timeout(seconds)
        yield from interp.take()
        if conn.closed:
            yield from pool.discard(conn)
        else:
            yield from self._reset(pool, reset)
            server.transaction_done(conn)
            yield from pool.release(conn)
        self.recorder.checked_in()
        interp.drop()
