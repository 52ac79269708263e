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

Service times come from simlib's "service" stream in arrival order.

**One run over several processes.**  One Python process can only keep so
many requests on schedule (its CPU, and the GIL).  :func:`run_async` can run
one *share* of an open-loop run: with ``share=(k, n)`` the process walks the
whole schedule (the same arrival and service times) but issues only the
requests whose index is ``k`` modulo ``n``, and ``start_at`` gives all
processes one time zero; the caller merges their records.  The harness
benchmark uses it (bench/bench_harness.py ``--processes``).

**Event loop.**  :func:`run_async` (the asyncpg scenarios) runs on uvloop, a
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from labs.drivers.common import Record, RunContext
from simlib.streams import _BATCH, Streams, generator
from simlib.workload import FAILED_REQUEST_PAUSE

__all__ = [
    "arrival_times",
    "event_loop_factory",
    "event_loop_name",
    "run_async",
    "run_threaded",
    "thread_count",
]


def arrival_times(seed: int, rate: float) -> Iterator[float]:
    """Poisson arrival times (seconds from the start), the same ones simlib draws."""
    rng = generator(seed, 0, "arrivals")
    mean = 1.0 / rate
    t = 0.0
    while True:
        for gap in rng.exponential(mean, _BATCH).tolist():
            t += gap
            yield t


def thread_count(limit: int | None, kind: str, clients: int) -> int:
    """Worker threads for an open loop: min(256, max(32, 4 x the pool's connection limit)).

    Four threads per connection the pool may hold leaves room for requests
    queueing inside the pool (where the library makes them wait) without
    the executor's own queue delaying dispatch; the cap keeps the GIL and
    memory in check.  A closed loop uses exactly one thread per client.
    """
    if kind == "closed":
        return clients
    return min(256, max(32, 4 * (limit or 64)))


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

    def __enter__(self) -> _Collector:
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

    def __exit__(self, *exc) -> None:
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


def _sleep_until(ctx: RunContext, t: float) -> None:
    delay = t - ctx.now()
    if delay > 0:
        time.sleep(delay)


def run_threaded(
    driver,
    ctx: RunContext,
    scenario,
    *,
    threads: int,
    drain_limit: float,
    progress: bool = False,
    on_stop: Callable[[], None] | None = None,
) -> tuple[list[Record], dict]:
    """Drive a thread-based driver; returns the records and facts about the run.

    ``on_stop`` is called when the drain limit is reached with requests still
    running (the executor cancels our server queries there).
    """
    with _Collector() as collector:
        return _run_threaded(
            driver,
            ctx,
            scenario,
            threads=threads,
            drain_limit=drain_limit,
            progress=progress,
            on_stop=on_stop,
            collector=collector,
        )


def _run_threaded(
    driver, ctx, scenario, *, threads, drain_limit, progress, on_stop, collector
) -> tuple[list[Record], dict]:
    w = scenario.workload
    start, end = w.warmup, w.warmup + w.duration
    shared = _Shared(start, end)
    service = Streams(scenario.seed, 0).distribution("service", scenario.query.service_time)
    # The keyed path (labs/access.py) draws each request's key in arrival order.
    assign = getattr(driver, "assign", None)
    service_lock = threading.Lock()
    bar = _Progress(progress, ctx, end)
    limit_hit = False

    def work(rec: Record) -> None:
        try:
            driver.serve(rec)
        finally:
            shared.done(rec)

    if w.kind == "open":
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labs-req")
        try:
            for i, t in enumerate(arrival_times(scenario.seed, w.rate)):
                if t >= end:
                    if shared.pending == 0:
                        break
                    if ctx.now() >= end + drain_limit:
                        limit_hit = True
                        break
                collector.tick(t)
                _sleep_until(ctx, t)
                rec = Record(i, t, service())
                if assign is not None:
                    assign(rec)
                shared.add(rec)
                pool.submit(work, rec)
                bar.tick(shared.records)
        finally:
            # Requests sent after the window only kept the load up; from now on
            # they skip their query (and queued ones are dropped).
            ctx.stopping.set()
            if (limit_hit or shared.pending) and on_stop is not None:
                on_stop()
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        think_mean = w.think_time
        counter = iter(range(10**12))

        def client(k: int) -> None:
            rng = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence(scenario.seed, spawn_key=(0, 3, k)))
            )
            think = (lambda: float(rng.exponential(think_mean))) if think_mean > 0 else None
            t = think() if think else 0.0
            while t < end and not ctx.stopping.is_set():
                _sleep_until(ctx, t)
                with service_lock:
                    rec = Record(next(counter), t, service())
                    rec.client = k
                    if assign is not None:
                        assign(rec)
                shared.add(rec)
                try:
                    ok = driver.serve(rec)
                finally:
                    shared.done(rec)
                now = ctx.now()
                if think:
                    t = now + think()
                elif not ok and now - rec.started < FAILED_REQUEST_PAUSE:
                    t = now + FAILED_REQUEST_PAUSE
                else:
                    t = now

        workers = [
            threading.Thread(target=client, args=(k,), name=f"labs-client-{k}", daemon=True)
            for k in range(w.clients)
        ]
        for th in workers:
            th.start()
        deadline = end + drain_limit
        while any(th.is_alive() for th in workers):
            if ctx.now() >= deadline:
                limit_hit = True
                ctx.stopping.set()
                if on_stop is not None:
                    on_stop()
                break
            time.sleep(0.05)
            collector.tick(ctx.now())
            bar.tick(shared.records)
        for th in workers:
            th.join(timeout=10.0)
    return list(shared.records), {"drain_limit_hit": limit_hit, "threads": threads}


