"""Who gets a returned connection: the real libraries' queues against simlib's models.

Each test runs one deterministic closed loop twice, request for request:

* on the **real** library code that hands connections out (SQLAlchemy's
  ``QueuePool`` on its ``threading.Condition`` queue; asyncpg's holder queue,
  an ``asyncio.LifoQueue``, under asyncpg's ``compat.wait_for``, with its
  shielded release; SQLAlchemy's
  ``AsyncAdaptedQueuePool`` on ``asyncio.Queue``; psycopg_pool's
  ``ConnectionPool`` with its ``WaitingClient``), on a virtual clock with
  deterministic turns (tests/handoff_harness.py);
* on **simlib**'s model of that pool, under the same turns: an
  :class:`~simlib.interpreter.Interpreter` with free Python.

The loops are built to make the hand-off matter: many more clients than
connections, no think time or very little, and timeouts.  Both runs must
give the same requests the same connections at the same moments, the same
timeouts, and so the same ``overtaken_ratio``.  Service and think times are
distinct irrational-looking numbers per client, so no two events ever fall
on the same instant and the order of simultaneous events (which the two
schedulers are free to break differently) never decides anything.

What these tests do *not* check is the turn order of a real GIL; the live
validate suite measures that (README, "Fidelity under contention").
"""

from __future__ import annotations

import asyncio
import math
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from simlib.config import Database
from simlib.database import DatabaseServer
from simlib.distributions import Constant
from simlib.interpreter import Interpreter
from simlib.metrics import OVERTAKE_EPS, Recorder, overtaken_counts
from simlib.pools import PoolTimeout, make_pool
from simlib.request import Request
from simlib.scenario import POOL_KINDS
from tests.handoff_harness import VirtualClockLoop, VirtualThreads, virtual_threading

#: (client, asked, got or gave up at, got a connection, waited)
Row = tuple[int, float, float, bool, bool]

RTT = 0.00013  # the reset's round trip
PAUSE = 0.0007  # a client whose checkout timed out pauses this long before retrying


@dataclass(frozen=True)
class Loop:
    """A deterministic closed loop: who asks, how long each holds, how long each thinks."""

    clients: int
    think: float  # 0: none; else client c thinks between think and twice that
    until: float

    # Square roots of distinct primes are linearly independent over the
    # rationals, so no sum of some clients' times equals another sum: no two
    # events of either run fall on the same instant by construction.
    def service(self, c: int) -> float:
        return 0.010 * (1 + math.sqrt(PRIMES[c]) % 1)

    def think_time(self, c: int) -> float:
        return self.think * (1 + math.sqrt(PRIMES[c + 40]) % 1)


PRIMES = [p for p in range(2, 1000) if all(p % d for d in range(2, int(p**0.5) + 1))]


# -- simlib ----------------------------------------------------------------

def simulate(kind: str, params: dict[str, Any], loop: Loop, reset: bool = True) -> list[Row]:
    """The loop on simlib's model of ``kind``, one process per client, one interpreter."""
    env = simpy.Environment()
    recorder = Recorder(env, 0.0, loop.until)
    server = DatabaseServer(
        env, Database(connect_time=Constant(0.0), network_rtt=RTT, cores=0,
                      max_connections=10_000),
        lambda: 0.0, recorder, cpu_bound=False,
    )
    interp = Interpreter(env, switch_interval=math.inf)
    config = POOL_KINDS[kind].parse("pool", params)
    pool = make_pool(env, server, recorder, config, lambda: 0.5, interp)
    pool.start()
    rows: list[Row] = []

    def client(c: int) -> Generator[simpy.Event, Any, None]:
        yield from interp.take()
        while env.now < loop.until:
            asked = env.now
            request = Request(asked)
            try:
                conn = yield from pool.checkout(request)
            except PoolTimeout:
                rows.append((c, asked, env.now, False, True))
                yield from interp.io(PAUSE)
                continue
            got = env.now
            yield from interp.io(loop.service(c))
            if reset:
                yield from interp.io(pool.reset_delay(conn))
            yield from pool.release(conn)
            rows.append((c, asked, got, True, request.waited))
            if loop.think:
                yield from interp.io(loop.think_time(c))

    for c in range(loop.clients):
        env.process(client(c))
    env.run(until=loop.until)
    return rows


# -- the real libraries ---------------------------------------------------

