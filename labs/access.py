"""The keyed request path, live: cache-aside on Redis, read replicas, versions per key.

The live twin of :mod:`simlib.access`, used instead of a driver's plain
``serve`` when the scenario has a ``[cache]``, ``[replicas]`` or writes.
The data is one table on the primary, ``labs_kv(key, version)``, one row per
key of the scenario's key space, all at version 0 when the run starts
(:func:`prepare_table`); streaming replication copies it to the replicas.

A **read** of key ``k``:

1. note the newest version of ``k`` committed on the primary, as far as the
   harness knows (every write is its own, so it knows them all: a write's
   version counts once its ``COMMIT`` has returned);
2. with a cache, ``GET`` it in Redis (redis-py); a hit answers with the cached
   version.  With ``single_flight``, a miss for a key another read of this
   process is already fetching waits for that fetch and takes its result
   (an in-process ``singleflight``: a dict of futures);
3. otherwise query the database ``route_reads`` picks -- the primary, or a
   replica drawn at random (``read_your_writes``: the primary for
   ``ryw_window`` seconds after the client's own last write) -- through that
   database's own pool (one pool per database, with the scenario's
   ``[pool]`` settings, as simlib assumes).  The statement returns the
   version visible in its snapshot (see ``QuerySpec.keyed_sql``);
4. with a cache, store it: ``SET key version PX ttl`` (plain ``SET`` for an
   infinite TTL).

A **write** bumps the key's version on the primary and commits, then
``on_write`` acts on the cache: ``DEL`` (invalidate), ``SET ... PX`` (write
through) or nothing.  A read is *stale* when the version it returned is
older than the one noted in step 1 (the contract's ``stale_read_ratio``).

**Faults.**  A Redis call that fails (server down, refused, timed out) makes
the read go to the database as a miss would: the request does not fail, and
``rec.cache_error`` counts it.  A replica read that fails for any reason but
its pool's own timeout (the replica stopped: connection refused or
terminated) is retried on the primary (``rec.failover``), and that replica
is skipped for :data:`REPLICA_RETRY` seconds; after that one read at a time
probes it again.

Everything a request did is written into its :class:`~labs.drivers.common.Record`
(key, write, version, newest, source), and the executor counts the metrics
from the records with simlib's rules (labs/executor.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
import uuid
from collections.abc import Callable

import psycopg2

from labs.drivers.common import (
    CURRENT_RECORD,
    KEYED_TABLE,
    OK,
    TIMEOUT,
    Record,
    RunContext,
    classify,
    failed,
)
from simlib.scenario import Scenario
from simlib.streams import Streams

__all__ = [
    "REPLICA_RETRY",
    "AsyncKeyedDriver",
    "KeyedDriver",
    "is_keyed",
    "prepare_table",
    "wait_for_replicas",
]

#: Seconds a replica whose read failed is left out of the routing.
REPLICA_RETRY = 1.0

#: Redis client timeouts (seconds): a cache that does not answer must not hold
#: a request much longer than a database query would take.
REDIS_CONNECT_TIMEOUT = 0.25
REDIS_TIMEOUT = 1.0

#: Connections in the application's Redis pool (a BlockingConnectionPool; a
#: call waits for a free one).  Bounded and opened before the capacity is
#: set, because Redis counts every client's buffers (16 KB and more each)
#: against ``maxmemory``: connections opened later would push keys out.
REDIS_CONNECTIONS = 4

#: Bytes of a cached value: the key's version, a colon, padding -- a cached
#: row of about 1 KB.  Also what makes a capacity in keys a memory budget
#: large enough that client buffers moving by some kilobytes shift it by a
#: few keys, not hundreds (see labs/cache_memory.py).
VALUE_BYTES = 1024


def is_keyed(scenario: Scenario) -> bool:
    """True when the scenario needs the keyed path (as simlib decides it)."""
    return (
        scenario.workload.write_fraction > 0
        or scenario.cache is not None
        or scenario.replicas is not None
    )


# ---------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------


def prepare_table(dsn: str, keys: int) -> None:
    """(Re)create ``labs_kv`` on the primary: keys ``0 .. keys-1``, all at version 0.

    ``fillfactor = 50`` leaves room on each page, so an update can stay on
    its page (a HOT update) and never has to touch the primary key's index.
    """
    conn = psycopg2.connect(dsn, application_name="labs-setup")
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {KEYED_TABLE} "
                "(key integer PRIMARY KEY, version bigint NOT NULL) WITH (fillfactor = 50)"
            )
            cur.execute(f"TRUNCATE {KEYED_TABLE}")
            cur.execute(
                f"INSERT INTO {KEYED_TABLE} SELECT g, 0 FROM generate_series(0, %s) AS g",
                (keys - 1,),
            )
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"ANALYZE {KEYED_TABLE}")
    finally:
        conn.close()


def wait_for_replicas(primary: str, replicas: list[str] | tuple[str, ...], timeout: float) -> None:
    """Wait until every replica has replayed the primary's WAL up to now.

    Called after :func:`prepare_table`, so a run never starts with replicas
    that still show the previous run's versions.  Raises TimeoutError.
    """
    if not replicas:
        return
    conn = psycopg2.connect(primary, application_name="labs-setup")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            lsn = cur.fetchone()[0]
    finally:
        conn.close()
    deadline = time.monotonic() + timeout
    for dsn in replicas:
        conn = psycopg2.connect(dsn, application_name="labs-setup")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                    if cur.fetchone()[0]:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"replica {dsn}: has not replayed the primary's WAL up to {lsn} "
                            f"after {timeout:g} s"
                        )
                    time.sleep(0.02)
        finally:
            conn.close()


# ---------------------------------------------------------------------------
# What both flavours share: keys, versions, routing, counts
# ---------------------------------------------------------------------------


class _Replica:
    """A replica as the router sees it: its driver and whether it is usable."""

    def __init__(self, index: int, driver) -> None:
        self.index = index
        self.driver = driver
        self.down_until = -math.inf  # skipped until then (run-relative seconds)
        self.probing = False  # one read at a time tries a replica that failed
        self.failures = 0


class _KeyedBase:
    """Key choice, versions, routing and the cache's settings; no I/O here."""

    def __init__(
        self,
        scenario: Scenario,
        ctx: RunContext,
        primary,
        replicas: list,
        redis_url: str | None,
    ) -> None:
        self.scenario = scenario
        self.ctx = ctx
        self.primary = primary
        self.replicas = [_Replica(i, d) for i, d in enumerate(replicas)]
        self.limit = getattr(primary, "limit", None)
        self.kind = getattr(primary, "kind", "?")
        w = scenario.workload
        # The streams simlib's replication 0 uses, so the live run sees the
        # same keys and writes in arrival order (keys and writes are drawn in
        # assign(), which the load generator calls in arrival order).
        streams = Streams(scenario.seed, 0)
        self._key = streams.choice("keys", w.popularity.probabilities(w.keys))
        self._write = streams.uniform("writes")
        self._routing = streams.uniform("routing")
        reps = scenario.replicas
        self._ryw = reps is not None and reps.route_reads == "read_your_writes"
        self._user = streams.uniform("clients") if self._ryw and w.kind == "open" else None
        self._lock = threading.Lock()
        #: key -> newest version whose COMMIT has returned
        self.versions: dict[int, int] = {}
        self._last_write: dict[int, float] = {}  # client -> when its last write committed
        cache = scenario.cache
        self.cache = cache
        self.redis_url = redis_url
        self.prefix = f"l:{uuid.uuid4().hex[:6]}:"
        self.ttl_ms: int | None = None
        if cache is not None and math.isfinite(cache.ttl):
            self.ttl_ms = max(1, round(cache.ttl * 1000.0))
        self.counts = {"cache_errors": 0, "replica_failures": 0, "coalesced": 0}
        #: the Redis limit set for ``capacity`` (labs.cache_memory.CapacitySetting)
        self.capacity = None

    # -- arrival order ----------------------------------------------------------
    def assign(self, rec: Record) -> None:
        """Draw the request's key, whether it writes, and (open RYW) its user."""
        w = self.scenario.workload
        rec.key = self._key()
        rec.write = self._write() < w.write_fraction
        if self._user is not None:
            rec.client = min(int(self._user() * w.clients), w.clients - 1)

    # -- versions ----------------------------------------------------------------
    def begin(self, rec: Record) -> None:
        rec.newest = self.versions.get(rec.key, 0)

    def committed(self, rec: Record, version: int) -> None:
        with self._lock:
            if version > self.versions.get(rec.key, 0):
                self.versions[rec.key] = version
            if self._ryw:
                self._last_write[rec.client] = self.ctx.now()

    # -- routing -------------------------------------------------------------------
    def route(self, rec: Record) -> _Replica | None:
        """The replica a read goes to, or None for the primary."""
        reps = self.scenario.replicas
        if reps is None or reps.route_reads == "primary" or not self.replicas:
            return None
        now = self.ctx.now()
        if self._ryw:
            wrote = self._last_write.get(rec.client)
            if wrote is not None and now - wrote < reps.ryw_window:
                return None
        n = len(self.replicas)
        with self._lock:
            replica = self.replicas[min(int(self._routing() * n), n - 1)]
            if now < replica.down_until:
                rec.failover = True
                return None
            if replica.failures and now >= replica.down_until:
                if replica.probing:  # someone is already trying it again
                    rec.failover = True
                    return None
                replica.probing = True
        return replica

    def replica_ok(self, replica: _Replica) -> None:
        if replica.failures:
            with self._lock:
                replica.failures = 0
                replica.probing = False

    def replica_failed(self, replica: _Replica, exc: BaseException) -> bool:
        """A read on ``replica`` failed: True when it should go to the primary instead.

        A pool timeout on a healthy replica is the scenario's own outcome (as
        in simlib); anything else, or any failure of a replica already known
        to have failed, takes it out of the routing for REPLICA_RETRY seconds.
        """
        with self._lock:
            known_bad = replica.failures > 0
            replica.probing = False
            if self.ctx.stopping.is_set():  # the run is winding down, not a fault
                return False
            if classify(exc)[0] == TIMEOUT and not known_bad:
                return False
            replica.failures += 1
            replica.down_until = self.ctx.now() + REPLICA_RETRY
            self.counts["replica_failures"] += 1
        return True

    def cache_failed(self, rec: Record) -> None:
        rec.cache_error = True
        with self._lock:
            self.counts["cache_errors"] += 1

    def _key_name(self, key: int) -> str:
        return f"{self.prefix}{key}"

    def details(self) -> dict:
        out = dict(self.primary.details())
        out["keyed"] = {
            "table": KEYED_TABLE,
            "redis_prefix": self.prefix if self.cache is not None else None,
            "replicas": len(self.replicas),
            **self.counts,
            "replicas_failed": [r.index for r in self.replicas if r.failures],
        }
        return out