def run_async(
    driver,
    ctx: RunContext,
    scenario,
    *,
    drain_limit: float,
    progress: bool = False,
    on_stop: Callable[[], None] | None = None,
    on_start: Callable[[], None] | None = None,
    share: tuple[int, int] | None = None,
    start_at: float | None = None,
) -> tuple[list[Record], dict]:
    """Drive the asyncpg driver on a fresh event loop (opens and closes it too).

    The loop is uvloop's when available (see the module docstring,
    :func:`event_loop_name`).  ``on_start`` is called once the pool is open
    and the clock restarted.  ``share=(k, n)``: issue only the open-loop
    requests whose index is ``k`` modulo ``n``; ``start_at``: the
    ``time.perf_counter()`` value that is time zero (the pool is opened
    before it), so that ``n`` processes run one schedule together.
    """
    if share is not None:
        k, n = share
        if scenario.workload.kind != "open" or not 0 <= k < n:
            raise ValueError(f"share={share}: only an open loop can be shared, "
                             "as k of n (0 <= k < n)")
        if getattr(driver, "assign", None) is not None:
            raise ValueError("share: the keyed path draws keys in arrival order; run it whole")
    with _Collector() as collector, asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(
            _run_async(
                driver,
                ctx,
                scenario,
                drain_limit=drain_limit,
                progress=progress,
                on_stop=on_stop,
                on_start=on_start,
                collector=collector,
                share=share,
                start_at=start_at,
            )
        )


async def _run_async(
    driver, ctx, scenario, *, drain_limit, progress, on_stop, on_start, collector,
    share=None, start_at=None,
):
    w = scenario.workload
    start, end = w.warmup, w.warmup + w.duration
    shared = _Shared(start, end)
    service = Streams(scenario.seed, 0).distribution("service", scenario.query.service_time)
    # The keyed path (labs/access.py) draws each request's key in arrival order.
    assign = getattr(driver, "assign", None)
    bar = _Progress(progress, ctx, end)
    limit_hit = False
    await driver.open()
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    ctx.restart_clock(start_at)
    if on_start is not None:
        on_start()
    mine, of = share if share is not None else (0, 1)
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    # Everything below runs on the loop's one thread: ``shared`` needs no lock.
    async def work(rec: Record) -> bool:
        try:
            return await driver.serve(rec)
        finally:
            if start <= rec.scheduled < end:
                shared.pending -= 1

    async def request(rec: Record) -> None:
        """One open-loop request, as its own task."""
        try:
            await driver.serve(rec)
        finally:
            if start <= rec.scheduled < end:
                shared.pending -= 1
            # Here rather than in a done callback: one loop callback less per request.
            tasks.discard(asyncio.current_task(loop))

    try:
        if w.kind == "open":
            create_task = loop.create_task
            records = shared.records
            now = ctx.now
            for i, t in enumerate(arrival_times(scenario.seed, w.rate)):
                if t >= end:
                    if shared.pending == 0:
                        break
                    if now() >= end + drain_limit:
                        limit_hit = True
                        break
                if of > 1:
                    drawn = service()  # every request's draw, to keep the stream in step
                    if i % of != mine:
                        continue
                if t >= collector.next:  # also when late and not sleeping
                    collector.tick(t)
                delay = t - now()
                if delay > 0:
                    # Early: wait for the schedule.  Late (the loop was busy): start
                    # this and every other request that is due without yielding, so
                    # a backlog is cleared in one pass.
                    if progress:
                        bar.tick(records)
                    await asyncio.sleep(delay)
                rec = Record(i, t, drawn if of > 1 else service())
                if assign is not None:
                    assign(rec)
                records.append(rec)
                if start <= t < end:
                    shared.pending += 1
                tasks.add(create_task(request(rec)))
        else:
            counter = iter(range(10**12))

            async def client(k: int) -> None:
                rng = np.random.Generator(
                    np.random.PCG64(np.random.SeedSequence(scenario.seed, spawn_key=(0, 3, k)))
                )
                thinking = w.think_time > 0
                t = float(rng.exponential(w.think_time)) if thinking else 0.0
                while t < end and not ctx.stopping.is_set():
                    delay = t - ctx.now()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    rec = Record(next(counter), t, service())
                    rec.client = k
                    if assign is not None:
                        assign(rec)
                    shared.add(rec)
                    ok = await work(rec)
                    now = ctx.now()
                    if thinking:
                        t = now + float(rng.exponential(w.think_time))
                    elif not ok and now - rec.started < FAILED_REQUEST_PAUSE:
                        t = now + FAILED_REQUEST_PAUSE
                    else:
                        t = now

            for k in range(w.clients):
                task = asyncio.create_task(client(k))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        deadline = end + drain_limit
        while tasks and (w.kind == "closed" or shared.pending):
            if ctx.now() >= deadline:
                limit_hit = True
                break
            await asyncio.sleep(0.02)
            collector.tick(ctx.now())
            bar.tick(shared.records)
    finally:
        if tasks:
            ctx.stopping.set()
            if on_stop is not None:
                await asyncio.to_thread(on_stop)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await driver.close()
    return list(shared.records), {"drain_limit_hit": limit_hit, "threads": 1}