class FakeDBAPIConnection:
    """What a pool holds: its rollback is one round trip of (virtual) I/O."""

    def __init__(self, sleep: Callable[[float], Any]) -> None:
        self._sleep = sleep

    def rollback(self) -> None:
        self._sleep(RTT)

    def close(self) -> None:
        pass

    def cursor(self) -> None:  # pragma: no cover - the pool never asks
        raise AssertionError("not used")


def real_queuepool(params: dict[str, Any], loop: Loop, monkeypatch: pytest.MonkeyPatch,
                   ) -> list[Row]:
    """The loop on SQLAlchemy's real QueuePool, its threads on virtual turns."""
    import sqlalchemy.exc
    import sqlalchemy.pool.impl
    import sqlalchemy.util.queue
    from sqlalchemy.pool import QueuePool

    vt = VirtualThreads()
    fake = virtual_threading(vt)
    monkeypatch.setattr(sqlalchemy.util.queue, "threading", fake)
    monkeypatch.setattr(sqlalchemy.util.queue, "_time", vt.time)
    monkeypatch.setattr(sqlalchemy.pool.impl, "threading", fake)
    pool = QueuePool(lambda: FakeDBAPIConnection(vt.sleep), pool_size=params["pool_size"],
                     max_overflow=params["max_overflow"], timeout=params["pool_timeout"])
    rows: list[Row] = []

    def client(c: int) -> None:
        while vt.now < loop.until:
            asked = vt.now
            try:
                fairy = pool.connect()
            except sqlalchemy.exc.TimeoutError:
                rows.append((c, asked, vt.now, False, True))
                vt.sleep(PAUSE)
                continue
            got = vt.now
            vt.sleep(loop.service(c))
            fairy.close()  # reset on return (a rollback round trip), then the queue's put
            rows.append((c, asked, got, True, got > asked))
            if loop.think:
                vt.sleep(loop.think_time(c))

    for c in range(loop.clients):
        vt.spawn(client, c)
    vt.run(until=loop.until)
    return rows


class FakeHolder:
    """asyncpg's PoolConnectionHolder as its queue sees it: connected or not."""

    def is_connected(self) -> bool:
        return True


def real_psycopg_pool(params: dict[str, Any], loop: Loop, monkeypatch: pytest.MonkeyPatch,
                      ) -> list[Row]:
    """The loop on psycopg_pool's real ConnectionPool: ``_getconn_unchecked``, ``_add_to_pool``.

    The pool is not opened (no workers, no server): its idle deque is filled
    with stand-in connections, and the two methods that decide who gets one
    run unchanged, on virtual threads.
    """
    import psycopg_pool.pool
    from psycopg_pool import ConnectionPool
    from psycopg_pool import PoolTimeout as RealPoolTimeout

    vt = VirtualThreads()
    fake = virtual_threading(vt)
    monkeypatch.setattr(psycopg_pool.pool, "Lock", fake.Lock)
    monkeypatch.setattr(psycopg_pool.pool, "Condition", fake.Condition)
    monkeypatch.setattr(psycopg_pool.pool, "monotonic", vt.time)
    size = params["max_size"]
    pool = ConnectionPool("", open=False, min_size=size, max_size=size, timeout=params["timeout"])
    pool._pool.extend(types.SimpleNamespace() for _ in range(size))
    pool._closed = False  # "open" without its workers: _add_to_pool refuses a closed pool
    rows: list[Row] = []

    def client(c: int) -> None:
        while vt.now < loop.until:
            asked = vt.now
            try:
                conn = pool._getconn_unchecked(params["timeout"])
            except RealPoolTimeout:
                rows.append((c, asked, vt.now, False, True))
                vt.sleep(PAUSE)
                continue
            got = vt.now
            vt.sleep(loop.service(c))
            vt.sleep(RTT)  # putconn's reset, then the hand-off
            pool._add_to_pool(conn)
            rows.append((c, asked, got, True, got > asked))
            if loop.think:
                vt.sleep(loop.think_time(c))

    for c in range(loop.clients):
        vt.spawn(client, c)
    vt.run(until=loop.until)
    return rows