def _redis_kwargs() -> dict:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py retries a failed call 3 times with a backoff of up
    # to seconds by default, which would turn "Redis is down" into seconds
    # of latency per request instead of an immediate fallback.
    return {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def cached_value(version: int) -> str:
    """What the cache stores for ``version``: ``"<version>:"`` padded to VALUE_BYTES."""
    return f"{version}:".ljust(VALUE_BYTES, "x")


def _version(value: bytes | str | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return int(value.split(":", 1)[0])


def _apply_capacity(scenario: Scenario, redis_url: str, prefix: str):
    """Bound Redis to the cache's capacity (None when unbounded): labs/cache_memory.py."""
    cache = scenario.cache
    if cache is None or cache.capacity is None:
        return None
    import redis

    from labs.cache_memory import apply_capacity

    ttl_ms = max(1, round(cache.ttl * 1000.0)) if math.isfinite(cache.ttl) else None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=10.0)
    try:
        return apply_capacity(client, cache.capacity, prefix, ttl_ms, value=cached_value(0))
    finally:
        client.close()


def _restore_capacity(redis_url: str, setting) -> None:
    import redis

    from labs.cache_memory import restore_capacity

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        restore_capacity(client, setting)
    except Exception:  # noqa: BLE001 - Redis may have been stopped (a fault test)
        pass
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Threads: sqlalchemy, psycopg2, psycopg_pool, none
# ---------------------------------------------------------------------------


class KeyedDriver(_KeyedBase):
    """The keyed path over thread-based drivers (one per database) and redis-py."""

    def __init__(self, scenario, ctx, primary, replicas, redis_url) -> None:
        super().__init__(scenario, ctx, primary, replicas, redis_url)
        self.redis = None
        self._inflight: dict[int, concurrent.futures.Future] = {}

    def open(self) -> None:
        if self.cache is not None:
            import redis

            pool = redis.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_TIMEOUT,
                **_redis_kwargs(),
            )
            self.redis = redis.Redis(connection_pool=pool)
            # Open every connection now (and have Redis allocate its buffers),
            # then size maxmemory on top of them.
            held = [pool.get_connection() for _ in range(REDIS_CONNECTIONS)]
            for conn in held:
                conn.send_command("PING")
                conn.read_response()
            for conn in held:
                pool.release(conn)
            self.capacity = _apply_capacity(self.scenario, self.redis_url, self.prefix)
        self.primary.open()
        for r in self.replicas:
            r.driver.open()

    def close(self) -> None:
        for d in [*(r.driver for r in self.replicas), self.primary]:
            try:
                d.close()
            except Exception:  # noqa: BLE001 - a replica stopped mid-run
                pass
        if self.redis is not None:
            try:
                for batch in _batches(self.redis.scan_iter(f"{self.prefix}*", count=1000)):
                    self.redis.unlink(*batch)
            except Exception:  # noqa: BLE001 - Redis may be gone (a fault test)
                pass
            self.redis.close()
            if self.capacity is not None:
                _restore_capacity(self.redis_url, self.capacity)

    def serve(self, rec: Record) -> bool:
        ctx = self.ctx
        rec.started = ctx.now()
        CURRENT_RECORD.set(rec)
        self.begin(rec)
        try:
            if rec.write:
                self._serve_write(rec)
            else:
                self._serve_read(rec)
            rec.outcome = OK
        except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
            failed(rec, exc)
        rec.finished = ctx.now()
        return rec.outcome == OK

    def _serve_read(self, rec: Record) -> None:
        name = self._key_name(rec.key)
        cache = self.cache
        future = None
        if cache is not None:
            try:
                value = _version(self.redis.get(name))
            except Exception:  # noqa: BLE001 - redis.RedisError, OSError: fall back
                self.cache_failed(rec)
                value = None
            if value is not None:
                rec.source, rec.version = "cache", value
                return
            if cache.single_flight:
                with self._lock:
                    leader = self._inflight.get(rec.key)
                    if leader is None:
                        future = self._inflight[rec.key] = concurrent.futures.Future()
                if leader is not None:
                    rec.source = "coalesced"
                    with self._lock:
                        self.counts["coalesced"] += 1
                    rec.version = leader.result()  # raises the leader's failure
                    return
        try:
            version = self._read_database(rec)
            if cache is not None and not rec.cache_error:
                try:
                    self.redis.set(name, cached_value(version), px=self.ttl_ms)
                except Exception:  # noqa: BLE001
                    self.cache_failed(rec)
        except BaseException as exc:
            if future is not None:
                self._settle(rec.key, future, exc=exc)
            raise
        if future is not None:
            self._settle(rec.key, future, version=version)
        rec.version = version

    def _settle(self, key: int, future, version: int | None = None, exc=None) -> None:
        with self._lock:
            del self._inflight[key]
        if exc is None:
            future.set_result(version)
        else:
            future.set_exception(exc)

    def _read_database(self, rec: Record) -> int:
        replica = self.route(rec)
        if replica is not None:
            try:
                version = replica.driver.call(rec, False)
            except Exception as exc:  # noqa: BLE001
                if not self.replica_failed(replica, exc):
                    raise
                rec.failover = True
            else:
                self.replica_ok(replica)
                rec.source = f"replica{replica.index}"
                return version
        rec.source = "primary"
        return self.primary.call(rec, False)

    def _serve_write(self, rec: Record) -> None:
        version = self.primary.call(rec, True)
        rec.source, rec.version = "primary", version
        self.committed(rec, version)
        cache = self.cache
        if cache is None or cache.on_write == "none":
            return
        name = self._key_name(rec.key)
        try:
            if cache.on_write == "invalidate":
                self.redis.delete(name)
            else:
                self.redis.set(name, cached_value(version), px=self.ttl_ms)
        except Exception:  # noqa: BLE001 - the write stands; the cache may now be stale
            self.cache_failed(rec)


