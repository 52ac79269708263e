"""psycopg2's ``ThreadedConnectionPool(minconn, maxconn)``.

One request: ``getconn()``, execute, ``putconn()`` (which rolls the
transaction back when it keeps the connection, and closes it when
``minconn`` are already idle).  ``getconn()`` never waits: with ``maxconn``
connections in use it raises ``PoolError("connection pool exhausted")``,
counted as a timeout.  So ``p_wait`` is 0 by construction.  Connects are
counted by a connection factory subclass (see _psycopg2).
"""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.pool

from labs.drivers._psycopg2 import Statements, connect_kwargs, psycopg2_version
from labs.drivers.base import Driver
from labs.records import Record, RunContext
from simlib.scenario import Scenario


class Psycopg2Driver(Driver):
    """A ThreadedConnectionPool; one thread per request."""

    kind = "psycopg2"
    timeouts = (psycopg2.pool.PoolError,)

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        self.statements = Statements(ctx)
        self.pool: psycopg2.pool.ThreadedConnectionPool | None = None

    def open(self) -> None:
        c = self.config
        self.pool = psycopg2.pool.ThreadedConnectionPool(
            c.minconn, c.maxconn, self.ctx.dsn, **connect_kwargs(self.ctx)
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.closeall()

    def checkout(self) -> tuple[Any, bool]:
        assert self.pool is not None
        conn = self.pool.getconn()
        if not self.config.reset_on_return:
            conn.autocommit = True  # no transaction, so putconn has nothing to roll back
        return conn, False

    def execute(self, conn: Any, rec: Record, write: bool | None) -> int | None:
        version = self.statements.execute(conn, rec, write)
        if write and not conn.autocommit:
            conn.commit()
        return version

    def release(self, conn: Any, ok: bool) -> None:
        assert self.pool is not None
        self.pool.putconn(conn, close=not ok and conn.closed != 0)

    def details(self) -> dict[str, object]:
        return {"limit": self.limit, "psycopg2": psycopg2_version()}


DRIVER = Psycopg2Driver
