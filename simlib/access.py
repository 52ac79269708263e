"""The keyed request path: reads through a cache and replicas, writes to the primary.

Used instead of the plain :meth:`simlib.workload.Workload.serve` when the
scenario has a ``[cache]``, ``[replicas]`` or writes, because then *which* key
a request touches, and which version of it comes back, matters.

A **read** of key ``k``, as an application with cache-aside and read
replicas does it:

1. note the newest version of ``k`` committed on the primary (what a fresh
   read must return at least: the contract's definition of a stale read);
2. with a cache, ``GET k`` (``hit_time``): a hit answers at once with the
   cached version (:mod:`simlib.cache`);  with ``single_flight`` a miss for a
   key already being fetched waits for that fetch and takes its result;
3. otherwise query the database chosen by ``route_reads`` (the primary, or a
   replica: :mod:`simlib.replicas`) through that database's pool, exactly as
   the plain path does: checkout, round trip and service time, reset,
   return.  The version read is the one visible there when the query
   starts (a Postgres statement's snapshot is taken at its start);
4. with a cache, ``SETEX k ttl value`` (``hit_time``), then answer.

A **write** of key ``k`` goes through the primary's pool; the new version
commits when the query's result is back (the ``COMMIT``), is shipped to the
replicas, and then ``on_write`` acts on the cache (``DEL`` or ``SETEX``,
``hit_time``), in that order: update the database first, then the cache.

Cache calls take effect when issued, and the client then waits ``hit_time``
for the reply.  Latency runs from arrival to answer for hits and misses alike;
``checkout_*`` and ``query_mean_ms`` cover only the requests that used a
connection (a cache hit does not).
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from simlib.cache import CacheAside
from simlib.database import ConnectionRefused, DatabaseServer
from simlib.metrics import ERROR, OK, TIMEOUT, Recorder
from simlib.pools.base import PoolModel, PoolTimeout
from simlib.replicas import Replica, ReplicaSet
from simlib.scenario import Client as ClientConfig
from simlib.scenario import Workload as WorkloadConfig
from simlib.streams import Streams
from simlib.workload import Request, Workload

#: What a database call returns: outcome, when the connection was in hand,
#: when the query's result was back, and the version read or written.
DbResult = tuple[int, float | None, float | None, int]


class KeyedWorkload(Workload):
    """The workload with versions per key, a cache-aside cache and read replicas."""

    def __init__(
        self,
        env: simpy.Environment,
        config: WorkloadConfig,
        pool: PoolModel,
        server: DatabaseServer,
        recorder: Recorder,
        service_time: Callable[[], float],
        streams: Streams,
        client: ClientConfig | None = None,
        cache: CacheAside | None = None,
        replicas: ReplicaSet | None = None,
    ) -> None:
        super().__init__(env, config, pool, server, recorder, service_time, streams, True, client)
        self.cache = cache
        self.replicas = replicas
        #: key -> newest version committed on the primary (0 = never written)
        self.versions: dict[int, int] = {}
        # Open workloads have no client loops: draw a user per request, but
        # only when routing depends on it, so other runs draw nothing extra.
        self._user: Callable[[], float] | None = None
        if replicas is not None and replicas.needs_clients and config.kind == "open":
            self._user = streams.uniform("clients")
        # Tell the recorder which of its counts apply (the others stay None,
        # so their metrics are NaN and left out of the summary).
        recorder.db_queries = 0
        if cache is not None:
            recorder.cache_lookups = 0
            if cache.single_flight:
                recorder.cache_coalesced = 0
        if config.write_fraction > 0:
            recorder.reads_returned = 0
        if replicas is not None:
            recorder.replica_reads = [0] * len(replicas.replicas)

    # -- one request --------------------------------------------------------
    def serve(self, client: int = -1):
        """Carry one read or write through cache, pool and database; True if it succeeded."""
        env = self.env
        recorder = self.recorder
        request = Request(env.now)
        request.key, request.write = self.next_key()
        key = request.key
        if client < 0 and self._user is not None:
            client = min(int(self._user() * self.config.clients), self.config.clients - 1)
        measured = recorder.start <= request.arrival < recorder.end
        if measured:
            recorder.arrivals += 1
            self.pending += 1
        recorder.request_started()
        newest = self.versions.get(key, 0)  # what a fresh read must return, at least
        if self._dispatch is not None:
            yield env.timeout(self._dispatch())
        if request.write:
            outcome, got, done = yield from self._serve_write(request, measured, client)
        else:
            outcome, got, done = yield from self._serve_read(request, measured, client, newest)
        self._finish(request, measured, outcome, got, done)
        return outcome == OK

    def _serve_read(self, request: Request, measured: bool, client: int, newest: int):
        env = self.env
        recorder = self.recorder
        cache = self.cache
        key = request.key
        fill: simpy.Event | None = None
        if cache is not None:
            if measured:
                recorder.cache_lookups += 1
            version = cache.lookup(key)
            if cache.hit_time:
                yield env.timeout(cache.hit_time)
            if version is not None:
                if measured:
                    recorder.cache_hits += 1
                self._returned(version, newest, measured)
                return OK, None, None
            if cache.single_flight:
                leader = cache.inflight.get(key)
                if leader is not None:
                    # Someone is already fetching this key: wait and share it.
                    if measured:
                        recorder.cache_coalesced += 1
                    outcome, version = yield leader
                    if outcome == OK:
                        self._returned(version, newest, measured)
                    return outcome, None, None
                fill = cache.inflight[key] = env.event()
        replica = None if self.replicas is None else self.replicas.route(client)
        if measured and self.replicas is not None:
            if replica is None:
                recorder.primary_reads += 1
            else:
                recorder.replica_reads[replica.index] += 1
        outcome, got, done, version = yield from self._database(request, measured, replica)
        if cache is not None:
            if outcome == OK:
                cache.fill(key, version)
                if cache.hit_time:
                    yield env.timeout(cache.hit_time)
            if fill is not None:
                del cache.inflight[key]
                fill.succeed((outcome, version))
        if outcome == OK:
            self._returned(version, newest, measured)
        return outcome, got, done

    def _serve_write(self, request: Request, measured: bool, client: int):
        outcome, got, done, version = yield from self._database(
            request, measured, None, writer=client
        )
        cache = self.cache
        if outcome == OK and cache is not None:
            if cache.after_write(request.key, version) and cache.hit_time:
                yield self.env.timeout(cache.hit_time)
        return outcome, got, done

    def _returned(self, version: int, newest: int, measured: bool) -> None:
        """A read returned ``version``: count it, and whether it was stale."""
        recorder = self.recorder
        if measured and recorder.reads_returned is not None:
            recorder.reads_returned += 1
            if version < newest:
                recorder.stale_reads += 1

    def _database(
        self, request: Request, measured: bool, replica: Replica | None, writer: int | None = None
    ):
        """One query through a pool: the plain path's steps, with a version read or written.

        ``replica`` None means the primary.  ``writer`` (the client) makes it
        a write, which commits when the result is back.
        """
        env = self.env
        recorder = self.recorder
        pool, server = (
            (self.pool, self.server) if replica is None else (replica.pool, replica.server)
        )
        try:
            conn = yield from pool.checkout(request)
        except PoolTimeout:
            return TIMEOUT, None, None, 0
        except ConnectionRefused:
            return ERROR, None, None, 0
        got = env.now
        recorder.checked_out()
        if measured:
            recorder.db_queries += 1
        key = request.key
        if writer is None:
            # The statement's snapshot is taken as it starts.
            version = self.versions.get(key, 0) if replica is None else replica.version(key, got)
        reset = pool.reset_delay(conn)
        if self._hold is not None:
            reset += self._hold()
        if server.cpu is None:
            yield env.timeout(server.rtt + self.service_time())
        else:
            if server.rtt:
                yield env.timeout(server.rtt)
            yield server.cpu.run(self.service_time())
        done = env.now
        if writer is not None:
            version = self.versions[key] = self.versions.get(key, 0) + 1
            if self.replicas is not None:
                self.replicas.committed(key, version, writer)
        if reset:
            yield env.timeout(reset)
        yield from pool.release(conn)
        recorder.checked_in()
        return OK, got, done, version
