"""psycopg 3's ``psycopg_pool.ConnectionPool``.

Opened with ``open=True`` and then ``pool.wait()``, so the ``min_size``
connections exist before traffic starts (as simlib assumes).  One request is
``with pool.connection() as c: c.execute(query)``; leaving the block commits
(one round trip) and returns the connection.

Measured:

* connects: a ``connection_class`` subclass whose ``connect`` logs and times
  every new connection (the pool's background workers call it);
* timeouts: ``PoolTimeout`` and ``TooManyRequests`` (``max_waiting``);
* ``waited`` (p_wait): the pool's idle deque was empty just before the request
  asked for a connection.  psycopg_pool never opens a connection inside
  ``getconn()``: with none idle the request always queues (while a worker
  possibly grows the pool), so this is its own "must wait" condition.  Read
  without the pool's lock: a close approximation under contention.
"""

from __future__ import annotations

import time

import psycopg
import psycopg_pool

from labs.drivers.common import BIG_TIMEOUT, RunContext, SyncDriver


def counting_connection_class(ctx: RunContext) -> type[psycopg.Connection]:
    class CountingConnection(psycopg.Connection):
        @classmethod
        def connect(cls, *args, **kwargs):  # type: ignore[override]
            t = time.perf_counter()
            conn = super().connect(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)
            return conn

    return CountingConnection


class PsycopgPoolDriver(SyncDriver):
    kind = "psycopg_pool"

    def __init__(self, scenario, ctx) -> None:
        super().__init__(scenario, ctx)
        c = self.config
        self.limit = c.effective_max_size
        self._sql = ctx.query.sql("pyformat")
        self._keyed = {w: ctx.query.keyed_sql(w, "pyformat") for w in (False, True)}
        self.pool: psycopg_pool.ConnectionPool | None = None

    def open(self) -> None:
        c = self.config
        inf = float("inf")
        self.pool = psycopg_pool.ConnectionPool(
            self.ctx.dsn,
            connection_class=counting_connection_class(self.ctx),
            kwargs={
                "application_name": self.ctx.application_name,
                "autocommit": not c.reset_on_return,
            },
            min_size=c.min_size,
            max_size=c.effective_max_size,
            timeout=BIG_TIMEOUT if c.timeout == inf else c.timeout,
            max_lifetime=BIG_TIMEOUT if c.max_lifetime == inf else c.max_lifetime,
            max_idle=BIG_TIMEOUT if c.max_idle == inf else c.max_idle,
            max_waiting=c.max_waiting,
            num_workers=c.num_workers,
            name=self.ctx.application_name,
            open=True,
        )
        self.pool.wait(timeout=60.0)

    def close(self) -> None:
        if self.pool is not None:
            self.stats = self.pool.get_stats()
            self.pool.close(timeout=5.0)

    def checkout(self):
        waited = not self.pool._pool  # no idle connection: getconn() will queue
        return self.pool.getconn(), waited

    def execute(self, conn, arg) -> None:
        # What `with pool.connection() as c:` does around the body: the
        # statement, then commit on success (rollback on error) before putconn.
        try:
            conn.execute(self._sql, (arg,)).fetchall()
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def execute_keyed(self, conn, write: bool, key: int, service: float) -> int:
        # As execute(): commit on success (a write's version is then committed).
        params = self.ctx.query.keyed_params("pyformat", key, service)
        try:
            version = conn.execute(self._keyed[write], params).fetchone()[0]
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return int(version)

    def release(self, conn, ok: bool) -> None:
        self.pool.putconn(conn)

    def details(self) -> dict:
        return {
            "limit": self.limit,
            "psycopg": psycopg.__version__,
            "psycopg_pool": psycopg_pool.__version__,
            "pool_stats": dict(getattr(self, "stats", {})),
        }
