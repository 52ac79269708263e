"""The system one replication simulates, assembled from a scenario.

From the back to the front, as a request meets them the other way round:

* **database servers**: the primary and, with ``[replicas]``, each streaming
  replica, each a :class:`~simlib.database.DatabaseServer` with the
  scenario's ``[database]`` settings (connect cost, round trip, cores,
  ``max_connections``);
* **the application process**: its Python, one
  :class:`~simlib.interpreter.Interpreter` (threads at a GIL, or tasks on an
  event loop, by the pool kind), on the primary's cores when ``[host]
  shared_cores`` says so;
* **the application's pools**: one per server with the scenario's ``[pool]``
  settings, as an application holds one engine per database URL (a
  :class:`~simlib.request.Backend` each), all in that one process;
* **tiers in front**: the replica set and its routing (:mod:`simlib.replicas`),
  the cache-aside cache (:mod:`simlib.cache`), PgBouncer between the pools and
  the primary (:mod:`simlib.pgbouncer`);
* **many processes**: a fleet's instances, each its own interpreter and pool
  (:mod:`simlib.fleet`), or serverless environments made on demand
  (:mod:`simlib.environments`);
* **the workload** that sends requests through all of it: the plain one, or
  the keyed one when the scenario is ``keyed`` (:mod:`simlib.access`).

This is where a new tier is wired in: a tier between the pools and a server
(a connection pooler) wraps the server a pool is given; a tier of many
application processes builds one pool per process in front of the same
server.  :func:`build` returns the workload, ready to start.
"""

from __future__ import annotations

import math

import simpy

from simlib.access import KeyedWorkload
from simlib.cache import CacheAside
from simlib.database import DatabaseServer, Server
from simlib.environments import ServerlessWorkload
from simlib.interpreter import Interpreter, Unlocked
from simlib.metrics import Recorder
from simlib.pgbouncer import PgBouncer
from simlib.pools import make_pool, pool_kind
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
        self._interpreter: Interpreter | None = None  # made with the primary

    def server(self, direct: bool = True) -> DatabaseServer:
        """A server with the scenario's ``[database]`` settings (``direct``: see DatabaseServer)."""
        s = self.scenario
        return DatabaseServer(
            self.env, s.database, self._connect, self.recorder, cpu_bound=s.query.cpu_bound,
            direct=direct,
        )

    def front(self, primary: DatabaseServer) -> Server:
        """What the applications connect to: the primary, or PgBouncer in front of it."""
        config = self.scenario.pgbouncer
        if config is None:
            return primary
        return PgBouncer(self.env, config, primary,
                         self.streams.distribution("pgbouncer_connect", config.connect_time),
                         self.recorder, self.streams.uniform("pgbouncer"))

    def interpreter(self, primary: DatabaseServer) -> Interpreter:
        """An application process's Python, on the primary's cores when ``[host]`` shares them."""
        s = self.scenario
        asynchronous = pool_kind(s.pool.kind).asynchronous
        if not s.host.gil and not asynchronous:
            return Unlocked(self.env)
        return Interpreter(
            self.env,
            cpu=primary.cpu if s.host.shared_cores else None,
            switch_interval=math.inf if asynchronous else s.host.switch_interval,
            wakeup=0.0 if asynchronous else s.host.wakeup,
            pick=(None if asynchronous or s.host.gil_order == "fifo"
                  else self.streams.uniform("gil")),
        )

    def backend(self, server: Server | None = None,
                interpreter: Interpreter | None = None) -> Backend:
        """A pool of the application's (the process of ``interpreter``) in front of ``server``."""
        s = self.scenario
        server = self.server() if server is None else server
        interp = self._interpreter if interpreter is None else interpreter
        pool = make_pool(self.env, server, self.recorder, s.pool, self._pool_uniform,
                         interp, s.client)
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
        many = s.fleet is not None or s.pgbouncer is not None or s.serverless is not None
        if many:
            self.recorder.count_tiers(pgbouncer=s.pgbouncer is not None,
                                      serverless=s.serverless is not None)
        server = self.server(direct=s.pgbouncer is None)
        front = self.front(server)
        if s.serverless is not None:
            return ServerlessWorkload(self.env, s, front, self.recorder, self.streams,
                                      lambda: self.interpreter(server))
        self._interpreter = interp = self.interpreter(server)
        primary = self.backend(front)
        if s.fleet is not None and s.fleet.instances > 1:
            processes = [(interp, primary)]
            for _ in range(s.fleet.instances - 1):
                other = self.interpreter(server)
                processes.append((other, self.backend(front, other)))
            fleet = Workload(self.env, s, primary, self.recorder, self.streams, interp,
                             processes=processes)
            for _, backend in processes:
                backend.pool.start()
            return fleet
        workload: Workload
        if s.keyed:
            replicas = self.replicas()
            if replicas is not None:
                replicas.start()
            cache = None if s.cache is None else CacheAside(self.env, s.cache)
            workload = KeyedWorkload(self.env, s, primary, self.recorder, self.streams,
                                     cache=cache, replicas=replicas, interpreter=interp)
        else:
            workload = Workload(self.env, s, primary, self.recorder, self.streams, interp)
        primary.pool.start()
        return workload


def build(
    env: simpy.Environment, scenario: Scenario, streams: Streams, recorder: Recorder
) -> Workload:
    """The workload of one replication with its pools, servers and tiers (see the module doc)."""
    return Builder(env, scenario, streams, recorder).workload()
