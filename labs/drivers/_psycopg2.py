"""psycopg2 helpers shared by the drivers built on it (sqlalchemy, psycopg2, none)."""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import psycopg2.extensions

from labs.drivers.base import socket_has_news
from labs.query import one
from labs.records import Record, RunContext


def counting_factory(ctx: RunContext) -> type[psycopg2.extensions.connection]:
    """A psycopg2 connection class that logs every successful connect (and its duration).

    Passed as ``connection_factory=``: psycopg2 calls the class to connect, so
    its ``__init__`` *is* the connect.  This counts connects for any pool built
    on psycopg2 without touching the pool's code.
    """

    class CountingConnection(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            t = time.perf_counter()
            super().__init__(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)

    return CountingConnection


def psycopg2_version() -> str:
    """psycopg2's version number (its ``__version__`` also lists build options)."""
    return str(getattr(psycopg2, "__version__", "?")).split()[0]


def connect_kwargs(ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments for psycopg2.connect: our application_name, the counting factory,
    and the run's session settings (libpq ``options``)."""
    return {
        "application_name": ctx.application_name,
        "connection_factory": counting_factory(ctx),
        **ctx.libpq_options(),
    }


def session_ended(conn: Any) -> bool:
    """The server has ended this idle psycopg2 session (closed, or its socket has news)."""
    if conn.closed:
        return True
    try:
        return socket_has_news(conn.fileno())
    except Exception:  # noqa: BLE001 - psycopg2.InterfaceError on a closed connection
        return True


def begin_if_autocommit(conn: Any) -> None:
    """Open a transaction on an autocommit connection (otherwise psycopg2 has one open)."""
    if conn.autocommit:
        with conn.cursor() as cur:
            cur.execute("BEGIN")


class Statements:
    """The run's statements in psycopg2's ``pyformat`` style, and how to send one."""

    def __init__(self, ctx: RunContext) -> None:
        self.query = ctx.query
        self.plain = ctx.query.sql("pyformat")
        self.keyed = {w: ctx.query.keyed_sql(w, "pyformat") for w in (False, True)}

    def execute(self, conn: Any, rec: Record, write: bool | None) -> int | None:
        """Send ``rec``'s statement on ``conn`` (no commit); the version it returned, if keyed."""
        with conn.cursor() as cur:
            if write is None:
                cur.execute(self.plain, (self.query.argument(rec.service),))
                cur.fetchall()
                return None
            cur.execute(self.keyed[write], self.query.keyed_params(rec.key, rec.service))
            return int(one(cur))