def _batches(items, size: int = 1000):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------
# asyncio: asyncpg and redis.asyncio
# ---------------------------------------------------------------------------


class AsyncKeyedDriver(_KeyedBase):
    """The keyed path over asyncpg pools (one per database) and redis.asyncio.

    Everything runs on the loop's one thread, so the shared state needs no
    lock; the base class's lock is uncontended here and costs little.
    """

    def __init__(self, scenario, ctx, primary, replicas, redis_url) -> None:
        super().__init__(scenario, ctx, primary, replicas, redis_url)
        self.redis = None
        self._inflight: dict[int, asyncio.Future] = {}

    async def open(self) -> None:
        if self.cache is not None:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_TIMEOUT,
                **_redis_kwargs(),
            )
            self.redis = redis.asyncio.Redis(connection_pool=pool)
            held = [await pool.get_connection() for _ in range(REDIS_CONNECTIONS)]
            for conn in held:
                await conn.send_command("PING")
                await conn.read_response()
            for conn in held:
                await pool.release(conn)
            # blocking, but before any traffic: the loop has nothing else to do
            self.capacity = _apply_capacity(self.scenario, self.redis_url, self.prefix)
        await self.primary.open()
        for r in self.replicas:
            await r.driver.open()

    async def close(self) -> None:
        for d in [*(r.driver for r in self.replicas), self.primary]:
            try:
                await d.close()
            except Exception:  # noqa: BLE001
                pass
        if self.redis is not None:
            try:
                batch = []
                async for name in self.redis.scan_iter(f"{self.prefix}*", count=1000):
                    batch.append(name)
                    if len(batch) >= 1000:
                        await self.redis.unlink(*batch)
                        batch = []
                if batch:
                    await self.redis.unlink(*batch)
            except Exception:  # noqa: BLE001
                pass
            await self.redis.aclose()
            if self.capacity is not None:
                _restore_capacity(self.redis_url, self.capacity)

    async def serve(self, rec: Record) -> bool:
        ctx = self.ctx
        rec.started = ctx.now()
        CURRENT_RECORD.set(rec)
        self.begin(rec)
        try:
            if rec.write:
                await self._serve_write(rec)
            else:
                await self._serve_read(rec)
            rec.outcome = OK
        except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
            failed(rec, exc)
        rec.finished = ctx.now()
        return rec.outcome == OK

    async def _serve_read(self, rec: Record) -> None:
        name = self._key_name(rec.key)
        cache = self.cache
        future = None
        if cache is not None:
            try:
                value = _version(await self.redis.get(name))
            except Exception:  # noqa: BLE001
                self.cache_failed(rec)
                value = None
            if value is not None:
                rec.source, rec.version = "cache", value
                return
            if cache.single_flight:
                leader = self._inflight.get(rec.key)
                if leader is not None:
                    rec.source = "coalesced"
                    self.counts["coalesced"] += 1
                    rec.version = await asyncio.shield(leader)
                    return
                future = self._inflight[rec.key] = asyncio.get_running_loop().create_future()
        try:
            version = await self._read_database(rec)
            if cache is not None and not rec.cache_error:
                try:
                    await self.redis.set(name, cached_value(version), px=self.ttl_ms)
                except Exception:  # noqa: BLE001
                    self.cache_failed(rec)
        except BaseException as exc:
            if future is not None:
                del self._inflight[rec.key]
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        if future is not None:
            del self._inflight[rec.key]
            future.set_result(version)
        rec.version = version

    async def _read_database(self, rec: Record) -> int:
        replica = self.route(rec)
        if replica is not None:
            try:
                version = await replica.driver.call(rec, False)
            except Exception as exc:  # noqa: BLE001
                if not self.replica_failed(replica, exc):
                    raise
                rec.failover = True
            else:
                self.replica_ok(replica)
                rec.source = f"replica{replica.index}"
                return version
        rec.source = "primary"
        return await self.primary.call(rec, False)

    async def _serve_write(self, rec: Record) -> None:
        version = await self.primary.call(rec, True)
        rec.source, rec.version = "primary", version
        self.committed(rec, version)
        cache = self.cache
        if cache is None or cache.on_write == "none":
            return
        name = self._key_name(rec.key)
        try:
            if cache.on_write == "invalidate":
                await self.redis.delete(name)
            else:
                await self.redis.set(name, cached_value(version), px=self.ttl_ms)
        except Exception:  # noqa: BLE001
            self.cache_failed(rec)


def keyed_driver(scenario: Scenario, ctx: RunContext, driver_class: Callable, replicas: list[str],
                 redis_url: str | None, asynchronous: bool):
    """The keyed driver: one ``driver_class`` pool per database, sharing ``ctx``'s clock."""
    primary = driver_class(scenario, ctx)
    reps = [driver_class(scenario, ctx.for_database(dsn)) for dsn in replicas]
    cls = AsyncKeyedDriver if asynchronous else KeyedDriver
    return cls(scenario, ctx, primary, reps, redis_url)
