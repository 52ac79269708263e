"""No pool: a new connection for every request, closed afterwards.

This is what a script does with ``psycopg2.connect()`` in every request
handler, or SQLAlchemy with ``NullPool``.  Every request pays the full
``connect_time`` before its query, and the server forks and tears down a
backend each time: ``pgbench -C`` shows what that costs.  There is no limit on
the client side, so under load the server's ``max_connections`` is what says
no.
"""

from __future__ import annotations

from simlib.database import Connection
from simlib.pools.base import PoolModel


class NoPoolModel(PoolModel):
    kind = "none"

    def checkout(self, request):
        conn = yield from self.server.connect()
        return conn

    def release(self, conn: Connection):
        self.server.close(conn)
        return
        yield
