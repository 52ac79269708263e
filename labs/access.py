"""The keyed request path, live: cache-aside on Redis, read replicas, versions per key.

The live counterpart of :mod:`simlib.access`, used instead of a driver's plain
``serve`` when the scenario is keyed (``Scenario.keyed``: a ``[cache]``,
``[replicas]`` or writes).  It is written once, as steps (:mod:`labs.steps`),
over any driver: with thread-based drivers it runs on the request's thread
with redis-py, with asyncio drivers on the event loop with ``redis.asyncio``.
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

Everything a request did is written into its :class:`~labs.records.Record`
(key, write, version, newest, source), and the executor counts the metrics
from the records with simlib's rules (labs/live_metrics.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
import uuid
from typing import Any

import psycopg2
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from labs.cache_memory import CapacitySetting, apply_capacity, restore_capacity
from labs.drivers import classify
from labs.drivers.base import Driver, served
from labs.query import one
from labs.records import KEYED_TABLE, TIMEOUT, Record, RunContext
from labs.steps import Steps
from simlib.scenario import Scenario
from simlib.streams import Streams

__all__ = [
    "REPLICA_RETRY",
    "KeyedDriver",
    "cached_value",
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
            lsn = one(cur)
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
                    if one(cur):
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
# The cache: Redis through redis-py, as steps
# ---------------------------------------------------------------------------


def cached_value(version: int) -> str:
    """What the cache stores for ``version``: ``"<version>:"`` padded to VALUE_BYTES."""
    return f"{version}:".ljust(VALUE_BYTES, "x")


def _version(value: bytes | str | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return int(value.split(":", 1)[0])


def _blocking_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=timeout)


class RedisCache:
    """The application's cache-aside calls on Redis: ``GET``, ``SET ... PX``, ``DEL``.

    redis-py for thread-based drivers, ``redis.asyncio`` for asyncio ones: the
    two clients have the same methods, so every call here is one step that
    either runner makes.  No retries: redis-py retries a failed call 3 times
    with a backoff of up to seconds by default, which would turn "Redis is
    down" into seconds of latency per request instead of an immediate fallback.
    """

    def __init__(self, scenario: Scenario, url: str, asynchronous: bool) -> None:
        cache = scenario.cache
        assert cache is not None
        self.scenario = scenario
        self.url = url
        self.prefix = f"l:{uuid.uuid4().hex[:6]}:"
        self.ttl_ms: int | None = None
        if math.isfinite(cache.ttl):
            self.ttl_ms = max(1, round(cache.ttl * 1000.0))
        module: Any = redis.asyncio if asynchronous else redis
        self.pool = module.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT, socket_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.client = module.Redis(connection_pool=self.pool)
        self._close = self.client.aclose if asynchronous else self.client.close
        #: the Redis limit set for ``[cache] capacity`` (and restored at the end)
        self.capacity: CapacitySetting | None = None

    def name(self, key: int) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: int) -> Steps[int | None]:
        return _version((yield self.client.get, (self.name(key),)))

    def store(self, key: int, version: int) -> Steps[None]:
        yield self.client.set, (self.name(key), cached_value(version), None, self.ttl_ms)

    def delete(self, key: int) -> Steps[None]:
        yield self.client.delete, (self.name(key),)

    def opening(self) -> Steps[None]:
        """Open every connection now (Redis allocates its buffers), then size maxmemory."""
        held = []
        for _ in range(REDIS_CONNECTIONS):
            held.append((yield self.pool.get_connection, ()))
        for conn in held:
            yield conn.send_command, ("PING",)
            yield conn.read_response, ()
        for conn in held:
            yield self.pool.release, (conn,)
        capacity = self.scenario.cache.capacity  # type: ignore[union-attr]
        if capacity is not None:
            # blocking, but before any traffic: the loop has nothing else to do
            client = _blocking_client(self.url, timeout=10.0)
            try:
                self.capacity = apply_capacity(
                    client, capacity, self.prefix, self.ttl_ms, value=cached_value(0)
                )
            finally:
                client.close()

    def closing(self) -> Steps[None]:
        """Delete the run's keys, close the client, put Redis's memory limit back."""
        try:
            cursor = None
            while cursor != 0:
                cursor, names = yield self.client.scan, (cursor or 0, f"{self.prefix}*", 1000)
                if names:
                    yield self.client.unlink, tuple(names)
        except Exception:  # noqa: BLE001 - Redis may be gone (a fault test)
            pass
        yield self._close, ()
        if self.capacity is not None:
            client = _blocking_client(self.url, timeout=2.0)
            try:
                restore_capacity(client, self.capacity)
            except Exception:  # noqa: BLE001 - Redis may have been stopped (a fault test)
                pass
            finally:
                client.close()


# ---------------------------------------------------------------------------
# Keys, versions, routing
# ---------------------------------------------------------------------------


class _Replica:
    """A replica as the router sees it: its driver and whether it is usable."""

    def __init__(self, index: int, driver: Driver) -> None:
        self.index = index
        self.driver = driver
        self.down_until = -math.inf  # skipped until then (run-relative seconds)
        self.probing = False  # one read at a time tries a replica that failed
        self.failures = 0


class _Router:
    """Key choice, versions and read routing, as simlib draws and decides them; no I/O."""

    def __init__(self, scenario: Scenario, ctx: RunContext, replicas: list[_Replica]) -> None:
        self.scenario = scenario
        self.ctx = ctx
        self.replicas = replicas
        w = scenario.workload
        # The streams simlib's replication 0 uses, so the live run sees the
        # same keys and writes in arrival order (keys and writes are drawn in
        # assign(), which the load generator calls in arrival order).
        streams = Streams(scenario.seed, 0)
        self._key = streams.choice("keys", w.popularity.probabilities(w.keys))
        self._write = streams.uniform("writes")
        self._routing = streams.uniform("routing")
        reps = scenario.replicas
        self.ryw = reps is not None and reps.route_reads == "read_your_writes"
        self._user = streams.uniform("clients") if self.ryw and w.kind == "open" else None
        self.lock = threading.Lock()
        #: key -> newest version whose COMMIT has returned
        self.versions: dict[int, int] = {}
        self._last_write: dict[int, float] = {}  # client -> when its last write committed
        self.replica_failures = 0

    def assign(self, rec: Record) -> None:
        """Draw the request's key, whether it writes, and (open RYW) its user."""
        w = self.scenario.workload
        rec.key = int(self._key())
        rec.write = self._write() < w.write_fraction
        if self._user is not None:
            rec.client = min(int(self._user() * w.clients), w.clients - 1)

    def committed(self, rec: Record, version: int) -> None:
        with self.lock:
            if version > self.versions.get(rec.key, 0):
                self.versions[rec.key] = version
            if self.ryw:
                self._last_write[rec.client] = self.ctx.now()

    def route(self, rec: Record) -> _Replica | None:
        """The replica a read goes to, or None for the primary."""
        reps = self.scenario.replicas
        if reps is None or reps.route_reads == "primary" or not self.replicas:
            return None
        now = self.ctx.now()
        if self.ryw:
            wrote = self._last_write.get(rec.client)
            if wrote is not None and now - wrote < reps.ryw_window:
                return None
        n = len(self.replicas)
        with self.lock:
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
            with self.lock:
                replica.failures = 0
                replica.probing = False

    def replica_failed(self, replica: _Replica, exc: BaseException) -> bool:
        """A read on ``replica`` failed: True when it should go to the primary instead.

        A pool timeout on a healthy replica is the scenario's own outcome (as
        in simlib); anything else, or any failure of a replica already known
        to have failed, takes it out of the routing for REPLICA_RETRY seconds.
        """
        with self.lock:
            known_bad = replica.failures > 0
            replica.probing = False
            if self.ctx.stopping.is_set():  # the run is winding down, not a fault
                return False
            if classify(exc)[0] == TIMEOUT and not known_bad:
                return False
            replica.failures += 1
            replica.down_until = self.ctx.now() + REPLICA_RETRY
            self.replica_failures += 1
        return True


