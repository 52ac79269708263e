"""psycopg 3's ``psycopg_pool.ConnectionPool``.

Opened with ``open=True`` and then ``pool.wait()``, so the ``min_size``
connections exist before traffic starts (as simlib assumes).  One request is
``with pool.connection() as c: c.execute(query)``; leaving the block commits
(one round trip) and returns the connection.

Measured:

* connects: a ``connection_class`` subclass whose ``connect`` logs and times
  every new connection (the pool's background workers call it);
* timeouts: ``PoolTimeout`` and ``TooManyRequests`` (``max_waiting``);
* ``waited`` (p_wait): the pool's idle deque was empty just before the request
  asked for a connection.  psycopg_pool never opens a connection inside
  ``getconn()``: with none idle the request always queues (while a worker
  possibly grows the pool), so this is its own "must wait" condition.  Read
  without the pool's lock: a close approximation under contention.

Leaks: a leaked connection the server ended (an idle-in-transaction timeout)
comes back BAD; ``putconn`` discards it (``get_stats()["returns_bad"]``) and
logs the warning "discarding closed connection" each time.  On a run whose
requests leak, those warnings are kept off stderr while the pool is open:
``pool_stats.returns_bad`` in the details counts them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus

from labs.drivers.base import BIG_TIMEOUT, Driver, socket_has_news
from labs.query import one
from labs.records import Record, RunContext
from simlib.scenario import Scenario


def counting_connection_class(ctx: RunContext) -> type[psycopg.Connection[Any]]:
    class CountingConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            conn = super().connect(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)
            return conn

    return CountingConnection


class _DropDiscardWarnings(logging.Filter):
    """Drops psycopg_pool's "discarding closed connection" warnings (counted in its stats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("discarding closed connection")


def _finite(seconds: float) -> float:
    return BIG_TIMEOUT if seconds == float("inf") else seconds


class PsycopgPoolDriver(Driver):
    """A psycopg_pool ConnectionPool; one thread per request."""

    kind = "psycopg_pool"
    timeouts = (psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests)

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        self._sql = ctx.query.sql("pyformat")
        self._keyed = {w: ctx.query.keyed_sql(w, "pyformat") for w in (False, True)}
        self.pool: psycopg_pool.ConnectionPool[Any] | None = None
        self.stats: dict[str, int] = {}
        self._quiet: logging.Filter | None = None

    def open(self) -> None:
        c = self.config
        if self.closer is not None:
            self._quiet = _DropDiscardWarnings()
            logging.getLogger("psycopg.pool").addFilter(self._quiet)
        self.pool = psycopg_pool.ConnectionPool(
            self.ctx.dsn,
            connection_class=counting_connection_class(self.ctx),
            kwargs={
                "application_name": self.ctx.application_name,
                "autocommit": not c.reset_on_return,
                **self.ctx.libpq_options(),
            },
            min_size=c.min_size,
            max_size=c.effective_max_size,
            timeout=_finite(c.timeout),
            max_lifetime=_finite(c.max_lifetime),
            max_idle=_finite(c.max_idle),
            max_waiting=c.max_waiting,
            num_workers=c.num_workers,
            name=self.ctx.application_name,
            open=True,
        )
        self.pool.wait(timeout=60.0)

    def close(self) -> None:
        try:
            if self.pool is not None:
                self.stats = self.pool.get_stats()
                self.pool.close(timeout=5.0)
        finally:
            if self._quiet is not None:
                logging.getLogger("psycopg.pool").removeFilter(self._quiet)
                self._quiet = None

    def must_wait(self) -> bool:
        assert self.pool is not None
        return not self.pool._pool  # no idle connection: getconn() will queue

    def checkout(self) -> Any:
        assert self.pool is not None
        return self.pool.getconn()

    def execute(self, conn: Any, rec: Record, write: bool | None) -> int | None:
        # What `with pool.connection() as c:` does around the body: the
        # statement, then commit on success (rollback on error) before putconn;
        # a write's version is then committed.  A request that leaks in a
        # transaction commits late instead, when the closer releases it.
        query = self.ctx.query
        try:
            if write is None:
                conn.execute(self._sql, (query.argument(rec.service),)).fetchall()
                version = None
            else:
                params = query.keyed_params(rec.key, rec.service)
                version = int(one(conn.execute(self._keyed[write], params)))
        except BaseException:
            conn.rollback()
            raise
        if not self.keeps_transaction(rec, write):
            conn.commit()
        return version

    def release(self, conn: Any, ok: bool) -> None:
        # A leaked connection comes back with its transaction open: commit it,
        # as leaving `with pool.connection()` would (putconn itself would roll
        # it back with a warning).  When the server has ended the session the
        # commit raises (25P03); called again with ok False, putconn finds the
        # connection BAD, discards it and a worker opens another.
        assert self.pool is not None
        if ok and conn.info.transaction_status == TransactionStatus.INTRANS:
            conn.commit()
        self.pool.putconn(conn)

    # -- leaks --
    def begin(self, conn: Any) -> None:
        if conn.autocommit:  # reset_on_return = false: no transaction unless asked
            conn.execute("BEGIN")

    def lost(self, conn: Any) -> bool:
        if conn.closed:
            return True
        try:
            return socket_has_news(conn.fileno())
        except Exception:  # noqa: BLE001 - a closed connection
            return True

    def details(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "psycopg": psycopg.__version__,
            "psycopg_pool": psycopg_pool.__version__,
            "pool_stats": dict(self.stats),
        }


DRIVER = PsycopgPoolDriver
