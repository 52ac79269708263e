"""The workload: who sends requests, when, and what one request does.

Two shapes of load, as in the scenario's ``[workload]``:

* **open**: requests arrive as a Poisson process at ``rate`` per second,
  whatever happens to earlier ones (a public web service: users do not wait
  for each other).  Overload makes queues grow without bound.
* **closed**: ``clients`` loop forever: think for an exponential time with mean
  ``think_time``, send a request, wait for its answer (a fixed pool of worker
  threads, or a load generator with N virtual users).  The load adapts to the
  response time, so it can never exceed what the system serves.

One request, as a web handler with a pool does it (:meth:`Workload.serve`):
the client's own dispatch time (``[client] dispatch``), then one database call
on the primary through :class:`~simlib.request.RequestPath` (checkout, query,
reset, release), then the answer.  Latency runs from arrival to answer.

When a cache, replicas or writes make *which* key a request touches matter
(``Scenario.keyed``), :class:`simlib.access.KeyedWorkload` overrides ``serve``
with the keyed request path; the load shapes, the window's bookkeeping and the
database call stay the ones here.

Extension hooks: a subclass overrides :meth:`Workload.serve` (one request,
from :meth:`Workload.begin` to :meth:`Workload.finish`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import simpy

from simlib.distributions import Constant, Distribution
from simlib.interpreter import Interpreter, Unlocked
from simlib.metrics import OK, Recorder
from simlib.pools import pool_kind
from simlib.request import Backend, Leaks, Request, RequestPath
from simlib.scenario import Scenario
from simlib.streams import Streams

#: A closed-loop client whose request failed in less than this (a psycopg2
#: pool that is exhausted fails at once) pauses this long before the next
#: try, as the live load generator does.  A real client spends at least that
#: long raising and handling the exception; without it a client with no
#: think time would retry forever at the same simulated instant.
FAILED_REQUEST_PAUSE = 0.001

#: What a request's process is: a SimPy generator returning whether it succeeded.
Serving = Generator[simpy.Event, Any, bool]


def default_threads(limit: int | None) -> int:
    """Worker threads of an open loop by default: min(256, max(32, 4 x the connection limit)).

    Four threads per connection the pool may hold (64 connections when it
    sets no limit) leave room for requests queueing inside the pool, where
    the library makes them wait, without the executor's own queue delaying
    them; the cap keeps the GIL and memory in check.  ``labs`` starts this
    many threads too, so both executors serve the same thread pool.
    """
    return min(256, max(32, 4 * (limit or 64)))


def open_loop_threads(scenario: Scenario) -> int | None:
    """The threads that serve an open loop's requests; None: every request has its own.

    ``[host] threads``, else :func:`default_threads` of every pool the
    requests may use (the primary's and each replica's).  Only threads
    sharing a GIL are bounded: asyncio starts a task per request, and with
    ``[host] gil = false`` each request runs as if in a process of its own.
    """
    host = scenario.host
    if scenario.workload.kind != "open" or not host.gil:
        return None
    if pool_kind(scenario.pool.kind).asynchronous:
        return None
    if host.threads:
        return host.threads
    limit = scenario.pool.connection_limit()
    if limit is not None and scenario.keyed and scenario.replicas is not None:
        limit *= 1 + scenario.replicas.count
    return default_threads(limit)


def scheduled_arrival_times(
    schedule: Sequence[tuple[float, float]], unit: Callable[[], float]
) -> Iterator[float]:
    """The arrival times of a Poisson process whose rate is piecewise constant.

    ``schedule``: ``(start second, rate)`` pieces (``[workload] rate_schedule``);
    ``unit``: exponential draws of mean 1.  Within a piece the gaps are those
    draws over its rate.  A gap that would cross into the next piece is cut
    at the boundary and drawn afresh there at the new rate: exact, because
    the exponential is memoryless.  simlib and the labs' load generator both
    walk this, so a live run gets the arrival times simlib simulates.
    """
    ends = [start for start, _ in schedule[1:]] + [math.inf]
    t = 0.0
    for (_, rate), end in zip(schedule, ends, strict=True):
        while True:
            at = t + unit() / rate if rate > 0 else math.inf
            if at >= end:
                if end == math.inf:
                    return
                t = end
                break
            t = at
            yield t


def _sampler(streams: Streams, name: str, dist: Distribution) -> Callable[[], float] | None:
    """A sampler for ``dist`` on stream ``name``, or None for a constant 0 (no cost)."""
    if isinstance(dist, Constant) and dist.value == 0:
        return None
    return streams.distribution(name, dist)


class Instance:
    """One application process: its Python, its pool, its request path, its worker threads.

    A scenario without ``[fleet]`` has one; a fleet has ``instances`` of
    them, each with a pool of its own in front of the same server.
    """

    __slots__ = ("interpreter", "backend", "path", "threads", "busy_threads", "backlog")

    def __init__(self, interpreter: Interpreter, backend: Backend, path: RequestPath,
                 threads: int | None) -> None:
        self.interpreter = interpreter
        self.backend = backend
        self.path = path
        #: an open loop's worker threads (a ThreadPoolExecutor); None: unbounded
        self.threads = threads
        self.busy_threads = 0
        self.backlog: deque[Request] = deque()  # requests queued for a thread


class Workload:
    """Generates requests and carries each one through the pool and the database.

    ``processes``: the application processes as (interpreter, backend) pairs,
    for a fleet; by default the one process of ``interpreter`` and
    ``primary``.

    Extension hooks: :meth:`serve` (one request) and :meth:`arrive` (what an
    open loop does with each arrival: pick a process and a thread).
    """

    def __init__(
        self, env: simpy.Environment, scenario: Scenario, primary: Backend, recorder: Recorder,
        streams: Streams, interpreter: Interpreter | None = None,
        processes: Sequence[tuple[Interpreter, Backend]] | None = None,
    ) -> None:
        self.env = env
        #: the (first) application process's Python: requests take turns at it
        self.interpreter = Unlocked(env) if interpreter is None else interpreter
        self.config = config = scenario.workload
        self.primary = primary
        self.recorder = recorder
        self.streams = streams
        self._key = streams.choice("keys", config.popularity.probabilities(config.keys))
        self._write = streams.uniform("writes")
        # The client's own costs (scenario [client]); None when free, so a
        # scenario without them schedules no extra events.
        client = scenario.client
        self._dispatch = _sampler(streams, "dispatch", client.dispatch)
        self.after = client.after  # CPU after the answer (bookkeeping), seconds
        self.fail = client.fail  # CPU after a failed checkout, instead of after
        self.cpu_share = client.cpu_share
        draw = streams.distribution("service", scenario.query.service_time)
        service: Callable[[], float] = draw
        if scenario.query.sleeps:
            server_time = scenario.query.server_time
            service = lambda: server_time(draw())  # noqa: E731
        leaks = None
        if client.leak_fraction > 0:
            leaks = Leaks(client.leak_fraction, streams.uniform("leaks"),
                          streams.distribution("leak_time", client.leak_time),
                          client.leak_in_transaction)
        hold = _sampler(streams, "hold", client.hold)

        def path(interp: Interpreter) -> RequestPath:
            return RequestPath(env, recorder, service, hold, interp, leaks, client.cpu_share)

        self.make_path = path
        self.path = path(self.interpreter)
        # Requests that arrived in the measured window and are not finished:
        # the run ends when this reaches zero after the window (or at a limit).
        self.pending = 0
        self.drained = env.event()
        # Each process's worker threads (a ThreadPoolExecutor): arrivals that
        # find them all busy wait in its queue, first come first served.
        threads = open_loop_threads(scenario)
        if processes is None:
            self.instances = [Instance(self.interpreter, primary, self.path, threads)]
        else:
            self.instances = [Instance(i, b, self.path if i is self.interpreter else path(i),
                                       threads) for i, b in processes]
        # Which process an open arrival goes to: drawn only for a fleet, so
        # one process draws nothing extra (and keeps its results).
        self._pick = streams.uniform("instances") if len(self.instances) > 1 else None

    def start(self) -> None:
        if self.config.kind == "open":
            self.env.process(self._arrivals())
        else:
            think = self.streams.exponential("think", self.config.think_time or 1.0)
            for client in range(self.config.clients):
                self.env.process(self._client(think, client))

    # -- load shapes --------------------------------------------------------
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        schedule = self.config.rate_schedule
        if schedule is not None:
            yield from self._scheduled_arrivals(schedule)
            return
        gap = self.streams.exponential("arrivals", 1.0 / self.config.rate)
        arrive = self.arrive
        while True:
            yield env.timeout(gap())
            arrive()

    def _scheduled_arrivals(
        self, schedule: tuple[tuple[float, float], ...]
    ) -> Generator[simpy.Event, Any, None]:
        """The arrivals of a ``rate_schedule`` (:func:`scheduled_arrival_times`)."""
        env = self.env
        for at in scheduled_arrival_times(schedule, self.streams.exponential("arrivals", 1.0)):
            yield env.timeout(at - env.now)
            self.arrive()

    def arrive(self) -> None:
        """An open arrival: to a process (random in a fleet), then a thread or its queue (hook)."""
        instances = self.instances
        inst = instances[0] if self._pick is None else instances[
            min(int(self._pick() * len(instances)), len(instances) - 1)]
        if inst.threads is not None and inst.busy_threads >= inst.threads:
            # It has arrived (and is counted, in flight) though no thread runs it yet.
            inst.backlog.append(self.begin(-1))
        else:
            inst.busy_threads += 1
            self.env.process(self._open_request(inst))

    def _open_request(self, inst: Instance) -> Generator[simpy.Event, Any, None]:
        """An open arrival: a thread (or task) that runs its request, then any queued ones.

        A worker of ``ThreadPoolExecutor`` that finishes a request takes the
        next one from the executor's queue at once, still holding the GIL
        (``work_queue.get`` finds an item and does not block).  So when all
        workers are busy, the thread that has just returned a connection
        asks for one again before the waiter it woke can run: under
        overload, that is who overtakes QueuePool's waiters.
        """
        interp = inst.interpreter
        yield from interp.take()
        request: Request | None = None
        while True:
            ok = yield from self.serve(request=request, instance=inst)
            yield from interp.compute(self.after if ok else self.fail)
            if not inst.backlog:
                break
            request = inst.backlog.popleft()
            request.woke = False  # its thread did not block: no wake-up to pay
        inst.busy_threads -= 1
        interp.drop()

    def _client(
        self, think: Callable[[], float], client: int
    ) -> Generator[simpy.Event, Any, None]:
        env = self.env
        # A fleet's clients are dealt out in turn: a virtual user keeps its process.
        inst = self.instances[client % len(self.instances)]
        interp = inst.interpreter
        thinking = self.config.think_time > 0
        if thinking:
            yield env.timeout(think())  # clients do not all start at once
        yield from interp.take()
        woke = True
        while True:
            started = env.now
            ok = yield from self.serve(client, woke, instance=inst)
            yield from interp.compute(self.after if ok else self.fail)
            # Without think time the client goes straight on to its next
            # request *still holding* the interpreter: that is how a thread
            # that just returned a connection takes it again before the
            # waiter it woke can run.
            woke = True
            if thinking:
                yield from interp.io(think())
            elif not ok and env.now - started < FAILED_REQUEST_PAUSE:
                yield from interp.io(FAILED_REQUEST_PAUSE)
            else:
                woke = False

    # -- one request --------------------------------------------------------
    def next_key(self) -> tuple[int, bool]:
        """A key from the popularity distribution, and whether this is a write."""
        return int(self._key()), self._write() < self.config.write_fraction

    def begin(self, client: int, woke: bool = True) -> Request:
        """A request arriving now: counted if it is in the window, and in flight."""
        recorder = self.recorder
        request = Request(self.env.now, client)
        request.woke = woke
        if recorder.start <= request.arrival < recorder.end:
            request.measured = True
            recorder.arrivals += 1
            self.pending += 1
        recorder.request_started()
        return request

    def serve(self, client: int = -1, woke: bool = True,
              request: Request | None = None, instance: Instance | None = None) -> Serving:
        """Carry one request through checkout, query and return; True if it succeeded (hook).

        ``client``: the closed-loop client sending it (-1: an open arrival);
        ``woke``: its thread was blocked just before (see ``Request.woke``);
        ``request``: one that arrived earlier and waited for a thread (else
        it arrives now); ``instance``: the process serving it (None: the
        first).  The caller holds the process's interpreter before and after.
        """
        inst = self.instances[0] if instance is None else instance
        if request is None:
            request = self.begin(client, woke)
        if self._dispatch is not None:
            # The request's own code runs before it asks the pool (handler,
            # library checkout code): no connection held yet.
            yield from self.dispatch(request, inst.interpreter)
        outcome, got, done, _ = yield from inst.path.use(request, inst.backend)
        self.finish(request, outcome, got, done)
        return outcome == OK

    def dispatch(self, request: Request, interpreter: Interpreter | None = None
                 ) -> Generator[simpy.Event, Any, None]:
        """The request's ``[client] dispatch`` (the waiting part only if its thread woke)."""
        assert self._dispatch is not None
        share = self.cpu_share if request.woke else 1.0
        interp = self.interpreter if interpreter is None else interpreter
        yield from interp.work(self._dispatch(), share)

    def finish(
        self, request: Request, outcome: int, got: float | None, query_done: float | None
    ) -> None:
        """The request is over: record it, and end the drain when it was the last."""
        self.recorder.request_finished(request.arrival, outcome, request.waited, got, query_done,
                                       request.asked)
        if request.measured:
            self.pending -= 1
            if self.pending == 0 and self.env.now >= self.recorder.end:
                if not self.drained.triggered:
                    self.drained.succeed()
