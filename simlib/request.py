"""One request's trip through a pool to a database server, written once for every workload.

What a web handler with a pool does for each database call, in order:

1. **checkout**: ask the pool for a connection.  The pool's rules decide
   whether the request takes an idle one, opens one (paying ``connect_time``),
   waits, pings it, or gets none (:class:`~simlib.pools.base.PoolTimeout`, or
   the server refusing: :class:`~simlib.database.ConnectionRefused`);
2. **query**: one round trip plus the service time on the server (a
   CPU-bound query shares the server's cores with the others running);
3. **reset**: the pool's reset on return (``ROLLBACK``/``COMMIT``), plus the
   client's own time holding the connection (the ``[client]`` table's ``hold``);
4. **release**: give the connection back under the pool's rules.

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

from simlib.database import ConnectionRefused, DatabaseServer
from simlib.metrics import ERROR, OK, TIMEOUT, Recorder
from simlib.pools.base import PoolModel, PoolTimeout

#: What :meth:`RequestPath.use` returns: outcome (OK / TIMEOUT / ERROR), when the
#: connection was in hand, when the query's result was back (None where it did
#: not happen), and what the ``snapshot`` or ``commit`` callback returned (else 0).
Outcome = tuple[int, float | None, float | None, int]


class Request:
    """One request's state, as the pool and the recorder see it."""

    __slots__ = ("arrival", "waited", "key", "write", "client", "measured")

    def __init__(self, arrival: float, client: int = -1) -> None:
        self.arrival = arrival
        self.waited = False  # the pool made it queue (set by the pool)
        self.key = 0
        self.write = False
        self.client = client  # the closed-loop client or open-loop user; -1: nobody
        self.measured = False  # it arrived in the measured window


class Backend:
    """The application's pool for one database server."""

    __slots__ = ("pool", "server")

    def __init__(self, pool: PoolModel[Any], server: DatabaseServer) -> None:
        self.pool = pool
        self.server = server


class RequestPath:
    """Checkout, query, reset, release: one database call of a request (see the module doc)."""

    def __init__(
        self,
        env: simpy.Environment,
        recorder: Recorder,
        service_time: Callable[[], float],
        hold: Callable[[], float] | None = None,
    ) -> None:
        self.env = env
        self.recorder = recorder
        self.service_time = service_time
        self.hold = hold  # the client's own time with the connection; None: free

    def use(
        self,
        request: Request,
        backend: Backend,
        snapshot: Callable[[float], int] | None = None,
        commit: Callable[[], int] | None = None,
    ) -> Generator[simpy.Event, Any, Outcome]:
        """One database call; returns its :data:`Outcome`.

        ``snapshot(got)`` runs when the connection is in hand and the query
        starts; ``commit()`` when its result is back, before the reset.
        """
        env = self.env
        recorder = self.recorder
        pool = backend.pool
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
        if self.hold is not None:
            # Client work while the connection is out (driver, result, return
            # path): after the result is back, before the pool has it again.
            reset += self.hold()
        server = backend.server
        if server.cpu is None and commit is None:
            # Round trip + service + reset in one timeout: same result, fewer events.
            query = server.rtt + self.service_time()
            yield env.timeout(query + reset)
            done = got + query
        else:
            if server.cpu is None:
                yield env.timeout(server.rtt + self.service_time())
            else:
                if server.rtt:
                    yield env.timeout(server.rtt)
                yield server.cpu.run(self.service_time())
            done = env.now
            if commit is not None:
                version = commit()
            if reset:
                yield env.timeout(reset)
        yield from pool.release(conn)
        recorder.checked_in()
        return OK, got, done, version
