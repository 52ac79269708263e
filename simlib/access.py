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
   replica: :mod:`simlib.replicas`) through that database's pool, on the one
   request path every workload uses (:mod:`simlib.request`): checkout, round
   trip and service time, reset, return.  The version read is the one
   visible there when the query starts (a Postgres statement's snapshot is
   taken at its start);
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

from collections.abc import Callable, Generator
from typing import Any

import simpy

from simlib.cache import CacheAside
from simlib.interpreter import Interpreter
from simlib.metrics import OK, Recorder
from simlib.replicas import Replica, ReplicaSet
from simlib.request import Backend, Outcome, Request
from simlib.scenario import Scenario
from simlib.streams import Streams
from simlib.workload import Instance, Serving, Workload

#: What serving a read or a write returns: outcome, when the connection was in
#: hand, when the query's result was back (None where that did not happen).
Served = Generator[simpy.Event, Any, tuple[int, float | None, float | None]]


class KeyedWorkload(Workload):
    """The workload with versions per key, a cache-aside cache and read replicas."""

    def __init__(
        self, env: simpy.Environment, scenario: Scenario, primary: Backend, recorder: Recorder,
        streams: Streams, cache: CacheAside | None = None, replicas: ReplicaSet | None = None,
        interpreter: Interpreter | None = None,
    ) -> None:
        super().__init__(env, scenario, primary, recorder, streams, interpreter)
        config = self.config
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
    def serve(self, client: int = -1, woke: bool = True,
              request: Request | None = None, instance: Instance | None = None) -> Serving:
        """Carry one read or write through cache, pool and database; True if it succeeded."""
        if request is None:
            request = self.begin(client, woke)
        request.key, request.write = self.next_key()
        if request.client < 0 and self._user is not None:
            clients = self.config.clients
            request.client = min(int(self._user() * clients), clients - 1)
        newest = self.versions.get(request.key, 0)  # what a fresh read must return, at least
        if self._dispatch is not None:
            yield from self.dispatch(request)
        if request.write:
            outcome, got, done = yield from self._serve_write(request)
        else:
            outcome, got, done = yield from self._serve_read(request, newest)
        self.finish(request, outcome, got, done)
        return outcome == OK

    def _serve_read(self, request: Request, newest: int) -> Served:
        env = self.env
        recorder = self.recorder
        cache = self.cache
        key = request.key
        measured = request.measured
        fill: simpy.Event | None = None
        if cache is not None:
            if measured:
                recorder.cache_lookups += 1  # type: ignore[operator]  # set with a cache
            version = cache.lookup(key)
            if cache.hit_time:
                yield from self.interpreter.io(cache.hit_time)
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
                        recorder.cache_coalesced += 1  # type: ignore[operator]
                    outcome, version = yield from self.interpreter.blocked(leader)
                    if outcome == OK:
                        self._returned(version, newest, measured)
                    return outcome, None, None
                fill = cache.inflight[key] = env.event()
        outcome, got, done, version = yield from self._read_database(request)
        if cache is not None:
            if outcome == OK:
                cache.fill(key, version)
                if cache.hit_time:
                    yield from self.interpreter.io(cache.hit_time)
            if fill is not None:
                del cache.inflight[key]
                fill.succeed((outcome, version))
        if outcome == OK:
            self._returned(version, newest, measured)
        return outcome, got, done

    def _read_database(self, request: Request) -> Generator[simpy.Event, Any, Outcome]:
        """The read's query, on the database ``route_reads`` picks; the version it saw."""
        key = request.key
        replicas = self.replicas
        replica: Replica | None = None if replicas is None else replicas.route(request.client)
        if request.measured and replicas is not None:
            if replica is None:
                self.recorder.primary_reads += 1
            else:
                self.recorder.replica_reads[replica.index] += 1  # type: ignore[index]
        if replica is None:
            # The statement's snapshot is taken as it starts.
            versions = self.versions
            outcome = yield from self.path.use(
                request, self.primary, snapshot=lambda _got: versions.get(key, 0)
            )
        else:
            outcome = yield from self.path.use(
                request, replica.backend, snapshot=lambda got: replica.version(key, got)
            )
        return outcome

    def _serve_write(self, request: Request) -> Served:
        key = request.key

        def commit() -> int:
            # The new version commits when the query's result is back.
            version = self.versions[key] = self.versions.get(key, 0) + 1
            if self.replicas is not None:
                self.replicas.committed(key, version, request.client)
            return version

        outcome, got, done, version = yield from self.path.use(
            request, self.primary, commit=commit
        )
        cache = self.cache
        if outcome == OK and cache is not None:
            if cache.after_write(key, version) and cache.hit_time:
                yield from self.interpreter.io(cache.hit_time)
        return outcome, got, done

    def _returned(self, version: int, newest: int, measured: bool) -> None:
        """A read returned ``version``: count it, and whether it was stale."""
        recorder = self.recorder
        if measured and recorder.reads_returned is not None:
            recorder.reads_returned += 1
            if version < newest:
                recorder.stale_reads += 1
