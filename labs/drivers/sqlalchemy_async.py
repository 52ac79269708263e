"""SQLAlchemy's asyncio engine over asyncpg: ``create_async_engine``, ``AsyncAdaptedQueuePool``.

The course's articles show this as the asyncio way to use SQLAlchemy::

    engine = create_async_engine("postgresql+asyncpg://...", pool_size=5, max_overflow=10)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT ..."))

Leaving the block returns the connection and reset-on-return rolls it back
(one round trip), as with the thread-based engine (labs/drivers/sqlalchemy.py,
whose engine options and "at its limit" test this driver shares: the pool is
QueuePool with an asyncio queue).  Every request is a task on one event loop.

Measured:

* connects: an ``async_creator`` that wraps ``asyncpg.connect`` logs and
  times every new connection (with the run's ``application_name``);
* timeouts: ``sqlalchemy.exc.TimeoutError`` ("QueuePool limit of size N
  overflow M reached, connection timed out, timeout T");
* ``waited`` (p_wait): QueuePool's own "must wait" condition just before
  ``engine.connect()`` -- exact here, since everything runs on one loop thread.

Leaks: SQLAlchemy's asyncpg adapter begins a transaction itself before the
first statement (``AsyncAdapt_asyncpg_cursor._prepare_and_execute`` ->
``_start_transaction``), as a DBAPI connection would, so a request that leaks
in a transaction needs no ``BEGIN`` of its own.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from labs.drivers.base import Driver
from labs.drivers.sqlalchemy import at_limit, engine_options, sqlalchemy_url
from labs.records import Record, RunContext
from simlib.scenario import Scenario


class SQLAlchemyAsyncDriver(Driver):
    """``create_async_engine`` with an AsyncAdaptedQueuePool over asyncpg; tasks on one loop."""

    kind = "sqlalchemy_async"
    asynchronous = True
    timeouts = (sqlalchemy.exc.TimeoutError,)

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        self.engine: AsyncEngine | None = None
        self._sql = text(ctx.query.sql("named"))
        self._keyed = {w: text(ctx.query.keyed_sql(w, "named")) for w in (False, True)}

    async def open(self) -> None:
        ctx = self.ctx

        async def timed_connect() -> Any:
            t = time.perf_counter()
            conn = await asyncpg.connect(
                ctx.dsn,
                server_settings={**ctx.session_settings, "application_name": ctx.application_name},
                **ctx.asyncpg_options(),
            )
            ctx.connected(time.perf_counter() - t)
            return conn

        self.engine = create_async_engine(
            sqlalchemy_url(ctx.dsn, driver="asyncpg"),
            async_creator=timed_connect,
            **engine_options(self.config),
        )
        # Let the dialect initialise (it needs one connection) before the run,
        # then empty the pool again: the pool starts empty, as QueuePool does.
        async with self.engine.connect():
            pass
        await self.engine.dispose()

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()

    def must_wait(self) -> bool:
        assert self.engine is not None
        return at_limit(self.engine.sync_engine.pool)

    async def checkout(self) -> AsyncConnection:
        assert self.engine is not None
        return await self.engine.connect()

    async def execute(self, conn: AsyncConnection, rec: Record, write: bool | None) -> Any:
        query = self.ctx.query
        if write is None:
            (await conn.execute(self._sql, {"arg": query.argument(rec.service)})).fetchall()
            return None
        params = query.keyed_params(rec.key, rec.service)
        version = (await conn.execute(self._keyed[write], params)).scalar()
        if write:
            await conn.commit()  # the new version is committed once this returns
        return version

    async def release(self, conn: AsyncConnection, ok: bool) -> None:
        # As the thread engine: a session the server ended makes close() raise
        # (InterfaceError, connection_invalidated); the record is invalidated.
        await conn.close()

    # -- leaks --
    async def commit(self, conn: AsyncConnection) -> None:
        await conn.commit()

    def lost(self, conn: AsyncConnection) -> bool:
        sync = conn.sync_connection
        if sync is None or sync.closed:
            return False
        if sync.invalidated:
            return True
        raw = sync.connection.dbapi_connection
        inner = getattr(raw, "_connection", None)  # the adapter's asyncpg connection
        return inner is not None and inner.is_closed()

    def details(self) -> dict[str, object]:
        return {"limit": self.limit, "sqlalchemy": sqlalchemy.__version__,
                "asyncpg": asyncpg.__version__}


DRIVER = SQLAlchemyAsyncDriver
