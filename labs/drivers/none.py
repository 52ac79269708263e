"""No pool: ``psycopg2.connect()`` for every request, closed afterwards.

Every request pays a full connect (counted and timed by the connection
factory); nothing limits connections on the client, so the server's
``max_connections`` is what refuses (``53300``, an error).  ``p_wait`` is 0.
"""

from __future__ import annotations

from typing import Any

import psycopg2

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


class NoPoolDriver(Driver):
    """A new psycopg2 connection per request; one thread per request."""

    kind = "none"

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        # No client-side limit; size the threads from the server's limit.
        self.limit = scenario.database.max_connections
        self.statements = Statements(ctx)
        self._kwargs = connect_kwargs(ctx)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def checkout(self) -> Any:
        conn = psycopg2.connect(self.ctx.dsn, **self._kwargs)
        conn.autocommit = True  # one statement, then close: nothing to reset
        return conn

    def execute(self, conn: Any, rec: Record, write: bool | None) -> int | None:
        return self.statements.execute(conn, rec, write)  # autocommit: a write is committed

    def release(self, conn: Any, ok: bool) -> None:
        conn.close()

    # -- leaks: autocommit, so a leak in a transaction begins one --
    def begin(self, conn: Any) -> None:
        begin_if_autocommit(conn)

    def lost(self, conn: Any) -> bool:
        return session_ended(conn)

    def details(self) -> dict[str, object]:
        return {"limit": None, "psycopg2": psycopg2_version()}


DRIVER = NoPoolDriver