def real_asyncpg_queue(max_size: int, timeout: float | None, loop: Loop) -> list[Row]:
    """The loop on asyncpg's own holder queue, as ``Pool._acquire`` takes from it.

    With a timeout, inside asyncpg's own ``compat.wait_for`` (on Python 3.11
    its backport, ``async with timeout(...)``: inline, like 3.12's
    ``asyncio.wait_for``); without one (asyncpg's default), awaited inline.
    A release is ``Pool.release``'s ``await asyncio.shield(ch.release())``:
    the reset query and the push run in a task of their own.
    """
    from asyncpg import compat
    from asyncpg.pool import _PoolConnectionHolderQueue

    ev = VirtualClockLoop()
    rows: list[Row] = []

    async def main() -> None:
        queue = _PoolConnectionHolderQueue(maxsize=max_size)
        for _ in range(max_size):
            queue.put_nowait(FakeHolder())

        async def release(holder: FakeHolder) -> None:
            # PoolConnectionHolder.release: the reset query, then _release()
            await asyncio.sleep(RTT)
            queue.put_nowait(holder)

        async def client(c: int) -> None:
            while ev.time() < loop.until:
                asked = ev.time()
                try:
                    if timeout is None:
                        holder = await queue.get()
                    else:
                        holder = await compat.wait_for(queue.get(), timeout)
                except TimeoutError:
                    rows.append((c, asked, ev.time(), False, True))
                    await asyncio.sleep(PAUSE)
                    continue
                got = ev.time()
                await asyncio.sleep(loop.service(c))
                await asyncio.shield(release(holder))
                rows.append((c, asked, got, True, got > asked))
                if loop.think:
                    await asyncio.sleep(loop.think_time(c))

        tasks = [asyncio.ensure_future(client(c)) for c in range(loop.clients)]
        await asyncio.sleep(loop.until)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        ev.run_until_complete(main())
    finally:
        ev.close()
    return [r for r in rows if r[1] < loop.until]


def real_async_queuepool(params: dict[str, Any], loop: Loop) -> list[Row]:
    """The loop on SQLAlchemy's real AsyncAdaptedQueuePool, through its greenlet bridge."""
    import sqlalchemy.exc
    from sqlalchemy.pool import AsyncAdaptedQueuePool
    from sqlalchemy.util.concurrency import await_, greenlet_spawn

    ev = VirtualClockLoop()
    rows: list[Row] = []

    def sleep(seconds: float) -> None:
        await_(asyncio.sleep(seconds))

    async def main() -> None:
        pool = AsyncAdaptedQueuePool(
            lambda: FakeDBAPIConnection(sleep), pool_size=params["pool_size"],
            max_overflow=params["max_overflow"], timeout=params["pool_timeout"])

        def client(c: int) -> None:
            while ev.time() < loop.until:
                asked = ev.time()
                try:
                    fairy = pool.connect()
                except sqlalchemy.exc.TimeoutError:
                    rows.append((c, asked, ev.time(), False, True))
                    sleep(PAUSE)
                    continue
                got = ev.time()
                sleep(loop.service(c))
                fairy.close()
                rows.append((c, asked, got, True, got > asked))
                if loop.think:
                    sleep(loop.think_time(c))

        tasks = [asyncio.ensure_future(greenlet_spawn(client, c)) for c in range(loop.clients)]
        await asyncio.sleep(loop.until)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        ev.run_until_complete(main())
    finally:
        ev.close()
    return [r for r in rows if r[1] < loop.until]


# -- comparing ---------------------------------------------------------------

def assert_same(real: list[Row], model: list[Row]) -> None:
    """Request for request: same client, same moments (to float rounding), same outcome."""
    key = lambda r: (round(r[1], 9), r[0])  # noqa: E731
    real, model = sorted(real, key=key), sorted(model, key=key)
    assert len(real) == len(model) > 0
    for a, b in zip(real, model, strict=True):
        assert a[0] == b[0] and a[3] == b[3] and a[4] == b[4], (a, b)
        assert a[1] == pytest.approx(b[1], abs=1e-9) and a[2] == pytest.approx(b[2], abs=1e-9)


def overtaken(rows: list[Row]) -> float:
    waited, count = overtaken_counts([(r[1], r[2], r[4], r[3]) for r in rows])
    return count / waited if waited else 0.0


