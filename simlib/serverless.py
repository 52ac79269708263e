"""Serverless functions: environments created on demand, cold starts, connection storms.

The scenario's ``[serverless]`` replaces the application process with
functions as AWS Lambda (and its likes) runs them:

* **An execution environment serves one invocation at a time.**  An
  invocation takes a warm idle environment if there is one (the one idle
  the shortest time, as a pool of warm sandboxes reuses the hottest);
  otherwise a new environment is created, while fewer than
  ``concurrency_limit`` exist; beyond that the invocation is **throttled**
  (refused at once: ``TooManyRequestsException``, counted in ``error_rate``
  and in ``throttle_rate``).
* **A new environment pays a cold start** (``cold_start``: the runtime's and
  the module's init, imports included) before its first invocation runs,
  and that invocation's latency includes it.
* **Connections.**  ``connection = "global"``: the handler's module opens one
  connection on first use and keeps it, so later (warm) invocations reuse
  it.  A burst that creates many environments opens that many connections at
  once: a connection storm.  ``"per_invocation"``: every invocation connects
  and closes, paying ``connect_time`` each time (cheap behind PgBouncer, dear
  against Postgres).  Either way an invocation's query, reset and the
  client's costs are those of the request path (:mod:`simlib.request`).
* **Reclaiming.**  An environment idle for ``keep_warm`` seconds is
  reclaimed.  Its process is frozen and killed without running any cleanup,
  so a global connection is *not* closed: it stays open on the server, an
  idle session, until the server drops it (``[database]
  idle_session_timeout``; with 0, Postgres's default, it never does in the
  run).  Such leftovers count against ``max_connections`` like any other.

Each environment is its own process, so its Python never waits for another
invocation's (no shared GIL); with ``[host] shared_cores`` it still runs on the
database's cores.  ``[pool]`` gives only the driver (``kind``) the labs use:
an environment holds at most one connection whatever a pool would allow.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import simpy

from simlib.config import Rule, Section, choice, integer, number
from simlib.database import Connection, Server
from simlib.distributions import Constant, Distribution, parse_distribution
from simlib.interpreter import Interpreter
from simlib.metrics import ERROR, Recorder
from simlib.pools.base import Checkout, PoolConfig, PoolModel, Release, RoundTrips, Waiting
from simlib.request import Backend, Request
from simlib.streams import Streams
from simlib.workload import Instance, Workload

if TYPE_CHECKING:
    from simlib.scenario import Scenario


@dataclass(frozen=True, slots=True)
class Serverless(Section):
    """The scenario's ``[serverless]``: environments on demand instead of a fixed process."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "concurrency_limit": integer(">=", 1),
        "cold_start": parse_distribution,
        "keep_warm": number(">", 0),
        "connection": choice("global", "per_invocation"),
    }

    concurrency_limit: int = 1000  # AWS Lambda's default per account and region
    cold_start: Distribution = Constant(0.25)
    keep_warm: float = 300.0
    connection: Literal["global", "per_invocation"] = "global"


class EnvironmentConnectionConfig(PoolConfig):
    """An environment's one connection: a pool of at most one (not a ``pool.kind``)."""

    __slots__ = ()
    kind: ClassVar[str] = "serverless"

    def connection_limit(self) -> int:
        return 1

    def round_trips(self) -> RoundTrips:
        return RoundTrips(release=1)  # the handler's commit


class EnvironmentConnection(PoolModel[EnvironmentConnectionConfig]):
    """The handler's connection: kept across invocations (global) or one per invocation."""

    def setup(self) -> None:
        self.keep = False  # set by the environment: serverless.connection == "global"
        self.conn: Connection | None = None

    def checkout(self, request: Waiting) -> Checkout:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        conn = yield from self.connect()
        if self.keep:
            self.conn = conn
        return conn

    def release(self, conn: Connection) -> Release:
        if not self.keep:
            self.server.close(conn)
        return
        yield

    def discard(self, conn: Connection) -> Release:
        self.server.close(conn)
        self.conn = None
        return
        yield


