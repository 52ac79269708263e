"""Load generators: the open-loop scheduler and the closed-loop clients.

**Open loop.**  The arrival times are the Poisson process simlib simulates for
replication 0 of the same scenario: gaps drawn from
``simlib.streams.generator(seed, 0, "arrivals")`` in simlib's batches, so a
live run and its prediction see the *same* arrival times.  A dispatcher
sleeps until each scheduled time and hands the request to a worker
(a thread from a ``ThreadPoolExecutor``, or a new task on the asyncio loop),
independent of how earlier requests are doing.  Latency is measured from the
*scheduled* time, so a stalled system (or a stalled client) cannot hide its
queue: no coordinated omission.  How late a request actually started compared
with its schedule is its *scheduler lag*; a large lag means the client, not
the database, was the bottleneck (all threads busy, GIL, CPU).

**Closed loop.**  ``clients`` threads (or tasks) each repeat: think for an
exponential time (mean ``think_time``), send a request, wait for its answer.
A client's request is scheduled at the end of its think time.  A request that
failed at once with no think time is followed by a 1 ms pause, as in simlib.

**Drain.**  Arrivals go on after the measured window, as in simlib, until every
request that arrived in the window has finished or ``drain_limit`` seconds
have passed since the window's end.  Then the run stops: queued requests skip
their query, and the executor cancels what still runs on the server.

Service times come from simlib's "service" stream in arrival order.  With
``[client] leak_fraction``, whether each request leaks and for how long are
drawn in arrival order too (:class:`LeakDraws`), by simlib's rule
(``Leaks.draw``): a uniform on the "leaks" stream against the fraction, and
a ``leak_time`` on its own stream for each request that leaks.  simlib draws
when a request's query is done, and only for requests that got that far;
live every request draws when it is scheduled (one that then fails does not
leak), so the two runs leak the same share but not always the same requests.

**Threads or an event loop, one text.**  The schedule, the clients and the
drain are written once, as steps (:mod:`labs.steps`); a :class:`ThreadRunner`
runs them for thread-based drivers (a ``ThreadPoolExecutor`` for open-loop
requests, a thread per closed-loop client) and a :class:`LoopRunner` for
asyncio drivers (a task per request or client).  :func:`drive` picks the runner
by ``driver.asynchronous`` and opens, drives and closes the driver.

**One run over several processes.**  One Python process can only keep so
many requests on schedule (its CPU, and the GIL).  :func:`drive` can run
one *share* of an open-loop run: with ``share=(k, n)`` the process walks the
whole schedule (the same arrival and service times) but issues only the
requests whose index is ``k`` modulo ``n``, and ``start_at`` gives all
processes one time zero; the caller merges their records.  The harness
benchmark uses it (bench/bench_harness.py ``--processes``).

**Event loop.**  An asyncio driver's run (asyncpg) runs on uvloop, a
libuv-based drop-in replacement for asyncio's loop, when it is installed (it
is a project dependency), and on asyncio's standard loop otherwise or when
``LABS_EVENT_LOOP=asyncio`` is set.  uvloop does the loop's own work (timers,
sockets, callbacks) in C: asyncpg's acquire / query / release costs about a
fifth less client CPU on it (bench/bench_harness.py), so one Python process
keeps a higher open-loop rate on schedule.  Timing and what is recorded are
the same on either loop.

**Garbage collector.**  A run keeps one :class:`Record` per request alive,
tens of thousands of them at high rates, and the collector's full passes
walk every live object: left alone, one full collection stops the process
for 40-50 ms, which shows up as scheduler lag.  So during a run the objects
alive at its start (modules, the pool and its connections) and then, once a
second, everything that has survived so far are moved out of the
collector's view (``gc.freeze``), and young collections run less often; the
settings and the frozen objects are given back when the run ends.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from labs.records import Record, RunContext
from labs.steps import Steps, run, run_async
from simlib.scenario import Scenario
from simlib.streams import _BATCH, STREAM_NAMES, Sampler, Streams, generator
from simlib.workload import FAILED_REQUEST_PAUSE, default_threads, scheduled_arrival_times

__all__ = [
    "LeakDraws",
    "LoadFacts",
    "LoopRunner",
    "ThreadRunner",
    "arrival_times",
    "drive",
    "event_loop_factory",
    "event_loop_name",
    "thread_count",
]


def arrival_times(seed: int, rate: float,
                  schedule: Sequence[tuple[float, float]] | None = None) -> Iterator[float]:
    """Poisson arrival times (seconds from the start), the same ones simlib draws.

    With a ``rate_schedule``, simlib's own walk of it
    (:func:`simlib.workload.scheduled_arrival_times`) over the same stream.
    """
    if schedule is not None:
        yield from scheduled_arrival_times(
            schedule, Streams(seed, 0).exponential("arrivals", 1.0))
        return
    rng = generator(seed, 0, "arrivals")
    mean = 1.0 / rate
    t = 0.0
    while True:
        for gap in rng.exponential(mean, _BATCH).tolist():
            t += gap
            yield t


#: The leak streams, in the order they follow simlib's named streams when a
#: simlib release does not name them yet (see :func:`leak_stream`).
LEAK_STREAMS: tuple[str, ...] = ("leaks", "leak_time")


def leak_stream(seed: int, name: str) -> np.random.Generator:
    """Replication 0's generator for a leak stream: simlib's own when it names it.

    simlib's ``Leaks`` draws from streams "leaks" and "leak_time"; where
    ``simlib.streams.STREAM_NAMES`` does not list them, they get the next
    indices after its names, in the order of :data:`LEAK_STREAMS` (what
    appending them there would give).
    """
    if name in STREAM_NAMES:
        return generator(seed, 0, name)
    index = len(STREAM_NAMES) + LEAK_STREAMS.index(name)
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0, index)))
    )


class LeakDraws:
    """Which requests leak and for how long, in arrival order (``[client]``'s leak fields)."""

    def __init__(self, scenario: Scenario) -> None:
        client = scenario.client
        self.fraction = client.leak_fraction
        self.uniform = Sampler(leak_stream(scenario.seed, "leaks"), lambda rng, n: rng.random(n))
        self.time = Sampler(leak_stream(scenario.seed, "leak_time"), client.leak_time.sample)

    def __call__(self) -> float:
        """Seconds the next request keeps its connection after answering (0: no leak)."""
        return self.time() if self.uniform() < self.fraction else 0.0


def thread_count(limit: int | None, kind: str, clients: int, threads: int = 0) -> int:
    """Worker threads: one per client in a closed loop; for an open loop ``threads``
    (``[host] threads``) or simlib's rule, min(256, max(32, 4 x the connection limit)).

    The simulator serves an open loop with the same number of threads
    (:func:`simlib.workload.open_loop_threads`), so requests queue for a
    thread in both executors alike.
    """
    if kind == "closed":
        return clients
    return threads or default_threads(limit)


def event_loop_name() -> str:
    """The event loop :func:`run_async` uses: ``"uvloop"`` or ``"asyncio"``.

    uvloop when it can be imported, unless ``LABS_EVENT_LOOP=asyncio``.
    """
    if os.environ.get("LABS_EVENT_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the loop :func:`run_async` runs on (for ``asyncio.Runner(loop_factory=)``)."""
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class _Collector:
    """The garbage collector's settings for the length of a run (a context manager).

    Every request leaves a :class:`Record` (a GC-tracked object) alive until
    the run ends, and a full collection walks all of them: at 10,000
    requests/s it stops the process for 40-50 ms after a few seconds, and
    longer as the run goes on.  That pause lands on the scheduler (its lag
    p99) and on the latency of every request in flight, the client's doing,
    not the database's.  So:

    * on entry, ``gc.freeze()`` moves everything alive (modules, the pool,
      its connections) to the permanent generation, out of every collection;
    * every ``period`` seconds (:meth:`tick`, from the dispatcher) the
      objects that have survived so far, mostly finished records, are
      frozen too, so a full collection only ever walks about a second's worth;
    * young collections run every ``threshold0`` net allocations rather than
      700: a request allocates dozens of short-lived objects (task,
      coroutines, futures, handles), most freed by reference counting.

    Cyclic garbage made during the run (an exception's traceback, say) is
    still collected while young; what got frozen before it became garbage
    waits for the end of the run.  On exit the thresholds are restored and
    ``gc.unfreeze()`` hands everything back to the collector.  Left alone
    when the collector is disabled or something else has frozen objects.
    """

    def __init__(self, period: float = 1.0, threshold0: int = 10_000) -> None:
        self.period = period
        self.threshold0 = threshold0
        self.active = False
        self.next = 0.0
        self.saved = gc.get_threshold()

    def __enter__(self) -> _Collector:  # noqa: PYI034
        self.active = gc.isenabled() and gc.get_freeze_count() == 0
        if self.active:
            self.saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(self.saved[0], self.threshold0), *self.saved[1:])
        return self

    def tick(self, now: float) -> None:
        """Freeze the survivors if ``period`` seconds have passed since the last time."""
        if self.active and now >= self.next:
            self.next = now + self.period
            gc.freeze()

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.active = False
            gc.set_threshold(*self.saved)
            gc.unfreeze()


class _Progress:
    def __init__(self, enabled: bool, ctx: RunContext, end: float) -> None:
        self.enabled = enabled
        self.ctx = ctx
        self.end = end
        self.next = 1.0

    def tick(self, records: list[Record]) -> None:
        if not self.enabled:
            return
        now = self.ctx.now()
        if now >= self.next:
            self.next = now + 1.0
            done = sum(1 for r in records if r.finished is not None)
            phase = "window" if now < self.end else "drain"
            print(
                f"labs: t={now:6.1f}s ({phase}) sent={len(records)} done={done}",
                file=sys.stderr,
                flush=True,
            )


class _Shared:
    """The run's records and the count of unfinished requests from the window."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.pending = 0  # window requests not finished yet

    def add(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)
            if self.start <= rec.scheduled < self.end:
                self.pending += 1

    def done(self, rec: Record) -> None:
        if self.start <= rec.scheduled < self.end:
            with self.lock:
                self.pending -= 1


class Driven(Protocol):
    """What the load generator asks of a driver (a plain one, or the keyed path)."""

    @property
    def asynchronous(self) -> bool: ...

    @property
    def limit(self) -> int | None: ...

    def opening(self) -> Steps[None]: ...

    def serve(self, rec: Record) -> Steps[bool]: ...

    def closing(self) -> Steps[None]: ...

    def details(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class LoadFacts:
    """How the load went: whether the drain limit cut it short, and how many threads ran it."""

    drain_limit_hit: bool
    threads: int


class Load:
    """One run's load, as steps: the open-loop schedule, the closed-loop clients, the drain."""

    def __init__(
        self,
        driver: Driven,
        ctx: RunContext,
        scenario: Scenario,
        *,
        drain_limit: float,
        progress: bool,
        collector: _Collector,
        share: tuple[int, int] | None = None,
        instance: tuple[int, int] | None = None,
    ) -> None:
        w = scenario.workload
        #: (k, n): this process is instance k of a fleet of n, and takes the
        #: arrivals simlib sends there (None: every arrival of its share)
        self.instance = instance
        self.driver = driver
        self.ctx = ctx
        self.scenario = scenario
        self.drain_limit = drain_limit
        self.end = w.warmup + w.duration
        self.shared = _Shared(w.warmup, self.end)
        self.collector = collector
        self.bar = _Progress(progress, ctx, self.end)
        self.share = share
        streams = Streams(scenario.seed, 0)
        self.service = streams.distribution("service", scenario.query.service_time)
        self.leaks = LeakDraws(scenario) if scenario.client.leak_fraction > 0 else None
        # The keyed path (labs/access.py) draws each request's key in arrival order.
        self.assign: Callable[[Record], None] | None = getattr(driver, "assign", None)
        self.limit_hit = False
        self._lock = threading.Lock()  # closed-loop clients draw service times in turn
        self._counter = iter(range(10**12))

    def schedule(self) -> Iterator[Record]:
        """The open loop's requests in arrival order (only this process's share of them)."""
        mine, of = self.share if self.share is not None else (0, 1)
        service, assign, leaks = self.service, self.assign, self.leaks
        w = self.scenario.workload
        instance = self.instance
        pick = None if instance is None else Streams(self.scenario.seed, 0).uniform("instances")
        for i, t in enumerate(arrival_times(self.scenario.seed, w.rate, w.rate_schedule)):
            drawn = service()  # every request's draw, to keep the stream in step
            leak = leaks() if leaks is not None else 0.0
            if of > 1 and i % of != mine:
                continue
            if pick is not None and instance is not None:
                # simlib's split of the arrivals over a fleet (Workload.arrive).
                k, n = instance
                if min(int(pick() * n), n - 1) != k:
                    continue
            rec = Record(i, t, drawn)
            rec.leak = leak
            if assign is not None:
                assign(rec)
            yield rec

    def open_loop(
        self, sleep: Callable[[float], Any], start: Callable[[Record], None]
    ) -> Steps[None]:
        """Send each request at its scheduled time; go on until the window's requests are done."""
        ctx, shared, collector = self.ctx, self.shared, self.collector
        records, now, end = shared.records, ctx.now, self.end
        for rec in self.schedule():
            t = rec.scheduled
            if t >= end:
                if shared.pending == 0:
                    break
                if now() >= end + self.drain_limit:
                    self.limit_hit = True
                    break
            if t >= collector.next:  # also when late and not sleeping
                collector.tick(t)
            delay = t - now()
            if delay > 0:
                # Early: wait for the schedule.  Late (the client was busy): start
                # this and every other request that is due without waiting, so a
                # backlog is cleared in one pass.
                self.bar.tick(records)
                yield sleep, (delay,)
            shared.add(rec)
            start(rec)

    def client(self, k: int, sleep: Callable[[float], Any]) -> Steps[None]:
        """Closed-loop client ``k``: think, send a request, wait for its answer, again."""
        ctx, shared, w = self.ctx, self.shared, self.scenario.workload
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(self.scenario.seed, spawn_key=(0, 3, k)))
        )
        thinking = w.think_time > 0
        t = float(rng.exponential(w.think_time)) if thinking else 0.0
        while t < self.end and not ctx.stopping.is_set():
            delay = t - ctx.now()
            if delay > 0:
                yield sleep, (delay,)
            with self._lock:
                rec = Record(next(self._counter), t, self.service())
                rec.client = k
                if self.leaks is not None:
                    rec.leak = self.leaks()
                if self.assign is not None:
                    self.assign(rec)
            shared.add(rec)
            try:
                ok = yield from self.driver.serve(rec)
            finally:
                shared.done(rec)
            now = ctx.now()
            if thinking:
                t = now + float(rng.exponential(w.think_time))
            elif not ok and now - (rec.started or now) < FAILED_REQUEST_PAUSE:
                t = now + FAILED_REQUEST_PAUSE
            else:
                t = now

    def wait_while(
        self, busy: Callable[[], bool], sleep: Callable[[float], Any], poll: float
    ) -> Steps[None]:
        """Wait while ``busy()`` (closed-loop clients are still running), up to the drain limit."""
        deadline = self.end + self.drain_limit
        while busy():
            if self.ctx.now() >= deadline:
                self.limit_hit = True
                break
            yield sleep, (poll,)
            self.collector.tick(self.ctx.now())
            self.bar.tick(self.shared.records)


