"""``pool.kind = "sqlalchemy_async"``: the model against the real ``AsyncAdaptedQueuePool``.

``create_async_engine`` pools with ``AsyncAdaptedQueuePool``, which is QueuePool
with an ``asyncio.Queue``; simlib models it with the QueuePool model
(simlib/pools/sqlalchemy_async.py).  Here random traces of checkouts and
returns are played through the real pool -- on an asyncio event loop whose
clock jumps instead of waiting, each checkout in SQLAlchemy's own
``greenlet_spawn`` as ``AsyncEngine`` does it, with a stand-in DBAPI
connection -- and through the model.  Waiting requests, timeouts, overflow
churn, ``use_lifo``, ``pool_recycle`` and ``pool_size = 0`` included: which
requests get a connection and *when*, which time out, and the connections
opened and closed must agree.  Event times are continuous random draws, so no
two coincide and the hand-off order is the queue's alone (first come first
served, as the model says).

The live half of the kind (labs/drivers/sqlalchemy_async.py) goes through
tests/test_executor.py's every-kind checks here, on the machine's Postgres, and
through the ``sqlalchemy-async`` scenario of ``labs validate``.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
import time

import pytest
import test_executor
from sqlalchemy.exc import TimeoutError as SATimeout
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.concurrency import greenlet_spawn
from test_pools import FakeDBAPIConnection, Harness

from simlib.pools import pool_kind
from simlib.pools.sqlalchemy import QueuePoolModel


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never sleeps: asked to wait, it moves the loop's clock on instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):  # type: ignore[override]
        events = super().select(0)
        if not events and timeout and self.loop is not None:
            self.loop.now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: timers fire in order, with no real waiting."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def random_trace(seed: int, n: int = 60) -> list[tuple[float, float]]:
    """(arrival, hold) pairs: Poisson arrivals at ~250/s, exponential holds of ~12 ms."""
    rng = random.Random(seed)
    t, trace = 0.0, []
    for _ in range(n):
        t += rng.expovariate(250.0)
        trace.append((t, rng.expovariate(1 / 0.012)))
    return trace


def real_async_pool(trace, pool_size, max_overflow, timeout, use_lifo, recycle, monkeypatch):
    """Play the trace through AsyncAdaptedQueuePool on a virtual clock.

    Returns ``{i: (outcome, time)}`` (time of the connection in hand, or of the
    timeout), the connections opened and closed, and the idle count at the end.
    """
    loop = VirtualTimeLoop()
    monkeypatch.setattr(time, "time", lambda: 1000.0 + loop.now)  # pool_recycle's clock
    FakeDBAPIConnection.opened = FakeDBAPIConnection.closed = 0
    pool = AsyncAdaptedQueuePool(
        FakeDBAPIConnection, pool_size=pool_size, max_overflow=max_overflow,
        timeout=None if math.isinf(timeout) else timeout, use_lifo=use_lifo, recycle=recycle,
    )
    outcomes: dict[int, tuple[str, float]] = {}

    async def request(i: int, at: float, hold: float) -> None:
        await asyncio.sleep(at)
        try:
            conn = await greenlet_spawn(pool.connect)
        except SATimeout as e:
            outcomes[i] = ("timeout: " + str(e).split(" (Background")[0], loop.time())
            return
        outcomes[i] = ("ok", loop.time())
        await asyncio.sleep(hold)
        await greenlet_spawn(conn.close)

    async def play() -> None:
        await asyncio.gather(*(request(i, at, hold) for i, (at, hold) in enumerate(trace)))

    try:
        loop.run_until_complete(play())
    finally:
        loop.close()
    return outcomes, FakeDBAPIConnection.opened, FakeDBAPIConnection.closed, pool.checkedin()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "pool_size,max_overflow,timeout,use_lifo,recycle",
    [
        (2, 1, 0.0, False, -1),  # no patience: a wait is a timeout at once
        (2, 1, 0.01, False, -1),  # waits, some served, some timed out
        (3, 0, 0.02, True, -1),  # LIFO idle connections, no overflow
        (1, 2, 10.0, False, -1),  # waits that always end with a connection
        (2, 2, 0.01, False, 0.02),  # recycled at checkout
        (0, 5, 0.01, False, -1),  # pool_size 0: no limit
    ],
)
def test_model_matches_async_adapted_queue_pool(
    seed, pool_size, max_overflow, timeout, use_lifo, recycle, monkeypatch
):
    trace = random_trace(seed)
    real, real_opened, real_closed, real_idle = real_async_pool(
        trace, pool_size, max_overflow, timeout, use_lifo, recycle, monkeypatch
    )
    monkeypatch.undo()
    h = Harness({"kind": "sqlalchemy_async", "pool_size": pool_size,
                 "max_overflow": max_overflow, "pool_timeout": timeout, "use_lifo": use_lifo,
                 "pool_recycle": recycle, "reset_on_return": False})
    assert isinstance(h.pool, QueuePoolModel)
    for i, (at, hold) in enumerate(trace):
        h.request(i, at, hold)
    model = {i: (outcome, got) for i, outcome, got, _ in h.run()}
    assert set(model) == set(real)
    for i, (outcome, at) in real.items():
        assert model[i][0] == outcome, (i, model[i], real[i])
        assert model[i][1] == pytest.approx(at, abs=1e-9), (i, model[i], real[i])
    assert (h.opened, h.closed) == (real_opened, real_closed)
    assert len(h.pool.idle) == real_idle
    waits = sum(1 for i, (at, _) in enumerate(trace) if real[i][1] > at + 1e-9)
    if timeout > 0 and pool_size:
        assert waits > 0  # the trace made requests wait: the hand-off was exercised


def test_the_kind_is_queuepools_model_with_its_own_name():
    kind = pool_kind("sqlalchemy_async")
    # QueuePool's model, with asyncio's cancelling timeout (and nothing else).
    assert issubclass(kind.model, QueuePoolModel)
    assert set(vars(kind.model)) - set(vars(object)) <= {"CANCEL_ON_TIMEOUT", "__doc__",
                                                        "__module__", "__parameters__",
                                                        "__orig_bases__"}
    assert kind.model.CANCEL_ON_TIMEOUT and not QueuePoolModel.CANCEL_ON_TIMEOUT
    assert kind.config.kind == "sqlalchemy_async"
    assert kind.config().connection_limit() == 15  # pool_size 5 + max_overflow 10
    assert "QueuePool" in kind.rules and "`sqlalchemy`" in kind.rules


@test_executor.live
@pytest.mark.live
def test_live_driver_runs_and_reports_every_metric(monkeypatch):
    # the every-kind test of tests/test_executor.py, for this kind's live driver
    pool = {"kind": "sqlalchemy_async", "pool_size": 5, "max_overflow": 10}
    monkeypatch.setitem(test_executor.POOLS, "sqlalchemy_async", pool)
    test_executor.test_every_pool_kind_runs_and_reports_every_metric("sqlalchemy_async")
