"""Pool models against the real libraries' rules.

Where the real pool can run without a server (SQLAlchemy's QueuePool and
psycopg2's ThreadedConnectionPool both accept a stand-in for the DBAPI
connect function), the same trace of checkouts and returns is played through
the real pool and through the model, and the outcomes must be identical:
connections opened, closed, reused, timed out.  The other rules are checked
on small deterministic traces whose answer can be worked out by hand from
the library's source (quoted in each pool module's docstring).
"""

from __future__ import annotations

import random
import time

import pytest
import simpy

from simlib.database import DatabaseServer, ProcessorSharing
from simlib.metrics import Recorder
from simlib.pools import PoolTimeout, make_pool
from simlib.pools.sqlalchemy import QueuePoolModel
from simlib.request import Request
from simlib.scenario import parse_scenario


class Harness:
    """A pool model on its own, driven by explicit (arrival, hold) requests."""

    def __init__(
        self,
        pool: dict,
        connect_time: float = 0.0,
        rtt: float = 0.0,
        max_connections: int = 100,
        uniform=lambda: 0.5,
    ) -> None:
        scenario = parse_scenario(
            {
                "pool": pool,
                "database": {
                    "connect_time": connect_time,
                    "network_rtt": rtt,
                    "max_connections": max_connections,
                },
            }
        )
        self.env = simpy.Environment()
        self.recorder = Recorder(self.env, 0.0, 1e9)
        constant = float(connect_time)
        self.server = DatabaseServer(
            self.env, scenario.database, lambda: constant, self.recorder, cpu_bound=False
        )
        self.pool = make_pool(self.env, self.server, self.recorder, scenario.pool, uniform)
        self.pool.start()
        self.outcomes: list[tuple[int, str, float, float]] = []  # (i, outcome, got_at, done_at)
        self.opened = 0
        self.closed = 0
        finish, closed = self.server.finish_connect, self.server.close

        def counting_open():
            conn = finish()  # raises ConnectionRefused: not counted
            self.opened += 1
            return conn

        def counting_close(conn):
            self.closed += not conn.closed
            closed(conn)

        self.server.finish_connect = counting_open
        self.server.close = counting_close

    def request(self, i: int, at: float, hold: float) -> None:
        def proc():
            yield self.env.timeout(at)
            req = Request(self.env.now)
            try:
                conn = yield from self.pool.checkout(req)
            except PoolTimeout as e:
                self.outcomes.append((i, f"timeout: {e}", self.env.now, self.env.now))
                return
            except Exception as e:  # ConnectionRefused
                self.outcomes.append((i, type(e).__name__, self.env.now, self.env.now))
                return
            got = self.env.now
            yield self.env.timeout(hold + self.pool.reset_delay(conn))
            yield from self.pool.release(conn)
            self.outcomes.append((i, "ok", got, self.env.now))

        self.env.process(proc())

    def run(self, until: float = 1e6):
        self.env.run(until=until)
        return sorted(self.outcomes)


# ---------------------------------------------------------------------------
# SQLAlchemy QueuePool: model vs the real QueuePool on random traces
# ---------------------------------------------------------------------------
class FakeDBAPIConnection:
    opened = 0
    closed = 0

    def __init__(self) -> None:
        FakeDBAPIConnection.opened += 1

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        FakeDBAPIConnection.closed += 1

    def cursor(self):  # pragma: no cover - not used without pre-ping
        raise AssertionError


def random_trace(seed: int, n: int = 60) -> list[tuple[float, float]]:
    """Arrival times and holding times with no ties, in milliseconds' resolution."""
    rng = random.Random(seed)
    t, trace = 0.0, []
    for _ in range(n):
        t += rng.choice([0.0013, 0.0031, 0.0057, 0.011, 0.023])
        trace.append((round(t, 6), rng.choice([0.0021, 0.0093, 0.0207, 0.0411])))
    return trace


