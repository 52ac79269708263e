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

import simpy

from simlib.database import Connection
from simlib.pools.base import PoolModel, PoolTimeout
from simlib.scenario import ThreadedPoolConfig


class ThreadedPoolModel(PoolModel):
    kind = "psycopg2"

    def __init__(self, env, server, recorder, config: ThreadedPoolConfig) -> None:
        super().__init__(env, server, recorder)
        self.config = config
        self.idle: list[Connection] = []
        self.used = 0
        self.lock = simpy.Resource(env, capacity=1)
        self._rollback = server.rtt if config.reset_on_return else 0.0

    def start(self) -> None:
        for _ in range(self.config.minconn):
            self.idle.append(self.server.preopen())

    def checkout(self, request):
        lock = self.lock
        held = None
        if lock.count or lock.queue:
            # Another thread holds the lock (it is connecting or rolling back).
            held = lock.request()
            yield held
        try:
            if self.idle:
                conn = self.idle.pop()
            elif self.used >= self.config.maxconn:
                raise PoolTimeout("connection pool exhausted")
            else:
                if held is None:
                    held = lock.request()  # free: granted at once
                    yield held
                conn = yield from self.server.connect()
            self.used += 1
            conn.fresh = False
            return conn
        finally:
            if held is not None:
                lock.release(held)

    def release(self, conn: Connection):
        lock = self.lock
        held = lock.request()
        yield held
        try:
            if len(self.idle) < self.config.minconn:
                if self._rollback:
                    yield self.env.timeout(self._rollback)
                self.idle.append(conn)
            else:
                self.server.close(conn)
            self.used -= 1
        finally:
            lock.release(held)
