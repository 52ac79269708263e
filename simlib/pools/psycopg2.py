"""psycopg2's ``ThreadedConnectionPool(minconn, maxconn)`` (psycopg2/pool.py).

* The constructor opens ``minconn`` connections.
* ``getconn()`` takes the most recently returned idle connection (the idle
  list is popped from its end).  With none idle it opens a new one, unless
  ``maxconn`` connections are already in use: then it raises
  ``PoolError("connection pool exhausted")`` at once.  It never waits.
* ``putconn()`` keeps the connection while fewer than ``minconn`` are idle,
  rolling back its open transaction first; otherwise it closes it.  So above
  ``minconn`` every request pays a fresh connect.
* Both methods run under one ``threading.Lock``, and the connect in
  ``getconn`` and the rollback in ``putconn`` happen *while holding it*.  We
  model the lock as a FIFO resource: a thread that finds it held waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import simpy

from simlib.config import Rule, flag, integer
from simlib.database import Connection
from simlib.distributions import ScenarioError
from simlib.pools import base


@dataclass(frozen=True, slots=True)
class ThreadedPoolConfig(base.PoolConfig):
    """psycopg2's ThreadedConnectionPool: never waits, fails when exhausted."""

    kind: ClassVar[str] = "psycopg2"
    RULES: ClassVar[Mapping[str, Rule]] = {
        "minconn": integer(">=", 0),
        "maxconn": integer(">=", 1),
        "reset_on_return": flag,
    }

    # No defaults: ThreadedConnectionPool(minconn, maxconn) requires both.
    minconn: int
    maxconn: int
    reset_on_return: bool = True

    def check(self, field: str, given: Mapping[str, object]) -> None:
        if self.minconn > self.maxconn:
            raise ScenarioError(
                f"{field}.minconn", f"must be an integer <= maxconn ({self.maxconn})", self.minconn
            )

    def connection_limit(self) -> int:
        return self.maxconn

    def checkout_wait(self) -> float:
        return 0.0  # getconn() never waits: PoolError at once

    def round_trips(self) -> base.RoundTrips:
        return base.RoundTrips(release=int(self.reset_on_return))


class ThreadedPoolModel(base.PoolModel[ThreadedPoolConfig]):
    """ThreadedConnectionPool's getconn and putconn under its one lock (see the module doc)."""

    def setup(self) -> None:
        self.idle: list[Connection] = []
        self.used = 0
        self.lock = simpy.Resource(self.env, capacity=1)

    def start(self) -> None:
        for _ in range(self.config.minconn):
            self.idle.append(self.server.preopen())

    def checkout(self, request: base.Waiting) -> base.Checkout:
        lock = self.lock
        held = None
        if lock.count or lock.queue:
            # Another thread holds the lock (it is connecting or rolling back).
            held = lock.request()
            yield from self.blocked(held)
        try:
            if self.idle:
                conn = self.idle.pop()
            elif self.used >= self.config.maxconn:
                raise base.PoolTimeout("connection pool exhausted")
            else:
                if held is None:
                    held = lock.request()  # free: granted at once
                    yield held
                conn = yield from self.connect()
            self.used += 1
            conn.fresh = False
            return conn
        finally:
            if held is not None:
                lock.release(held)

    def reset_delay(self, conn: Connection) -> float:
        return 0.0  # putconn rolls back inside the lock, in release()

    def release(self, conn: Connection) -> base.Release:
        lock = self.lock
        held = lock.request()
        if held.triggered:  # free: granted at once, no need to stop running
            yield held
        else:
            yield from self.blocked(held)
        try:
            if conn.closed:
                pass  # _putconn keeps only a connection that is not closed
            elif len(self.idle) < self.config.minconn:
                if self.reset:
                    yield from self.interpreter.compute(self.reset_cpu)
                    yield from self.io(self.reset)
                self.idle.append(conn)
            else:
                self.server.close(conn)
            self.used -= 1
        finally:
            lock.release(held)

    def discard(self, conn: Connection) -> base.Release:
        return self.release(conn)


KIND = base.PoolKind(
    key="psycopg2",
    config=ThreadedPoolConfig,
    model=ThreadedPoolModel,
    rules=(
        "constructor opens `minconn`; `getconn` pops the newest idle, connects when none, "
        "raises `connection pool exhausted` at once when `maxconn` are in use; `putconn` keeps "
        "it (after a rollback) only while fewer than `minconn` are idle; connect and rollback "
        "happen while holding the pool's lock, so they queue"
    ),
    source="psycopg2/pool.py (AbstractConnectionPool, ThreadedConnectionPool)",
    call="psycopg2.pool.ThreadedConnectionPool({args}, dsn=URL)",
)
