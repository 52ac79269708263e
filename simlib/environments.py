"""Serverless execution environments: the model of ``[serverless]`` (:mod:`simlib.serverless`).

Invocations of an open workload take a warm idle environment (the last one
idle), else a new one that pays its cold start, else are throttled; an
environment idle for ``keep_warm`` is reclaimed and its connection orphaned
on the server.  The rules and their sources are in :mod:`simlib.serverless`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar

import simpy

from simlib.database import Connection, Server
from simlib.interpreter import Interpreter
from simlib.metrics import ERROR, Recorder
from simlib.pools.base import Checkout, PoolConfig, PoolModel, Release, RoundTrips, Waiting
from simlib.request import Backend, Request
from simlib.scenario import Scenario
from simlib.streams import Streams
from simlib.workload import Instance, Workload


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