class ThreadRunner:
    """Runs a load on threads: a pool of workers for open-loop requests, one per client."""

    asynchronous = False
    poll = 0.05

    def __init__(self, load: Load, threads: int) -> None:
        self.load = load
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self.clients: list[threading.Thread] = []

    def sleep(self, delay: float) -> None:
        time.sleep(delay)

    def blocking(self, call: Callable[[], None]) -> None:
        call()

    def start(self, rec: Record) -> None:
        assert self.pool is not None
        self.pool.submit(self._request, rec)

    def _request(self, rec: Record) -> None:
        try:
            run(self.load.driver.serve(rec))
        finally:
            self.load.shared.done(rec)

    def load_steps(self) -> Steps[None]:
        load = self.load
        if load.scenario.workload.kind == "open":
            self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="labs-req")
            yield from load.open_loop(self.sleep, self.start)
            return
        for k in range(load.scenario.workload.clients):
            th = threading.Thread(target=run, args=(load.client(k, self.sleep),),
                                  name=f"labs-client-{k}", daemon=True)
            self.clients.append(th)
            th.start()
        yield from load.wait_while(lambda: any(t.is_alive() for t in self.clients),
                                   self.sleep, self.poll)

    def must_cancel(self) -> bool:
        """Cut short by the drain limit, or the window's requests not done: cancel what runs.

        Requests sent after the window may finish on their own (``stop`` waits).
        """
        return self.load.limit_hit or self.load.shared.pending > 0

    def stop(self) -> None:
        """Let what still runs finish (queued requests skip their query)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for th in self.clients:
            th.join(timeout=10.0)


class LoopRunner:
    """Runs a load on the event loop: a task per open-loop request, one per client."""

    asynchronous = True
    poll = 0.02

    def __init__(self, load: Load) -> None:
        self.load = load
        self.threads = 1
        self.tasks: set[asyncio.Task[None]] = set()

    def sleep(self, delay: float) -> Any:
        return asyncio.sleep(delay)

    def blocking(self, call: Callable[[], None]) -> Any:
        return asyncio.to_thread(call)  # a blocking call (psycopg2) must not stall the loop

    def start(self, rec: Record) -> None:
        self.tasks.add(asyncio.get_running_loop().create_task(self._request(rec)))

    async def _request(self, rec: Record) -> None:
        """One open-loop request, as its own task."""
        try:
            await run_async(self.load.driver.serve(rec))
        finally:
            self.load.shared.done(rec)
            # Here rather than in a done callback: one loop callback less per request.
            self.tasks.discard(asyncio.current_task())

    def load_steps(self) -> Steps[None]:
        load = self.load
        if load.scenario.workload.kind == "open":
            yield from load.open_loop(self.sleep, self.start)
            return
        for k in range(load.scenario.workload.clients):
            task = asyncio.get_running_loop().create_task(run_async(load.client(k, self.sleep)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        yield from load.wait_while(lambda: bool(self.tasks), self.sleep, self.poll)

    def must_cancel(self) -> bool:
        """Anything still running is cancelled (``stop``): its queries first, on the server."""
        return bool(self.tasks)

    async def stop(self) -> None:
        """Cancel what still runs and wait for it to clean up."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