class Environment:
    """One execution environment: its process (an interpreter), its connection, its state."""

    __slots__ = ("instance", "pool", "idle_since")

    def __init__(self, instance: Instance, pool: EnvironmentConnection) -> None:
        self.instance = instance
        self.pool = pool
        self.idle_since = 0.0


class ServerlessWorkload(Workload):
    """Open arrivals served by environments created on demand (see the module doc).

    ``interpreter`` makes a new environment's process: its own Python,
    on the database's cores when ``[host] shared_cores`` says so.
    """

    def __init__(
        self, env: simpy.Environment, scenario: Scenario, server: Server, recorder: Recorder,
        streams: Streams, interpreter: Callable[[], Interpreter],
    ) -> None:
        config = scenario.serverless
        assert config is not None
        self.serverless = config
        self.server = server
        self.new_interpreter = interpreter
        self._pool_uniform = streams.uniform("pool")
        self._costs = scenario.client
        # Workload wants the backend of a first process: it is the first
        # environment's, made now and used by the first invocation.
        interp = interpreter()
        first = self._connection(env, recorder, interp)
        super().__init__(env, scenario, Backend(first, server), recorder, streams, interp,
                         processes=[])
        self._first: tuple[Interpreter, EnvironmentConnection] | None = (interp, first)
        self._cold_start = streams.distribution("cold_start", config.cold_start)
        self.warm: list[Environment] = []  # idle environments, the last one idle on top
        self.alive = 0
        recorder.count_tiers(serverless=True, pgbouncer=server.multiplexed)

    def _connection(self, env: simpy.Environment, recorder: Recorder,
                    interp: Interpreter) -> EnvironmentConnection:
        pool = EnvironmentConnection(env, self.server, recorder, EnvironmentConnectionConfig(),
                                     self._pool_uniform, interp, self._costs)
        pool.keep = self.serverless.connection == "global"
        return pool

    def _new_environment(self) -> Environment:
        if self._first is not None:
            interp, pool = self._first
            self._first = None
        else:
            interp = self.new_interpreter()
            pool = self._connection(self.env, self.recorder, interp)
        inst = Instance(interp, Backend(pool, self.server), self.make_path(interp), None)
        self.alive += 1
        self.recorder.environment(+1)
        return Environment(inst, pool)

    def arrive(self) -> None:
        """An invocation: a warm environment, else a new one (cold), else throttled."""
        request = self.begin(-1)
        if self.warm:
            self.recorder.invocation(request.arrival)
            self.env.process(self._invoke(self.warm.pop(), request, cold=False))
        elif self.alive < self.serverless.concurrency_limit:
            self.recorder.invocation(request.arrival, cold=True)
            self.env.process(self._invoke(self._new_environment(), request, cold=True))
        else:
            # TooManyRequestsException: refused at once, no environment runs it.
            self.recorder.invocation(request.arrival, throttled=True)
            self.finish(request, ERROR, None, None)

    def _invoke(self, environment: Environment, request: Request,
                cold: bool) -> Generator[simpy.Event, Any, None]:
        env = self.env
        if cold:
            yield env.timeout(self._cold_start())  # the runtime's and the module's init
        inst = environment.instance
        interp = inst.interpreter
        yield from interp.take()
        ok = yield from self.serve(request=request, instance=inst)
        yield from interp.compute(self.after if ok else self.fail)
        interp.drop()
        environment.idle_since = now = env.now
        self.warm.append(environment)
        timer = env.timeout(self.serverless.keep_warm)
        timer.callbacks.append(lambda _t: self._reclaim(environment, now))

    def _reclaim(self, environment: Environment, idle_since: float) -> None:
        """``keep_warm`` after it went idle: reclaimed, unless it has worked since."""
        if environment.idle_since != idle_since or environment not in self.warm:
            return
        self.warm.remove(environment)
        self.alive -= 1
        self.recorder.environment(-1)
        conn = environment.pool.conn
        if conn is not None and not conn.closed:
            # Frozen, then killed: nobody closes the connection.
            self.server.orphan(conn)