# ---------------------------------------------------------------------------
# The keyed request path
# ---------------------------------------------------------------------------


class KeyedDriver:
    """The keyed path over one driver per database (all of one kind) and Redis.

    It offers what the load generator asks of any driver -- ``asynchronous``,
    ``limit``, ``opening()``, ``closing()``, ``serve(rec)``, ``details()`` --
    plus ``assign(rec)``, which draws each request's key in arrival order.
    """

    def __init__(
        self, scenario: Scenario, ctx: RunContext, primary: Driver, replicas: list[Driver],
        redis_url: str | None,
    ) -> None:
        self.scenario = scenario
        self.ctx = ctx
        self.primary = primary
        self.kind = primary.kind
        self.asynchronous = primary.asynchronous
        self.limit = None if primary.limit is None else primary.limit * (1 + len(replicas))
        self.router = _Router(scenario, ctx, [_Replica(i, d) for i, d in enumerate(replicas)])
        self.assign = self.router.assign
        self.cache: RedisCache | None = None
        if scenario.cache is not None:
            if not redis_url:
                raise ValueError(
                    "cache: the scenario has a [cache] and needs a Redis URL, got none"
                )
            self.cache = RedisCache(scenario, redis_url, self.asynchronous)
        #: single flight: key -> the future of the read fetching it
        self._inflight: dict[int, Any] = {}
        self.counts = {"cache_errors": 0, "coalesced": 0}

    @property
    def drivers(self) -> list[Driver]:
        return [self.primary, *(r.driver for r in self.router.replicas)]

    def opening(self) -> Steps[None]:
        if self.cache is not None:
            yield from self.cache.opening()
        for driver in self.drivers:
            yield driver.open, ()

    def closing(self) -> Steps[None]:
        for driver in [*self.drivers[1:], self.primary]:
            try:
                yield from driver.closing()  # its leaked connections first, then its pool
            except Exception:  # noqa: BLE001 - a replica stopped mid-run
                pass
        if self.cache is not None:
            yield from self.cache.closing()

    def serve(self, rec: Record) -> Steps[bool]:
        rec.newest = self.router.versions.get(rec.key, 0)
        path = self._serve_write(rec) if rec.write else self._serve_read(rec)
        return served(self.ctx, rec, path, self.primary.pool_timeouts)

    def _cache_failed(self, rec: Record) -> None:
        rec.cache_error = True
        with self.router.lock:
            self.counts["cache_errors"] += 1

    def _serve_read(self, rec: Record) -> Steps[None]:
        cache = self.cache
        future = None
        if cache is not None:
            try:
                value = yield from cache.get(rec.key)
            except Exception:  # noqa: BLE001 - redis.RedisError, OSError: fall back
                self._cache_failed(rec)
                value = None
            if value is not None:
                rec.source, rec.version = "cache", value
                return
            if self.scenario.cache.single_flight:  # type: ignore[union-attr]
                leader, future = self._lead(rec.key)
                if leader is not None:
                    rec.source = "coalesced"
                    rec.version = yield self._follow, (leader,)  # raises the leader's failure
                    return
        try:
            version = yield from self._read_database(rec)
            if cache is not None and not rec.cache_error:
                try:
                    yield from cache.store(rec.key, version)
                except Exception:  # noqa: BLE001
                    self._cache_failed(rec)
        except BaseException as exc:
            if future is not None:
                self._settle(rec.key, future, exc=exc)
            raise
        if future is not None:
            self._settle(rec.key, future, version=version)
        rec.version = version

    # -- single flight: one fetch per key in flight, the other misses wait for it --
    def _lead(self, key: int) -> tuple[Any, Any]:
        """(the leader's future, None) if a fetch of ``key`` is in flight, else (None, ours)."""
        with self.router.lock:
            leader = self._inflight.get(key)
            if leader is not None:
                self.counts["coalesced"] += 1
                return leader, None
            future: Any = (
                asyncio.get_running_loop().create_future() if self.asynchronous
                else concurrent.futures.Future()
            )
            self._inflight[key] = future
            return None, future

    def _follow(self, leader: Any) -> Any:
        """The leader's version: a blocking wait on a thread, an awaitable on the loop."""
        return asyncio.shield(leader) if self.asynchronous else leader.result()

    def _settle(self, key: int, future: Any, version: int | None = None,
                exc: BaseException | None = None) -> None:
        with self.router.lock:
            del self._inflight[key]
        if exc is None:
            future.set_result(version)
        else:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without followers

    def _read_database(self, rec: Record) -> Steps[int]:
        router = self.router
        replica = router.route(rec)
        if replica is not None:
            try:
                version = yield from replica.driver.call(rec, False)
            except Exception as exc:  # noqa: BLE001
                if not router.replica_failed(replica, exc):
                    raise
                rec.failover = True
            else:
                router.replica_ok(replica)
                rec.source = f"replica{replica.index}"
                return int(version)  # type: ignore[arg-type]  # a keyed read returns one
        rec.source = "primary"
        return int((yield from self.primary.call(rec, False)))  # type: ignore[arg-type]

    def _serve_write(self, rec: Record) -> Steps[None]:
        version = int((yield from self.primary.call(rec, True)))  # type: ignore[arg-type]
        rec.source, rec.version = "primary", version
        self.router.committed(rec, version)
        cache = self.cache
        on_write = self.scenario.cache.on_write if self.scenario.cache is not None else "none"
        if cache is None or on_write == "none":
            return
        try:
            if on_write == "invalidate":
                yield from cache.delete(rec.key)
            else:
                yield from cache.store(rec.key, version)
        except Exception:  # noqa: BLE001 - the write stands; the cache may now be stale
            self._cache_failed(rec)

    def details(self) -> dict[str, object]:
        out = dict(self.primary.details())
        replicas = self.router.replicas
        out["keyed"] = {
            "table": KEYED_TABLE,
            "redis_prefix": self.cache.prefix if self.cache is not None else None,
            "replicas": len(replicas),
            **self.counts,
            "replica_failures": self.router.replica_failures,
            "replicas_failed": [r.index for r in replicas if r.failures],
        }
        return out
