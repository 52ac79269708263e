"""No pool: a new connection for every request, closed afterwards.

This is what a script does with ``psycopg2.connect()`` in every request
handler, or SQLAlchemy with ``NullPool``.  Every request pays the full
``connect_time`` before its query, and the server forks and tears down a
backend each time: ``pgbench -C`` shows what that costs.  There is no limit on
the client side, so under load the server's ``max_connections`` is what says
no.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from simlib.database import Connection
from simlib.pools import base


@dataclass(frozen=True, slots=True)
class NoPoolConfig(base.PoolConfig):
    """No pool: every request opens a connection and closes it afterwards."""

    kind: ClassVar[str] = "none"

    def connection_limit(self) -> None:
        return None  # only the server's max_connections says no


class NoPoolModel(base.PoolModel[NoPoolConfig]):
    """Connect, use, close."""

    def checkout(self, request: base.Waiting) -> base.Checkout:
        conn = yield from self.connect()
        return conn

    def release(self, conn: Connection) -> base.Release:
        self.server.close(conn)
        return
        yield


    def discard(self, conn: Connection) -> base.Release:
        return self.release(conn)


KIND = base.PoolKind(
    key="none",
    config=NoPoolConfig,
    model=NoPoolModel,
    rules="connect per request, close afterwards",
    source="psycopg2.connect() per request; SQLAlchemy's NullPool",
    call="psycopg2.connect(URL)  # in every request",
)
