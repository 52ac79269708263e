"""SQLAlchemy ``QueuePool`` over psycopg2, through ``create_engine``.

One request is ``with engine.connect() as c: c.execute(text(query))``; leaving
the block returns the connection, and reset-on-return rolls it back (one
round trip), exactly as an application does.  After the statement psycopg2
has a transaction open (SQLAlchemy's autobegin), so a request that leaks in
a transaction needs nothing more; one that leaks outside one commits first.

Measured:

* connects: the pool's ``connect`` event (one per new DBAPI connection);
  durations from the psycopg2 connection factory;
* timeouts: ``sqlalchemy.exc.TimeoutError`` ("QueuePool limit of size N
  overflow M reached, connection timed out, timeout T");
* ``waited`` (p_wait): just before ``engine.connect()`` the pool had no idle
  connection and no room to overflow (``_overflow >= _max_overflow`` and the
  idle queue empty), i.e. QueuePool's own ``wait`` condition in ``_do_get``.
  It is read without the pool's lock, so under contention it is a close
  approximation, not an exact count.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from labs.drivers._psycopg2 import connect_kwargs, psycopg2_version, session_ended
from labs.drivers.base import BIG_TIMEOUT, Driver
from labs.records import Record, RunContext
from simlib.scenario import Scenario


def sqlalchemy_url(dsn: str, driver: str = "psycopg2") -> str:
    """``postgresql://...`` with the DBAPI driver named explicitly (``postgresql+psycopg2://``)."""
    for prefix in ("postgresql+psycopg2://", "postgresql+asyncpg://", "postgresql://",
                   "postgres://"):
        if dsn.startswith(prefix):
            return f"postgresql+{driver}://" + dsn[len(prefix) :]
    raise ValueError(f"not a postgresql:// URL: {dsn!r}")


def engine_options(config: Any) -> dict[str, Any]:
    """``create_engine`` keywords for a scenario's QueuePool parameters (the library's names).

    ``inf`` timeouts become :data:`~labs.drivers.base.BIG_TIMEOUT` (threading
    waits need a number); reset on return is ``"rollback"`` or none.
    """
    return {
        "pool_size": config.pool_size,
        "max_overflow": config.max_overflow,
        "pool_timeout": BIG_TIMEOUT if config.pool_timeout == float("inf") else config.pool_timeout,
        "pool_recycle": config.pool_recycle,
        "pool_pre_ping": config.pool_pre_ping,
        "pool_use_lifo": config.use_lifo,
        "pool_reset_on_return": "rollback" if config.reset_on_return else None,
    }


def at_limit(pool: Any) -> bool:
    """QueuePool's own "must wait" condition in ``_do_get``: no idle connection, no overflow left.

    Read without the pool's lock: under contention a close approximation.
    """
    return bool(
        pool._max_overflow > -1 and pool._overflow >= pool._max_overflow
        and pool._pool.qsize() == 0
    )


class SQLAlchemyDriver(Driver):
    """``create_engine`` with a QueuePool over psycopg2; one thread per request."""

    kind = "sqlalchemy"
    timeouts = (sqlalchemy.exc.TimeoutError,)

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        self.engine: sqlalchemy.Engine | None = None
        self._sql = text(ctx.query.sql("named"))
        self._keyed = {w: text(ctx.query.keyed_sql(w, "named")) for w in (False, True)}
        self.event_connects = 0

    def open(self) -> None:
        self.engine = sqlalchemy.create_engine(
            sqlalchemy_url(self.ctx.dsn),
            poolclass=QueuePool,
            connect_args=connect_kwargs(self.ctx),
            **engine_options(self.config),
        )
        # Make the dialect initialise (it needs one connection) before the run,
        # then empty the pool again: QueuePool starts empty.
        with self.engine.connect():
            pass
        self.engine.dispose()
        self.pool = self.engine.pool
        event.listen(self.engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        # Connects are logged by the psycopg2 factory (with durations); this
        # event only counts them once more for the details, as a cross-check.
        self.event_connects += 1

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def must_wait(self) -> bool:
        return at_limit(self.pool)

    def checkout(self) -> sqlalchemy.Connection:
        assert self.engine is not None
        return self.engine.connect()

    def execute(self, conn: sqlalchemy.Connection, rec: Record, write: bool | None) -> int | None:
        query = self.ctx.query
        if write is None:
            conn.execute(self._sql, {"arg": query.argument(rec.service)}).fetchall()
            return None
        params = query.keyed_params(rec.key, rec.service)
        version = conn.execute(self._keyed[write], params).scalar()
        if write:
            conn.commit()  # the new version is committed once this returns
        return None if version is None else int(version)

    def release(self, conn: sqlalchemy.Connection, ok: bool) -> None:
        # close() rolls back an open transaction; when the server has ended
        # the session it raises OperationalError (connection_invalidated):
        # the record is invalidated and back in the pool, and reconnects at
        # its next checkout.
        conn.close()

    # -- leaks: psycopg2 under SQLAlchemy has a transaction open after a statement --
    def commit(self, conn: sqlalchemy.Connection) -> None:
        conn.commit()

    def lost(self, conn: sqlalchemy.Connection) -> bool:
        if conn.closed:
            return False  # nothing to tell any more
        if conn.invalidated:
            return True
        return session_ended(conn.connection.dbapi_connection)

    def details(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "connect_events": self.event_connects,
            "sqlalchemy": sqlalchemy.__version__,
            "psycopg2": psycopg2_version(),
        }


DRIVER = SQLAlchemyDriver
