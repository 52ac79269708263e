"""asyncpg's ``Pool`` (asyncpg/pool.py).

* The pool has exactly ``max_size`` *holders* kept on a LIFO stack.  A holder
  may or may not have a live connection.  Creating the pool connects the
  ``min_size`` holders on top of the stack; the others connect lazily, the
  first time they are acquired.
* ``acquire(timeout=None)`` pops the most recently released holder (so a few
  hot connections do most of the work), waiting first come first served when
  all are taken.  With a timeout, ``asyncio.wait_for`` bounds the whole
  acquire, *including* a lazy connect; on expiry it raises
  ``asyncio.TimeoutError``.
* Release resets the connection (one round trip for the reset query) and
  pushes the holder back.  A connection that has served ``max_queries``
  queries is closed instead, and its holder reconnects on its next acquire.
* A connection idle for ``max_inactive_connection_lifetime`` seconds is
  closed (its holder stays and reconnects on demand); this applies to every
  connection, ``min_size`` is only the initial fill.
"""

from __future__ import annotations

from simlib.database import Connection, ConnectionRefused
from simlib.pools.base import PoolModel, PoolTimeout, WaitQueue
from simlib.scenario import AsyncpgPoolConfig

INF = float("inf")


class Holder:
    """A slot of the pool, with or without a connection."""

    __slots__ = ("conn", "released_at")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.released_at = 0.0


class AsyncpgPoolModel(PoolModel):
    kind = "asyncpg"

    def __init__(self, env, server, recorder, config: AsyncpgPoolConfig) -> None:
        super().__init__(env, server, recorder)
        self.config = config
        self.stack: list[Holder] = [Holder() for _ in range(config.max_size)]
        self.waiters = WaitQueue(env)
        self.in_use: dict[int, Holder] = {}  # id(connection) -> its holder
        self._reset = server.rtt if config.reset_on_return else 0.0
        lifetime = config.max_inactive_connection_lifetime
        self.inactive_limit = lifetime if lifetime > 0 else INF

    def start(self) -> None:
        # The top of the stack is its end: connect the last min_size holders.
        for holder in self.stack[len(self.stack) - self.config.min_size :]:
            holder.conn = self.server.preopen()

    def checkout(self, request):
        env = self.env
        timeout = self.config.timeout
        deadline = env.now + timeout
        if self.stack:
            holder = self.stack.pop()
        else:
            request.waited = True
            holder = yield self.waiters.wait(timeout)
            if holder is None:
                raise PoolTimeout("asyncio.TimeoutError: pool acquire timed out")
        if holder.conn is None:
            delay = self.server.begin_connect()
            if env.now + delay > deadline:
                # wait_for cancels the connect at the deadline.
                yield env.timeout(deadline - env.now)
                self.server.abandon_connect()
                self._push(holder)
                raise PoolTimeout("asyncio.TimeoutError: pool acquire timed out")
            if delay > 0:
                yield env.timeout(delay)
            try:
                holder.conn = self.server.finish_connect()
            except ConnectionRefused:
                self._push(holder)
                raise
        conn = holder.conn
        conn.queries += 1
        self.in_use[id(conn)] = holder
        return conn

    def reset_delay(self, conn: Connection) -> float:
        # A connection past max_queries is closed without a reset.
        return 0.0 if conn.queries >= self.config.max_queries else self._reset

    def release(self, conn: Connection):
        holder = self.in_use.pop(id(conn))
        if conn.queries >= self.config.max_queries:
            self.server.close(conn)
            holder.conn = None
        elif self.inactive_limit != INF:
            holder.released_at = released = self.env.now
            timer = self.env.timeout(self.inactive_limit)
            timer.callbacks.append(lambda _t: self._maybe_deactivate(holder, released))
        self._push(holder)
        return
        yield

    def _push(self, holder: Holder) -> None:
        if not self.waiters.hand(holder):
            self.stack.append(holder)

    def _maybe_deactivate(self, holder: Holder, released: float) -> None:
        # Only if the holder has stayed idle since that release.
        conn = holder.conn
        if conn is not None and holder.released_at == released and id(conn) not in self.in_use:
            self.server.close(conn)
            holder.conn = None