def real_queuepool(trace, pool_size, max_overflow, use_lifo, recycle, monkeypatch):
    """Play the trace through sqlalchemy.pool.QueuePool with a fake clock."""
    from sqlalchemy.exc import TimeoutError as SATimeout
    from sqlalchemy.pool import QueuePool

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    FakeDBAPIConnection.opened = FakeDBAPIConnection.closed = 0
    pool = QueuePool(
        FakeDBAPIConnection,
        pool_size=pool_size,
        max_overflow=max_overflow,
        timeout=0,
        use_lifo=use_lifo,
        recycle=recycle,
    )
    events = []  # (time, kind, i): returns sort before checkouts at the same time
    for i, (at, hold) in enumerate(trace):
        events.append((at, 1, i, hold))
    events.sort()
    held, outcomes, pending = {}, {}, list(events)
    import heapq

    heapq.heapify(pending)
    while pending:
        at, kind, i, hold = heapq.heappop(pending)
        clock["now"] = 1000.0 + at
        if kind == 0:
            held.pop(i).close()
            continue
        try:
            held[i] = pool.connect()
            outcomes[i] = "ok"
            heapq.heappush(pending, (at + hold, 0, i, 0.0))
        except SATimeout as e:
            outcomes[i] = "timeout: " + str(e).split(" (Background")[0]
    return outcomes, FakeDBAPIConnection.opened, FakeDBAPIConnection.closed, pool.checkedin()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "pool_size,max_overflow,use_lifo,recycle",
    [
        (2, 3, False, -1),
        (3, 0, False, -1),
        (1, 2, True, -1),
        (2, 2, False, 0.05005),
        (0, 5, False, -1),
    ],
)
def test_queuepool_matches_sqlalchemy(
    seed, pool_size, max_overflow, use_lifo, recycle, monkeypatch
):
    trace = random_trace(seed)
    real, real_opened, real_closed, real_idle = real_queuepool(
        trace, pool_size, max_overflow, use_lifo, recycle, monkeypatch
    )
    monkeypatch.undo()
    h = Harness(
        {
            "kind": "sqlalchemy",
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": 0.0,
            "use_lifo": use_lifo,
            "pool_recycle": recycle,
            "reset_on_return": False,
        }
    )
    for i, (at, hold) in enumerate(trace):
        h.request(i, at, hold)
    model = {i: outcome for i, outcome, _, _ in h.run()}
    assert model == real
    assert (h.opened, h.closed) == (real_opened, real_closed)
    assert len(h.pool.idle) == real_idle


