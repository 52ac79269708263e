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

from labs.drivers._psycopg2 import (
    Statements,
    begin_if_autocommit,
    connect_kwargs,
    psycopg2_version,
    session_ended,
)
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

    def checkout(self) -> Any:
        assert self.pool is not None
        conn = self.pool.getconn()
        if not self.config.reset_on_return:
            conn.autocommit = True  # no transaction, so putconn has nothing to roll back
        return conn

    def execute(self, conn: Any, rec: Record, write: bool | None) -> int | None:
        version = self.statements.execute(conn, rec, write)
        if write and not conn.autocommit:
            conn.commit()
        return version

    def release(self, conn: Any, ok: bool) -> None:
        # putconn rolls back a connection it keeps; when the server has ended
        # the session that rollback raises, before putconn forgets the
        # connection, so it is called again (ok False): closed, it is dropped.
        assert self.pool is not None
        self.pool.putconn(conn, close=not ok and conn.closed != 0)

    # -- leaks --
    def begin(self, conn: Any) -> None:
        begin_if_autocommit(conn)

    def commit(self, conn: Any) -> None:
        if not conn.autocommit:
            conn.commit()

    def lost(self, conn: Any) -> bool:
        return session_ended(conn)

    def details(self) -> dict[str, object]:
        return {"limit": self.limit, "psycopg2": psycopg2_version()}


DRIVER = Psycopg2Driver
