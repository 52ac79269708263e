"""psycopg2's ``ThreadedConnectionPool(minconn, maxconn)``.

One request: ``getconn()``, execute, ``putconn()`` (which rolls the
transaction back when it keeps the connection, and closes it when
``minconn`` are already idle).  ``getconn()`` never waits: with ``maxconn``
connections in use it raises ``PoolError("connection pool exhausted")``,
counted as a timeout.  So ``p_wait`` is 0 by construction.  Connects are
counted by a connection factory subclass (see psycopg2_util).
"""

from __future__ import annotations

import psycopg2
import psycopg2.pool

from labs.drivers.common import SyncDriver
from labs.drivers.psycopg2_util import connect_kwargs


class Psycopg2Driver(SyncDriver):
    kind = "psycopg2"

    def __init__(self, scenario, ctx) -> None:
        super().__init__(scenario, ctx)
        self.limit = self.config.maxconn
        self._sql = ctx.query.sql("pyformat")
        self._keyed = {w: ctx.query.keyed_sql(w, "pyformat") for w in (False, True)}
        self.pool: psycopg2.pool.ThreadedConnectionPool | None = None

    def open(self) -> None:
        c = self.config
        self.pool = psycopg2.pool.ThreadedConnectionPool(
            c.minconn, c.maxconn, self.ctx.dsn, **connect_kwargs(self.ctx)
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.closeall()

    def checkout(self):
        conn = self.pool.getconn()
        if not self.config.reset_on_return:
            conn.autocommit = True  # no transaction, so putconn has nothing to roll back
        return conn, False

    def execute(self, conn, arg) -> None:
        with conn.cursor() as cur:
            cur.execute(self._sql, (arg,))
            cur.fetchall()

    def execute_keyed(self, conn, write: bool, key: int, service: float) -> int:
        with conn.cursor() as cur:
            cur.execute(self._keyed[write], self.ctx.query.keyed_params("pyformat", key, service))
            version = cur.fetchone()[0]
        if write and not conn.autocommit:
            conn.commit()
        return int(version)

    def release(self, conn, ok: bool) -> None:
        self.pool.putconn(conn, close=not ok and conn.closed != 0)

    def details(self) -> dict:
        return {"limit": self.limit, "psycopg2": psycopg2.__version__.split()[0]}
