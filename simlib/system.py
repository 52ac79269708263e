"""The system one replication simulates, assembled from a scenario.

From the back to the front, as a request meets them the other way round:

* **database servers**: the primary and, with ``[replicas]``, each streaming
  replica, each a :class:`~simlib.database.DatabaseServer` with the
  scenario's ``[database]`` settings (connect cost, round trip, cores,
  ``max_connections``);
* **the application's pools**: one per server with the scenario's ``[pool]``
  settings, as an application holds one engine per database URL (a
  :class:`~simlib.request.Backend` each);
* **tiers in front**: the replica set and its routing (:mod:`simlib.replicas`),
  the cache-aside cache (:mod:`simlib.cache`);
* **the workload** that sends requests through all of it: the plain one, or
  the keyed one when the scenario is ``keyed`` (:mod:`simlib.access`).

This is where a new tier is wired in: a tier between the pools and a server
(a connection pooler) wraps the server a pool is given; a tier of many
application processes builds one pool per process in front of the same
server.  :func:`build` returns the workload, ready to start.
"""

from __future__ import annotations

import simpy

from simlib.access import KeyedWorkload
from simlib.cache import CacheAside
from simlib.database import DatabaseServer
from simlib.metrics import Recorder
from simlib.pools import make_pool
from simlib.replicas import Replica, ReplicaSet
from simlib.request import Backend
from simlib.scenario import Scenario
from simlib.streams import Streams
from simlib.workload import Workload


class Builder:
    """Builds the parts of one replication on its environment, streams and recorder."""

    def __init__(
        self, env: simpy.Environment, scenario: Scenario, streams: Streams, recorder: Recorder
    ) -> None:
        self.env = env
        self.scenario = scenario
        self.streams = streams
        self.recorder = recorder
        self._connect = streams.distribution("connect", scenario.database.connect_time)
        self._pool_uniform = streams.uniform("pool")

    def backend(self) -> Backend:
        """A server with the scenario's ``[database]`` settings and the application's pool."""
        s = self.scenario
        server = DatabaseServer(
            self.env, s.database, self._connect, self.recorder, cpu_bound=s.query.cpu_bound
        )
        pool = make_pool(self.env, server, self.recorder, s.pool, self._pool_uniform)
        return Backend(pool, server)

    def replicas(self) -> ReplicaSet | None:
        config = self.scenario.replicas
        if config is None:
            return None
        members = []
        for i in range(config.count):
            b = self.backend()
            members.append(Replica(i, b.server, b.pool))
        return ReplicaSet(
            self.env,
            config,
            members,
            self.streams.distribution("lag", config.lag),
            self.streams.uniform("routing"),
        )

    def workload(self) -> Workload:
        """The workload with everything behind it; the pools are started."""
        s = self.scenario
        primary = self.backend()
        workload: Workload
        if s.keyed:
            replicas = self.replicas()
            if replicas is not None:
                replicas.start()
            cache = None if s.cache is None else CacheAside(self.env, s.cache)
            workload = KeyedWorkload(self.env, s, primary, self.recorder, self.streams,
                                     cache=cache, replicas=replicas)
        else:
            workload = Workload(self.env, s, primary, self.recorder, self.streams)
        primary.pool.start()
        return workload


def build(
    env: simpy.Environment, scenario: Scenario, streams: Streams, recorder: Recorder
) -> Workload:
    """The workload of one replication with its pools, servers and tiers (see the module doc)."""
    return Builder(env, scenario, streams, recorder).workload()