Runner = ThreadRunner | LoopRunner

#: ``observe(driver, records)``: see :func:`drive`.
Observer = Callable[[Any, list[Record]], None]


def _session(
    driver: Driven,
    load: Load,
    runner: Runner,
    on_start: Callable[[], None] | None,
    on_stop: Callable[[], None] | None,
    start_at: float | None,
    observe: Observer | None = None,
) -> Steps[tuple[list[Record], LoadFacts]]:
    """Open the driver, start the clock, run the load, stop, close the driver."""
    ctx = load.ctx
    yield from driver.opening()
    try:
        if start_at is not None:
            yield runner.sleep, (max(0.0, start_at - time.perf_counter()),)
        ctx.restart_clock(start_at)
        if observe is not None:
            observe(driver, load.shared.records)
        if on_start is not None:
            on_start()
        try:
            yield from runner.load_steps()
        finally:
            # Requests sent after the window only kept the load up; from now on
            # they skip their query, and where the run must cut requests short
            # the executor cancels their queries on the server (``on_stop``).
            ctx.stopping.set()
            if on_stop is not None and runner.must_cancel():
                yield runner.blocking, (on_stop,)
            yield runner.stop, ()
    finally:
        yield from driver.closing()
    return list(load.shared.records), LoadFacts(load.limit_hit, runner.threads)


