"""SQLAlchemy ``QueuePool`` over psycopg2, through ``create_engine``.

One request is ``with engine.connect() as c: c.execute(text(query))``; leaving
the block returns the connection, and reset-on-return rolls it back (one
round trip), exactly as an application does.

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

import psycopg2
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from labs.drivers.common import BIG_TIMEOUT, SyncDriver
from labs.drivers.psycopg2_util import connect_kwargs


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` with the psycopg2 driver named explicitly."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg2://" + dsn[len(prefix) :]
    raise ValueError(f"not a postgresql:// URL: {dsn!r}")


class SQLAlchemyDriver(SyncDriver):
    kind = "sqlalchemy"

    def __init__(self, scenario, ctx) -> None:
        super().__init__(scenario, ctx)
        c = self.config
        unlimited = c.pool_size == 0 or c.max_overflow == -1
        self.limit = 64 if unlimited else c.pool_size + c.max_overflow
        self.engine: sqlalchemy.Engine | None = None
        self._sql = text(ctx.query.sql("named"))
        self._keyed = {w: text(ctx.query.keyed_sql(w, "named")) for w in (False, True)}

    def open(self) -> None:
        c = self.config
        timeout = BIG_TIMEOUT if c.pool_timeout == float("inf") else c.pool_timeout
        self.engine = sqlalchemy.create_engine(
            sqlalchemy_url(self.ctx.dsn),
            poolclass=QueuePool,
            pool_size=c.pool_size,
            max_overflow=c.max_overflow,
            pool_timeout=timeout,
            pool_recycle=c.pool_recycle,
            pool_pre_ping=c.pool_pre_ping,
            pool_use_lifo=c.use_lifo,
            pool_reset_on_return="rollback" if c.reset_on_return else None,
            connect_args=connect_kwargs(self.ctx),
        )
        # Make the dialect initialise (it needs one connection) before the run,
        # then empty the pool again: QueuePool starts empty.
        with self.engine.connect():
            pass
        self.engine.dispose()
        self.pool = self.engine.pool
        self.event_connects = 0
        event.listen(self.engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn, record) -> None:
        # Connects are logged by the psycopg2 factory (with durations); this
        # event only counts them once more for the details, as a cross-check.
        self.event_connects += 1

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def checkout(self):
        pool = self.pool
        at_limit = (
            pool._max_overflow > -1
            and pool._overflow >= pool._max_overflow
            and pool._pool.qsize() == 0
        )
        return self.engine.connect(), at_limit

    def execute(self, conn, arg) -> None:
        conn.execute(self._sql, {"arg": arg}).fetchall()

    def execute_keyed(self, conn, write: bool, key: int, service: float) -> int:
        version = conn.execute(
            self._keyed[write], self.ctx.query.keyed_params("named", key, service)
        ).scalar()
        if write:
            conn.commit()  # the new version is committed once this returns
        return int(version)

    def release(self, conn, ok: bool) -> None:
        conn.close()

    def details(self) -> dict:
        return {
            "limit": self.limit,
            "connect_events": self.event_connects,
            "sqlalchemy": sqlalchemy.__version__,
            "psycopg2": psycopg2.__version__.split()[0],
        }
