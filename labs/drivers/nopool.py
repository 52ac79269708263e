"""No pool: ``psycopg2.connect()`` for every request, closed afterwards.

Every request pays a full connect (counted and timed by the connection
factory); nothing limits connections on the client, so the server's
``max_connections`` is what refuses (``53300``, an error).  ``p_wait`` is 0.
"""

from __future__ import annotations

import psycopg2

from labs.drivers.common import SyncDriver
from labs.drivers.psycopg2_util import connect_kwargs


class NoPoolDriver(SyncDriver):
    kind = "none"

    def __init__(self, scenario, ctx) -> None:
        super().__init__(scenario, ctx)
        # No client-side limit; size the threads from the server's limit.
        self.limit = scenario.database.max_connections
        self._sql = ctx.query.sql("pyformat")
        self._keyed = {w: ctx.query.keyed_sql(w, "pyformat") for w in (False, True)}
        self._kwargs = connect_kwargs(ctx)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def checkout(self):
        conn = psycopg2.connect(self.ctx.dsn, **self._kwargs)
        conn.autocommit = True  # one statement, then close: nothing to reset
        return conn, False

    def execute(self, conn, arg) -> None:
        with conn.cursor() as cur:
            cur.execute(self._sql, (arg,))
            cur.fetchall()

    def execute_keyed(self, conn, write: bool, key: int, service: float) -> int:
        with conn.cursor() as cur:  # autocommit: a write is committed when this returns
            cur.execute(self._keyed[write], self.ctx.query.keyed_params("pyformat", key, service))
            return int(cur.fetchone()[0])

    def release(self, conn, ok: bool) -> None:
        conn.close()

    def details(self) -> dict:
        return {"limit": None, "psycopg2": psycopg2.__version__.split()[0]}
