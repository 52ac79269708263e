"""asyncpg's ``Pool`` (``asyncpg.create_pool``), all requests on one asyncio loop.

``create_pool`` opens ``min_size`` connections before traffic starts.  One
request is ``conn = await pool.acquire(timeout=T)``, ``await conn.fetch(query)``,
``await pool.release(conn)`` (release runs asyncpg's reset, one round trip;
with ``reset_on_return = false`` a no-op reset callback replaces it).

The harness benchmark's plain ``SELECT 1`` (``QuerySpec(select_one=True)``,
no parameter) is sent with ``conn.execute`` instead: one simple-protocol
Query message and its answer, the same round trip as ``pgbench``'s default
(simple) query mode, and about 8 us less client CPU per request than
``fetch``'s Bind/Execute/Sync and result decoding.  Set
``simple_select_one = False`` on the driver to send it with ``fetch`` too.

Measured:

* connects: a ``connect=`` callback that wraps ``asyncpg.connect`` logs and
  times every new connection (lazy holders, ``max_queries`` and
  ``max_inactive_connection_lifetime`` replacements included);
* timeouts: ``acquire(timeout=...)`` raising ``asyncio.TimeoutError``
  (``timeout = inf`` means ``acquire(timeout=None)``, waiting forever);
* ``waited`` (p_wait): the pool's holder queue was empty when the request
  called ``acquire`` -- exact, since everything runs on one loop thread.

Leaks: asyncpg runs each statement in its own transaction, so a request that
leaks in a transaction sends ``BEGIN`` first.  Released later with the
transaction open, asyncpg rolls it back and reports "Resetting connection
with an active transaction" to the loop's exception handler; the driver
counts those (``details()["reset_active_transaction"]``) instead of letting
each one print an error log.  When the server ends a checked-out session
(an idle-in-transaction timeout), asyncpg notices at once (the protocol's
``connection_lost``) and puts the holder back in the pool by itself
(``Connection._cleanup`` -> ``PoolConnectionHolder._release_on_close``):
the proxy is detached and the later ``release`` does nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from labs.drivers.base import Driver
from labs.records import Record, RunContext
from simlib.scenario import Scenario

#: Seconds ``close()`` waits for the pool to close gracefully before terminating it.
CLOSE_TIMEOUT = 10.0

#: What asyncpg tells the loop when it releases a connection with a transaction open.
RESET_ACTIVE = "Resetting connection with an active transaction"


class AsyncpgDriver(Driver):
    """An asyncpg Pool; every request a task on one event loop."""

    kind = "asyncpg"
    asynchronous = True
    #: send ``select_one``'s SELECT 1 with ``execute`` (simple protocol) rather than ``fetch``
    simple_select_one = True

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        self._sql = ctx.query.sql("dollar")
        self._keyed = {w: ctx.query.keyed_sql(w, "dollar") for w in (False, True)}
        self.pool: asyncpg.Pool | None = None
        self._timeout: float | None = None
        self.reset_active = 0  # releases asyncpg reported with a transaction open

    async def open(self) -> None:
        c = self.config
        ctx = self.ctx

        async def timed_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
            t = time.perf_counter()
            conn = await asyncpg.connect(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)
            return conn

        async def no_reset(conn: asyncpg.Connection) -> None:
            return None

        extra = {} if c.reset_on_return else {"reset": no_reset}
        self.pool = await asyncpg.create_pool(
            ctx.dsn,
            min_size=c.min_size,
            max_size=c.max_size,
            max_queries=c.max_queries,
            max_inactive_connection_lifetime=c.max_inactive_connection_lifetime,
            connect=timed_connect,
            server_settings={**ctx.session_settings, "application_name": ctx.application_name},
            **ctx.asyncpg_options(),
            **extra,
        )
        self._timeout = None if c.timeout == float("inf") else c.timeout
        if self.closer is not None and self.leak_in_transaction:
            self._count_reset_reports(asyncio.get_running_loop())

    def _count_reset_reports(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count asyncpg's "Resetting connection with an active transaction" reports.

        Only on a run whose requests leak transactions (every leaked one is
        reported); any other report goes to the handler that was there.
        """
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if str(context.get("message", "")).startswith(RESET_ACTIVE):
                self.reset_active += 1
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    async def close(self) -> None:
        if self.pool is not None:
            # close() waits for every connection to come back; bounded, so a
            # connection lost by a cancelled request cannot hang the run.
            try:
                await asyncio.wait_for(self.pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, Exception):  # noqa: BLE001
                self.pool.terminate()

    def must_wait(self) -> bool:
        assert self.pool is not None
        return self.pool._queue.empty()  # every holder is taken: acquire will wait

    async def checkout(self) -> asyncpg.Connection:
        assert self.pool is not None
        return await self.pool.acquire(timeout=self._timeout)

    async def execute(self, conn: asyncpg.Connection, rec: Record, write: bool | None) -> Any:
        # asyncpg runs each statement in its own transaction: a write is
        # committed when it returns.
        query = self.ctx.query
        if write is not None:
            return await conn.fetchval(self._keyed[write], *query.keyed_args(rec.key, rec.service))
        if self.simple_select_one and query.select_one:
            await conn.execute(self._sql)  # simple protocol, no parameter
        else:
            await conn.fetch(self._sql, *query.params(rec.service))
        return None

    async def release(self, conn: asyncpg.Connection, ok: bool) -> None:
        assert self.pool is not None
        if ok:
            await self.pool.release(conn)
            return
        # After a failure or a cancellation: shielded, so a second cancel cannot
        # lose the connection (pool.close() would wait for it forever).
        try:
            await asyncio.shield(self.pool.release(conn))
        except BaseException:  # noqa: BLE001
            pass

    # -- leaks: every statement is its own transaction unless one is begun --
    async def begin(self, conn: asyncpg.Connection) -> None:
        await conn.execute("BEGIN")

    def lost(self, conn: Any) -> bool:
        # A proxy whose holder went back to the pool when the connection was
        # lost (_release_on_close) is detached: its _con is None.
        con = getattr(conn, "_con", None)
        return con is None or con.is_closed()

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {"limit": self.limit, "asyncpg": asyncpg.__version__}
        if self.closer is not None:
            out["reset_active_transaction"] = self.reset_active
        return out


DRIVER = AsyncpgDriver