def test_queuepool_timeout_message_is_sqlalchemys():
    from sqlalchemy.exc import TimeoutError as SATimeout
    from sqlalchemy.pool import QueuePool

    pool = QueuePool(FakeDBAPIConnection, pool_size=1, max_overflow=0, timeout=0.01)
    held = pool.connect()  # noqa: F841 - keep it checked out
    with pytest.raises(SATimeout) as real:
        pool.connect()
    h = Harness({"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.01})
    h.request(0, 0.0, 1.0)
    h.request(1, 0.1, 1.0)
    outcome = dict((i, o) for i, o, _, _ in h.run())[1]
    assert outcome == "timeout: " + str(real.value).split(" (Background")[0]


def test_queuepool_waits_fifo_and_times_out_at_pool_timeout():
    h = Harness({"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5})
    h.request(0, 0.0, 1.0)  # holds the only connection until t=1
    h.request(1, 0.1, 0.1)  # waits; gives up at 0.6
    h.request(2, 0.7, 0.1)  # waits from 0.7; gets it at 1.0
    out = {i: (o, got) for i, o, got, _ in h.run()}
    assert out[1][0].startswith("timeout") and out[1][1] == pytest.approx(0.6)
    assert out[2] == ("ok", pytest.approx(1.0))


def test_queuepool_pre_ping_skips_fresh_connections_and_reset_costs_a_round_trip():
    rtt = 0.001
    h = Harness(
        {"kind": "sqlalchemy", "pool_size": 1, "pool_pre_ping": True}, rtt=rtt, connect_time=0.004
    )
    h.request(0, 0.0, 0.010)  # opens: 4 ms, no ping; returns at 4+10+1 (reset) ms
    h.request(1, 0.1, 0.010)  # reuses: one ping round trip
    out = {i: (got, done) for i, _, got, done in h.run()}
    assert out[0] == (pytest.approx(0.004), pytest.approx(0.015))
    assert out[1] == (pytest.approx(0.1 + rtt), pytest.approx(0.1 + rtt + 0.010 + rtt))


def test_queuepool_overflow_churn():
    """Returned connections beyond pool_size idle are closed, then reopened."""
    h = Harness({"kind": "sqlalchemy", "pool_size": 1, "max_overflow": 3})
    for burst in range(5):  # bursts of 4 concurrent requests
        for j in range(4):
            h.request(burst * 4 + j, burst * 1.0, 0.1)
    h.run()
    assert h.opened == 1 + 3 * 5 and h.closed == 3 * 5


# ---------------------------------------------------------------------------
# psycopg2 ThreadedConnectionPool: model vs the real pool
# ---------------------------------------------------------------------------
class FakePsycopg2Connection:
    opened = 0
    closed_count = 0

    def __init__(self, *args, **kwargs) -> None:
        FakePsycopg2Connection.opened += 1
        self.closed = 0

        class Info:
            transaction_status = 2  # TRANSACTION_STATUS_INTRANS: a SELECT left it open

        self.info = Info()

    def rollback(self) -> None:
        self.info.transaction_status = 0

    def close(self) -> None:
        self.closed = 1
        FakePsycopg2Connection.closed_count += 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("minconn,maxconn", [(1, 3), (0, 2), (2, 2), (2, 5)])
def test_threaded_pool_matches_psycopg2(seed, minconn, maxconn, monkeypatch):
    import heapq

    import psycopg2.pool

    monkeypatch.setattr(psycopg2.pool.psycopg2, "connect", FakePsycopg2Connection)
    FakePsycopg2Connection.opened = FakePsycopg2Connection.closed_count = 0
    real_pool = psycopg2.pool.ThreadedConnectionPool(minconn, maxconn, "dbname=x")
    trace = random_trace(seed)
    pending = [(at, 1, i, hold) for i, (at, hold) in enumerate(trace)]
    heapq.heapify(pending)
    held, real = {}, {}
    while pending:
        at, kind, i, hold = heapq.heappop(pending)
        if kind == 0:
            real_pool.putconn(held.pop(i))
            continue
        try:
            held[i] = real_pool.getconn()
            real[i] = "ok"
            heapq.heappush(pending, (at + hold, 0, i, 0.0))
        except psycopg2.pool.PoolError as e:
            real[i] = f"timeout: {e}"
    h = Harness(
        {"kind": "psycopg2", "minconn": minconn, "maxconn": maxconn, "reset_on_return": False}
    )
    for i, (at, hold) in enumerate(trace):
        h.request(i, at, hold)
    model = {i: o for i, o, _, _ in h.run()}
    assert model == real
    # The model pre-opens minconn (the constructor's connects) without counting them.
    assert (h.opened + minconn, h.closed) == (
        FakePsycopg2Connection.opened,
        FakePsycopg2Connection.closed_count,
    )


def test_threaded_pool_lock_serialises_connects():
    """psycopg2 connects while holding the pool lock: concurrent connects queue."""
    h = Harness({"kind": "psycopg2", "minconn": 0, "maxconn": 3}, connect_time=0.01)
    for i in range(3):
        h.request(i, 0.0, 1.0)
    got = [g for _, _, g, _ in h.run()]
    assert got == pytest.approx([0.01, 0.02, 0.03])


# ---------------------------------------------------------------------------
# psycopg_pool ConnectionPool
# ---------------------------------------------------------------------------
def test_psycopg_pool_grows_one_connection_at_a_time():
    h = Harness({"kind": "psycopg_pool", "min_size": 0, "max_size": 4}, connect_time=0.01)
    for i in range(4):
        h.request(i, 0.0, 1.0)
    got = [g for _, _, g, _ in h.run()]
    assert got == pytest.approx([0.01, 0.02, 0.03, 0.04])
    # SQLAlchemy opens the same four in parallel.
    s = Harness({"kind": "sqlalchemy", "pool_size": 4, "max_overflow": 0}, connect_time=0.01)
    for i in range(4):
        s.request(i, 0.0, 1.0)
    assert [g for _, _, g, _ in s.run()] == pytest.approx([0.01] * 4)


def test_psycopg_pool_max_waiting_and_timeout_messages():
    h = Harness(
        {"kind": "psycopg_pool", "min_size": 1, "max_size": 1, "max_waiting": 1, "timeout": 0.5}
    )
    h.request(0, 0.0, 2.0)
    h.request(1, 0.1, 0.1)  # waits, times out at 0.6
    h.request(2, 0.2, 0.1)  # one already waiting: TooManyRequests at once
    out = {i: (o, got) for i, o, got, _ in h.run()}
    assert out[1][0] == "timeout: PoolTimeout: couldn't get a connection after 0.5 sec"
    assert out[1][1] == pytest.approx(0.6)
    assert out[2][0].startswith("timeout: TooManyRequests") and out[2][1] == pytest.approx(0.2)


def test_psycopg_pool_max_lifetime_replaces_on_return():
    # uniform() = 0 -> no jitter: expiry exactly max_lifetime after opening.
    h = Harness(
        {"kind": "psycopg_pool", "min_size": 1, "max_lifetime": 1.0},
        connect_time=0.01,
        uniform=lambda: 0.0,
    )
    h.request(0, 0.5, 0.1)  # returned at 0.6: still young
    h.request(1, 0.95, 0.1)  # returned at 1.05: expired -> closed, replacement opened
    h.request(2, 1.5, 0.1)
    h.run(until=3.0)
    assert (h.opened, h.closed) == (1, 1)
    assert h.server.connections == 1


def test_psycopg_pool_shrinks_one_idle_connection_per_max_idle():
    h = Harness(
        {"kind": "psycopg_pool", "min_size": 1, "max_size": 3, "max_idle": 10.0}, connect_time=0.01
    )
    for i in range(3):
        h.request(i, 0.0, 0.5)  # grows to 3
    h.run(until=9.0)
    assert h.server.connections == 3
    h.env.run(until=10.5)  # first period: connections were in use at the start -> none dropped
    h.env.run(until=40.5)
    assert h.server.connections == 1  # then one per period down to min_size


# ---------------------------------------------------------------------------
# asyncpg Pool
# ---------------------------------------------------------------------------
def test_asyncpg_lifo_reuses_one_hot_connection_and_connects_lazily():
    h = Harness({"kind": "asyncpg", "min_size": 1, "max_size": 3}, connect_time=0.01)
    for i in range(10):
        h.request(i, i * 0.1, 0.05)  # never concurrent
    h.run(until=5.0)
    assert h.opened == 0 and h.server.connections == 1  # the pre-opened one did everything
    h2 = Harness({"kind": "asyncpg", "min_size": 0, "max_size": 3}, connect_time=0.01)
    h2.request(0, 0.0, 0.05)
    h2.request(1, 0.0, 0.05)
    assert [g for _, _, g, _ in h2.run()] == pytest.approx([0.01, 0.01])


def test_asyncpg_max_queries_and_inactive_lifetime():
    h = Harness(
        {"kind": "asyncpg", "min_size": 1, "max_size": 1, "max_queries": 2}, connect_time=0.01
    )
    for i in range(5):
        h.request(i, i * 1.0, 0.1)
    h.run(until=10.0)
    # queries 1,2 on the first; closed; 3,4 on a new one; closed; 5 on a third
    assert (h.opened, h.closed) == (2, 2)
    h2 = Harness(
        {"kind": "asyncpg", "min_size": 1, "max_size": 1, "max_inactive_connection_lifetime": 1.0},
        connect_time=0.01,
    )
    h2.request(0, 0.0, 0.1)  # released at 0.1 -> closed at 1.1
    h2.request(1, 2.0, 0.1)  # reconnects lazily
    out = {i: got for i, _, got, _ in h2.run(until=2.5)}
    assert out[1] == pytest.approx(2.01)
    assert (h2.opened, h2.closed) == (1, 1)  # the second is closed at 3.1, after the end


def test_asyncpg_acquire_timeout_includes_the_lazy_connect():
    h = Harness(
        {"kind": "asyncpg", "min_size": 0, "max_size": 1, "timeout": 0.005}, connect_time=0.01
    )
    h.request(0, 0.0, 0.1)
    out = h.run()
    assert out[0][1].startswith("timeout") and out[0][2] == pytest.approx(0.005)
    assert h.server.connections == 0


# ---------------------------------------------------------------------------
# No pool, server limits, processor sharing
# ---------------------------------------------------------------------------
def test_no_pool_connects_every_time_and_server_refuses_beyond_max_connections():
    # Postgres decides late (after authentication) and counts attempts still
    # starting: three attempts at once for two slots, so whichever finishes
    # its startup first sees three slots taken and is refused.
    h = Harness({"kind": "none"}, connect_time=0.004, max_connections=2)
    for i in range(3):
        h.request(i, 0.0, 0.1)
    h.request(3, 1.0, 0.1)
    out = {i: o for i, o, _, _ in h.run()}
    assert out == {0: "ConnectionRefused", 1: "ok", 2: "ok", 3: "ok"}
    assert h.opened == 3 and h.closed == 3 and h.server.connections == 0
    assert h.server.starting == 0
    # Staggered attempts: the third starts while two are open and is refused.
    h = Harness({"kind": "none"}, connect_time=0.004, max_connections=2)
    for i in range(3):
        h.request(i, 0.01 * i, 0.1)
    out = {i: o for i, o, _, _ in h.run()}
    assert out == {0: "ok", 1: "ok", 2: "ConnectionRefused"}


def test_processor_sharing_by_hand():
    env = simpy.Environment()
    ps = ProcessorSharing(env, cores=1)
    done = {}

    def job(name, at, work):
        yield env.timeout(at)
        yield ps.run(work)
        done[name] = env.now

    env.process(job("a", 0.0, 1.0))
    env.process(job("b", 0.5, 1.0))
    env.process(job("c", 3.0, 0.2))
    env.run()
    # a alone for 0.5 s, then a and b at half speed: a ends at 1.5, b at 2.0.
    assert done == pytest.approx({"a": 1.5, "b": 2.0, "c": 3.2})


def test_processor_sharing_two_cores():
    env = simpy.Environment()
    ps = ProcessorSharing(env, cores=2)
    done = []

    def job(work):
        yield ps.run(work)
        done.append(env.now)

    for _ in range(4):
        env.process(job(1.0))
    env.run()
    assert done == pytest.approx([2.0] * 4)  # four jobs on two cores: all at half speed


def test_queuepool_model_is_used_for_sqlalchemy():
    h = Harness({"kind": "sqlalchemy"})
    assert isinstance(h.pool, QueuePoolModel)


def test_readme_rules_table_is_the_descriptors():
    """The README's table of pool rules is made from the kinds' descriptors, not by hand."""
    from pathlib import Path

    from simlib.pools import pool_kinds, rules_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert rules_table() in readme
    for key, kind in pool_kinds().items():
        assert kind.config.kind == key and kind.key == key