def drive(
    driver: Driven,
    ctx: RunContext,
    scenario: Scenario,
    *,
    drain_limit: float,
    progress: bool = False,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    share: tuple[int, int] | None = None,
    start_at: float | None = None,
    threads: int | None = None,
    instance: tuple[int, int] | None = None,
    observe: Observer | None = None,
) -> tuple[list[Record], LoadFacts]:
    """Open ``driver``, run ``scenario``'s load through it, close it: the records and facts.

    ``on_start`` is called once the driver is open and the clock restarted
    (the probes start there); ``on_stop`` when the run has to cut requests
    short (the executor cancels our server queries there; see the runners'
    ``must_cancel``).
    ``share=(k, n)``: issue only the open-loop requests whose index is ``k``
    modulo ``n``; ``start_at``: the ``time.perf_counter()`` value that is
    time zero (the driver is opened before it), so that ``n`` processes run
    one schedule together.  ``threads``: worker threads for an open loop of a
    thread-based driver (default :func:`thread_count`).  ``instance=(k, n)``:
    this process is instance ``k`` of a fleet of ``n`` and issues the
    arrivals simlib's fleet sends to instance ``k`` (a uniform draw per
    arrival on the "instances" stream).  ``observe(driver, records)``: called
    once the driver is open, before the first request, with the driver (its
    library pool is ``driver.pool`` / ``driver.engine``) and the list the run
    appends every request's record to -- for watching a run from outside (a
    pool exporter, :mod:`labs.monitoring`); it must return at once and only
    read what it is given.
    """
    w = scenario.workload
    if instance is not None and (w.kind != "open" or not 0 <= instance[0] < instance[1]):
        raise ValueError(f"instance={instance}: only an open loop is split over a fleet, "
                         "as k of n (0 <= k < n)")
    if share is not None:
        k, n = share
        if w.kind != "open" or not 0 <= k < n:
            raise ValueError(f"share={share}: only an open loop can be shared, "
                             "as k of n (0 <= k < n)")
        if getattr(driver, "assign", None) is not None:
            raise ValueError("share: the keyed path draws keys in arrival order; run it whole")
    with _Collector() as collector:
        load = Load(driver, ctx, scenario, drain_limit=drain_limit, progress=progress,
                    collector=collector, share=share, instance=instance)
        if not driver.asynchronous:
            n = threads or thread_count(driver.limit, w.kind, w.clients,
                                        scenario.host.threads)
            return run(_session(driver, load, ThreadRunner(load, n), on_start, on_stop, start_at,
                                observe))
        with asyncio.Runner(loop_factory=event_loop_factory()) as loop:
            runner = LoopRunner(load)
            return loop.run(run_async(_session(driver, load, runner, on_start, on_stop, start_at,
                                               observe)))