LOOPS = {
    "no think, 10x clients": Loop(clients=30, think=0.0, until=3.0),
    "short think, 10x clients": Loop(clients=30, think=0.004, until=3.0),
    "think, 4x clients": Loop(clients=12, think=0.02, until=3.0),
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_queuepool_hand_off_is_sqlalchemys(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = LOOPS[name]
    params = {"pool_size": 3, "max_overflow": 0, "pool_timeout": 0.25}
    real = real_queuepool(params, loop, monkeypatch)
    model = simulate("sqlalchemy", params, loop)
    assert_same(real, model)
    assert overtaken(real) == overtaken(model)


def test_queuepool_without_think_time_starves_and_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The starvation of asyncpg issue 1247, in SQLAlchemy's real QueuePool and in the model."""
    loop = LOOPS["no think, 10x clients"]
    params = {"pool_size": 3, "max_overflow": 0, "pool_timeout": 0.25}
    real = real_queuepool(params, loop, monkeypatch)
    served = {r[0] for r in real if r[3]}
    timed_out = [r for r in real if not r[3]]
    assert len(served) < loop.clients  # some clients never get a connection
    assert len(timed_out) > loop.clients  # and keep timing out
    assert overtaken(real) > 0.9


@pytest.mark.parametrize("name", list(LOOPS))
def test_asyncpg_hand_off_is_asyncpgs(name: str) -> None:
    """``acquire(timeout=0.25)``: ``compat.wait_for`` is inline; the release is shielded."""
    loop = LOOPS[name]
    real = real_asyncpg_queue(max_size=3, timeout=0.25, loop=loop)
    model = simulate("asyncpg", {"min_size": 3, "max_size": 3, "timeout": 0.25}, loop)
    assert_same(real, model)
    assert overtaken(real) == overtaken(model)


@pytest.mark.parametrize("name", list(LOOPS))
def test_asyncpg_without_timeout_hand_off_is_asyncpgs(name: str) -> None:
    """``acquire()`` (asyncpg's default): the same hand-off as with a timeout."""
    loop = LOOPS[name]
    real = real_asyncpg_queue(max_size=3, timeout=None, loop=loop)
    model = simulate("asyncpg", {"min_size": 3, "max_size": 3}, loop)
    assert_same(real, model)
    assert overtaken(real) == overtaken(model)


@pytest.mark.parametrize("timeout", [None, 0.25])
def test_asyncpg_shielded_release_does_not_starve(timeout: float | None) -> None:
    """Unlike QueuePool's loop above, asyncpg's serves every client, in order.

    ``Pool.release`` resumes the releaser two loop turns after the push, so
    with Python that costs nothing the woken getter always runs first: no
    one is overtaken and no one times out.  Live, the tasks' Python fills
    the ready queue, and a releaser already in it can take the holder (the
    validate suite's asyncpg rows).
    """
    loop = LOOPS["no think, 10x clients"]
    real = real_asyncpg_queue(max_size=3, timeout=timeout, loop=loop)
    assert {r[0] for r in real if r[3]} == set(range(loop.clients))
    assert all(r[3] for r in real)
    assert overtaken(real) == 0.0


@pytest.mark.parametrize("name", list(LOOPS))
def test_psycopg_pool_hand_off_is_psycopgs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct hand-off: nobody is ever overtaken, in the real pool or the model."""
    loop = LOOPS[name]
    params = {"min_size": 3, "max_size": 3, "timeout": 0.25}
    real = real_psycopg_pool(params, loop, monkeypatch)
    model = simulate("psycopg_pool", params, loop)
    assert_same(real, model)
    assert overtaken(real) == overtaken(model) == 0.0


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # tasks cancelled at the end
@pytest.mark.parametrize("name", list(LOOPS))
def test_async_queuepool_hand_off_is_sqlalchemys(name: str) -> None:
    loop = LOOPS[name]
    params = {"pool_size": 3, "max_overflow": 0, "pool_timeout": 0.25}
    real = real_async_queuepool(params, loop)
    model = simulate("sqlalchemy_async", params, loop)
    assert_same(real, model)
    assert overtaken(real) == overtaken(model)


# -- the metric itself --------------------------------------------------------

def brute_force_overtaken(rows: list[tuple[float, float, bool, bool]], eps: float
                          ) -> tuple[int, int]:
    """The contract's definition, word for word, in O(n^2)."""
    waited = [r for r in rows if r[2]]
    count = sum(
        any(o[0] > r[0] + eps and o[3] and o[1] < r[1] - eps for o in rows) for r in waited
    )
    return len(waited), count


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans(),
                          st.booleans()), max_size=60))
def test_overtaken_counts_is_the_contracts_definition(raw: list[tuple[int, int, bool, bool]]
                                                      ) -> None:
    # Times on a coarse grid (multiples of 0.1 ms) make ties and near-ties common.
    rows = [(a * 1e-4, (a + d) * 1e-4, w, g) for a, d, w, g in raw]
    assert overtaken_counts(rows) == brute_force_overtaken(rows, OVERTAKE_EPS)
