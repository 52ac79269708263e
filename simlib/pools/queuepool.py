"""SQLAlchemy's ``QueuePool``, rule for rule (sqlalchemy/pool/impl.py and base.py).

* The pool starts empty and opens connections lazily.
* Checkout takes an idle connection if there is one (oldest first; newest
  first with ``use_lifo``).  Otherwise, while fewer than ``pool_size +
  max_overflow`` connections exist, it opens a new one at once ("overflow").
  At the limit it waits, first come first served, up to ``pool_timeout`` and
  then raises ``TimeoutError: QueuePool limit of size N overflow M reached,
  connection timed out, timeout T``.  If a connection was *closed* meanwhile
  (a failed connect), the timed-out request opens one instead of failing,
  as ``_do_get`` does after ``queue.Empty``.
* ``pool_recycle``: a connection older than that is closed and reopened at
  checkout, so the request pays a connect.
* ``pool_pre_ping``: one round trip at checkout, except for a connection just
  opened (SQLAlchemy marks it "fresh" and skips the ping).
* Return: reset-on-return rolls back (one round trip); then the connection is
  put back in the idle queue, whose capacity is ``pool_size``; when it is full
  the returned connection is closed.  So under bursts the overflow connections
  are opened and closed again and again: "overflow churn".
* ``pool_size = 0`` means no limit at all: SQLAlchemy then sets
  ``max_overflow = -1`` and the idle queue is unbounded.
"""

from __future__ import annotations

from collections import deque

from simlib.database import Connection, ConnectionRefused
from simlib.pools.base import PoolModel, PoolTimeout, WaitQueue
from simlib.scenario import QueuePoolConfig

INF = float("inf")


class QueuePoolModel(PoolModel):
    kind = "sqlalchemy"

    def __init__(self, env, server, recorder, config: QueuePoolConfig) -> None:
        super().__init__(env, server, recorder)
        self.config = config
        unlimited = config.pool_size == 0 or config.max_overflow == -1
        self.limit = INF if unlimited else config.pool_size + config.max_overflow
        self.idle_capacity = INF if config.pool_size == 0 else config.pool_size
        self.idle: deque[Connection] = deque()
        self.total = 0  # connections that exist or are being opened
        self.waiters = WaitQueue(env)
        self.take = self.idle.pop if config.use_lifo else self.idle.popleft
        self.recycle = config.pool_recycle
        self.ping = server.rtt if config.pool_pre_ping else 0.0
        self._reset = server.rtt if config.reset_on_return else 0.0
        timeout = config.pool_timeout
        self.timeout_message = (
            f"QueuePool limit of size {config.pool_size} overflow {config.max_overflow} "
            f"reached, connection timed out, timeout {timeout:0.2f}"
        )

    def checkout(self, request):
        env = self.env
        if self.idle:
            conn = self.take()
        elif self.total < self.limit:
            conn = yield from self._open()
        else:
            request.waited = True
            conn = yield self.waiters.wait(self.config.pool_timeout)
            if conn is None:
                if self.total < self.limit:
                    conn = yield from self._open()
                else:
                    raise PoolTimeout(self.timeout_message)
        # Checks made at checkout, in SQLAlchemy's order: recycle, then pre-ping.
        if self.recycle > 0 and env.now - conn.created > self.recycle:
            self.server.close(conn)
            self.total -= 1
            conn = yield from self._open()
        if conn.fresh:
            conn.fresh = False
        elif self.ping:
            yield env.timeout(self.ping)
        return conn

    def _open(self):
        self.total += 1
        try:
            conn = yield from self.server.connect()
        except ConnectionRefused:
            self.total -= 1
            raise
        return conn

    def reset_delay(self, conn: Connection) -> float:
        return self._reset

    def release(self, conn: Connection):
        if self.waiters.live and self.waiters.hand(conn):
            return
        if len(self.idle) < self.idle_capacity:
            self.idle.append(conn)
        else:
            self.server.close(conn)
            self.total -= 1
        return
        yield  # a generator, so callers can ``yield from`` every pool alike
