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
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from labs.drivers.common import CURRENT_RECORD, OK, Record, RunContext, failed

#: Seconds ``close()`` waits for the pool to close gracefully before terminating it.
CLOSE_TIMEOUT = 10.0


class AsyncpgDriver:
    kind = "asyncpg"
    #: send ``select_one``'s SELECT 1 with ``execute`` (simple protocol) rather than ``fetch``
    simple_select_one = True

    def __init__(self, scenario, ctx: RunContext) -> None:
        self.scenario = scenario
        self.config = scenario.pool
        self.ctx = ctx
        self.limit = self.config.max_size
        self._sql = ctx.query.sql("dollar")
        self._keyed = {w: ctx.query.keyed_sql(w, "dollar") for w in (False, True)}
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        c = self.config
        ctx = self.ctx

        async def timed_connect(*args, **kwargs):
            t = time.perf_counter()
            conn = await asyncpg.connect(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)
            return conn

        async def no_reset(conn) -> None:
            return None

        extra = {} if c.reset_on_return else {"reset": no_reset}
        self.pool = await asyncpg.create_pool(
            ctx.dsn,
            min_size=c.min_size,
            max_size=c.max_size,
            max_queries=c.max_queries,
            max_inactive_connection_lifetime=c.max_inactive_connection_lifetime,
            connect=timed_connect,
            server_settings={"application_name": ctx.application_name},
            **extra,
        )
        self._timeout = None if c.timeout == float("inf") else c.timeout

    async def close(self) -> None:
        if self.pool is not None:
            # close() waits for every connection to come back; bounded, so a
            # connection lost by a cancelled request cannot hang the run.
            try:
                await asyncio.wait_for(self.pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, Exception):  # noqa: BLE001
                self.pool.terminate()

    async def serve(self, rec: Record) -> bool:
        ctx = self.ctx
        rec.started = ctx.now()
        CURRENT_RECORD.set(rec)
        try:
            await self.call(rec, None)
            rec.outcome = OK
        except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
            failed(rec, exc)
        rec.finished = ctx.now()
        return rec.outcome == OK

    async def call(self, rec: Record, write: bool | None) -> int | None:
        """One database call: acquire, statement, release; fills ``rec``'s times.

        ``write`` None runs the plain statement; True/False the keyed write or
        read of ``rec.key`` (labs/access.py), whose version is returned
        (asyncpg runs each statement in its own transaction: a write is
        committed when it returns).  Failures are raised after the release.
        """
        ctx = self.ctx
        pool = self.pool
        conn = None
        try:
            if pool._queue.empty():  # every holder is taken: acquire will wait
                rec.waited = True
            conn = await pool.acquire(timeout=self._timeout)
            rec.got = ctx.now()
            if ctx.stopping.is_set():
                raise RuntimeError("run stopped before the query was sent")
            version = None
            if write is not None:
                version = await conn.fetchval(
                    self._keyed[write], *ctx.query.keyed_params("dollar", rec.key, rec.service)
                )
            elif self.simple_select_one and ctx.query.select_one:
                await conn.execute(self._sql)  # simple protocol, no parameter
            else:
                await conn.fetch(self._sql, *ctx.query.params(rec.service))
            rec.query_done = ctx.now()
            c, conn = conn, None
            await pool.release(c)
            rec.released = ctx.now()
            return None if version is None else int(version)
        finally:
            # Also on failure and on cancellation (the run being wound down): a
            # connection that is never released makes ``pool.close()`` wait forever.
            if conn is not None:
                try:
                    await asyncio.shield(pool.release(conn))
                except BaseException:  # noqa: BLE001
                    pass
                rec.released = ctx.now()

    def details(self) -> dict:
        return {"limit": self.limit, "asyncpg": asyncpg.__version__}
