"""The workload: who sends requests, when, and what one request does.

Two shapes of load, as in the scenario's ``[workload]``:

* **open**: requests arrive as a Poisson process at ``rate`` per second,
  whatever happens to earlier ones (a public web service: users do not wait
  for each other).  Overload makes queues grow without bound.
* **closed**: ``clients`` loop forever: think for an exponential time with mean
  ``think_time``, send a request, wait for its answer (a fixed pool of worker
  threads, or a load generator with N virtual users).  The load adapts to the
  response time, so it can never exceed what the system serves.

One request, as a web handler with a pool does it (see :func:`serve`):
check out a connection (the pool's rules: maybe wait, maybe connect, maybe
ping), send the query (one round trip plus the service time on the server),
reset and return the connection, answer.  Latency runs from arrival to answer.

Each request also picks a key from the popularity distribution and whether it
is a write; these matter once a cache or replicas sit in front of the data, or
writes make reads stale: then :class:`simlib.access.KeyedWorkload` replaces
``serve`` with the keyed request path, and this one stays lean.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from simlib.database import ConnectionRefused, DatabaseServer
from simlib.distributions import Constant, Distribution
from simlib.metrics import ERROR, OK, TIMEOUT, Recorder
from simlib.pools.base import PoolModel, PoolTimeout
from simlib.scenario import Client as ClientConfig
from simlib.scenario import Workload as WorkloadConfig
from simlib.streams import Streams

#: A closed-loop client whose request failed without any time passing (a
#: psycopg2 pool that is exhausted fails at once) pauses this long before the
#: next try.  A real client spends at least that long raising and handling the
#: exception; without it a client with no think time would retry forever at
#: the same simulated instant.
FAILED_REQUEST_PAUSE = 0.001


def _sampler(streams: Streams, name: str, dist: Distribution) -> Callable[[], float] | None:
    """A sampler for ``dist`` on stream ``name``, or None for a constant 0 (no cost)."""
    if isinstance(dist, Constant) and dist.value == 0:
        return None
    return streams.distribution(name, dist)


class Request:
    """One request's state, as the pool and the recorder see it."""

    __slots__ = ("arrival", "waited", "key", "write")

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self.waited = False
        self.key = 0
        self.write = False


class Workload:
    """Generates requests and carries each one through pool and database."""

    def __init__(
        self,
        env: simpy.Environment,
        config: WorkloadConfig,
        pool: PoolModel,
        server: DatabaseServer,
        recorder: Recorder,
        service_time: Callable[[], float],
        streams: Streams,
        picks_keys: bool,
        client: ClientConfig | None = None,
    ) -> None:
        self.env = env
        self.config = config
        self.pool = pool
        self.server = server
        self.recorder = recorder
        self.service_time = service_time
        self.streams = streams
        self.picks_keys = picks_keys
        self._key = streams.choice("keys", config.popularity.probabilities(config.keys))
        self._write = streams.uniform("writes")
        # The client's own costs (scenario [client]); None when free, so a
        # scenario without them schedules no extra events.
        client = client or ClientConfig()
        self._dispatch = _sampler(streams, "dispatch", client.dispatch)
        self._hold = _sampler(streams, "hold", client.hold)
        # Requests that arrived in the measured window and are not finished:
        # the run ends when this reaches zero after the window (or at a limit).
        self.pending = 0
        self.drained = env.event()

    def start(self) -> None:
        if self.config.kind == "open":
            self.env.process(self._arrivals())
        else:
            think = self.streams.exponential("think", self.config.think_time or 1.0)
            for client in range(self.config.clients):
                self.env.process(self._client(think, client))

    # -- load shapes --------------------------------------------------------
    def _arrivals(self):
        env = self.env
        gap = self.streams.exponential("arrivals", 1.0 / self.config.rate)
        serve = self.serve
        process = env.process
        while True:
            yield env.timeout(gap())
            process(serve())

    def _client(self, think: Callable[[], float], client: int):
        env = self.env
        thinking = self.config.think_time > 0
        if thinking:
            yield env.timeout(think())  # clients do not all start at once
        while True:
            started = env.now
            ok = yield from self.serve(client)
            if thinking:
                yield env.timeout(think())
            elif not ok and env.now == started:
                yield env.timeout(FAILED_REQUEST_PAUSE)

    # -- one request --------------------------------------------------------
    def next_key(self) -> tuple[int, bool]:
        """A key from the popularity distribution, and whether this is a write."""
        return self._key(), self._write() < self.config.write_fraction

    def serve(self, client: int = -1):
        """Carry one request through checkout, query and return; True if it succeeded.

        ``client``: the closed-loop client sending it (-1: an open arrival).
        Only the keyed request path (simlib/access.py) uses it.
        """
        env = self.env
        recorder = self.recorder
        pool = self.pool
        request = Request(env.now)
        if self.picks_keys:
            request.key, request.write = self.next_key()
        arrival = request.arrival
        measured = recorder.start <= arrival < recorder.end
        if measured:
            recorder.arrivals += 1
            self.pending += 1
        recorder.request_started()
        if self._dispatch is not None:
            # The request's own code runs before it asks the pool (thread
            # hand-off, library checkout code): no connection held yet.
            yield env.timeout(self._dispatch())
        try:
            conn = yield from pool.checkout(request)
        except PoolTimeout:
            self._finish(request, measured, TIMEOUT, None, None)
            return False
        except ConnectionRefused:
            self._finish(request, measured, ERROR, None, None)
            return False
        got = env.now
        recorder.checked_out()
        server = self.server
        reset = pool.reset_delay(conn)
        if self._hold is not None:
            # Client work while the connection is out (driver, result, return
            # path): after the result is back, before the pool has it again.
            reset += self._hold()
        if server.cpu is None:
            # Round trip + service + reset in one timeout: same result, fewer events.
            query = server.rtt + self.service_time()
            yield env.timeout(query + reset)
            query_done = got + query
        else:
            if server.rtt:
                yield env.timeout(server.rtt)
            yield server.cpu.run(self.service_time())
            query_done = env.now
            if reset:
                yield env.timeout(reset)
        yield from pool.release(conn)
        recorder.checked_in()
        self._finish(request, measured, OK, got, query_done)
        return True

    def _finish(self, request: Request, measured: bool, outcome: int, got, query_done) -> None:
        self.recorder.request_finished(request.arrival, outcome, request.waited, got, query_done)
        if measured:
            self.pending -= 1
            if self.pending == 0 and self.env.now >= self.recorder.end:
                if not self.drained.triggered:
                    self.drained.succeed()
