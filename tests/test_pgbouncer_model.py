"""simlib.pgbouncer rule by rule, against PgBouncer 1.18's own source.

Each test drives the model directly with SimPy processes (a client logs in,
asks for a server, holds it, releases it) and checks one rule of
``src/objects.c`` or ``src/janitor.c``, quoted in the test's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import pytest
import simpy

from simlib.config import Database
from simlib.database import Connection, DatabaseServer
from simlib.distributions import Constant
from simlib.metrics import Recorder
from simlib.pgbouncer import JANITOR_PERIOD, ClientRefused, PgBouncer, PgBouncerConfig


class Harness:
    """A primary, a PgBouncer in front, and clients that run transactions through it."""

    def __init__(self, connect: float = 0.0, max_connections: int = 100,
                 **settings: object) -> None:
        self.env = env = simpy.Environment()
        self.recorder = recorder = Recorder(env, 0.0, 1e9)
        recorder.count_tiers(pgbouncer=True)
        database = Database(connect_time=Constant(connect), network_rtt=0.0,
                            max_connections=max_connections)
        self.primary = DatabaseServer(env, database, lambda: connect, recorder,
                                      cpu_bound=False, direct=False)
        self.config = PgBouncerConfig.parse("pgbouncer", {"network_rtt": 0.0,
                                                           "connect_time": 0.0, **settings})
        self.bouncer = PgBouncer(env, self.config, self.primary, lambda: 0.0, recorder,
                                 lambda: 0.0)
        self.log: list[tuple[str, int, float]] = []  # (what, client, when)

    def client(self, i: int, start: float, hold: float, transactions: int = 1
               ) -> Generator[simpy.Event, Any, None]:
        env, bouncer = self.env, self.bouncer
        yield env.timeout(start)
        conn = yield from bouncer.connect()
        for _ in range(transactions):
            wait = bouncer.link(conn, env.now)
            if wait is not None and not (yield wait):
                self.log.append(("timeout", i, env.now))
                return
            self.log.append(("linked", i, env.now))
            yield env.timeout(hold)
            bouncer.statement_done(conn)
            bouncer.transaction_done(conn)
        bouncer.close(conn)

    def start(self, *clients: tuple[float, float]) -> None:
        for i, (start, hold) in enumerate(clients):
            self.env.process(self.client(i, start, hold))

    def linked(self) -> dict[int, float]:
        return {i: t for what, i, t in self.log if what == "linked"}


def test_waiting_clients_are_served_first_come_first_served() -> None:
    """``per_loop_activate`` walks ``waiting_client_list`` in order: FIFO."""
    h = Harness(default_pool_size=1, pool_mode="transaction")
    h.start((0.0, 1.0), (0.1, 1.0), (0.2, 1.0), (0.3, 1.0))
    h.env.run(until=10)
    linked = h.linked()
    assert [linked[i] for i in range(4)] == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_only_one_server_login_at_a_time() -> None:
    """``launch_new_connection``: "Allow only a single connection attempt at a time"."""
    h = Harness(connect=0.01, default_pool_size=5, pool_mode="transaction")
    h.start(*[(0.0, 1.0)] * 5)
    h.env.run(until=0.5)
    # Five clients wait at once, but the servers arrive one connect time apart.
    assert sorted(h.linked().values()) == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])


def test_idle_servers_are_reused_lifo_unless_round_robin() -> None:
    """``release_server`` puts a server at the head of the idle list; round robin, the tail."""
    for round_robin, freed_at in ((False, 3.0), (True, 1.0)):
        h = Harness(default_pool_size=3, pool_mode="transaction",
                    server_round_robin=round_robin)
        h.start((0.0, 1.0), (0.0, 2.0), (0.0, 3.0))  # three servers, freed at 1, 2, 3
        h.env.run(until=4)
        idle_since = dict(h.bouncer.idle_since)
        # The next client gets the last one freed (LIFO), or the first (round robin).
        assert idle_since[h.bouncer._take_idle()] == freed_at


def test_reserve_pool_opens_after_the_first_waiter_waited_reserve_pool_timeout() -> None:
    """Past ``default_pool_size`` a launch needs the first waiter to have waited the timeout."""
    h = Harness(default_pool_size=1, reserve_pool_size=1, reserve_pool_timeout=0.5,
                pool_mode="transaction")
    h.start((0.0, 10.0), (0.1, 10.0), (0.2, 10.0))
    h.env.run(until=5)
    linked = h.linked()
    assert linked[0] == 0.0
    assert linked[1] == pytest.approx(0.6)  # waited from 0.1 for the 0.5 s timeout
    assert 2 not in linked  # the reserve holds one server only
    assert h.bouncer.servers == 2


def test_reserve_pool_is_never_used_with_a_zero_timeout() -> None:
    """``if (cf_res_pool_timeout && pool_res_pool_size(pool))``: timeout 0 turns it off."""
    h = Harness(default_pool_size=1, reserve_pool_size=5, reserve_pool_timeout=0.0,
                pool_mode="transaction")
    h.start((0.0, 10.0), (0.1, 10.0))
    h.env.run(until=5)
    assert 1 not in h.linked() and h.bouncer.servers == 1


def test_query_wait_timeout_fires_on_the_janitors_ticks() -> None:
    """``pool_client_maint`` runs every 1/3 s and disconnects waiters older than the timeout."""
    h = Harness(default_pool_size=1, query_wait_timeout=1.0, pool_mode="transaction")
    h.start((0.0, 100.0), (0.05, 1.0))
    h.env.run(until=5)
    (_, _, when), = [e for e in h.log if e[0] == "timeout"]
    waited = when - 0.05
    assert 1.0 < waited <= 1.0 + JANITOR_PERIOD + 1e-9
    # The janitor's ticks fall on multiples of 1/3 s (phase 0 here).
    assert (when / JANITOR_PERIOD) == pytest.approx(round(when / JANITOR_PERIOD))


def test_a_refused_server_login_waits_server_login_retry() -> None:
    """``if (now - pool->last_connect_time < cf_server_login_retry) return;`` after a failure."""
    h = Harness(default_pool_size=2, max_connections=1, server_login_retry=2.0,
                pool_mode="transaction")
    # Something else holds Postgres's only slot until t = 3.
    other = h.primary.preopen()
    h.env.timeout(3.0).callbacks.append(lambda _e: h.primary.close(other))
    h.start((0.0, 1.0))
    h.env.run(until=10)
    # Tried at 0 (refused), then at the first janitor tick at or after 2 s (refused:
    # still full), then at the first tick at or after 4 s.
    assert h.linked()[0] == pytest.approx(4.0, abs=JANITOR_PERIOD + 1e-9)
    assert h.recorder.tiers.server_refused == 2


def test_max_client_conn_refuses_one_more_login() -> None:
    """``no more connections allowed (max_client_conn)``."""
    h = Harness(max_client_conn=2)
    outcomes: list[str] = []

    def login() -> Generator[simpy.Event, Any, None]:
        try:
            yield from h.bouncer.connect()
            outcomes.append("ok")
        except ClientRefused as error:
            outcomes.append(error.message)

    for _ in range(3):
        h.env.process(login())
    h.env.run(until=1)
    assert outcomes == ["ok", "ok", "no more connections allowed (max_client_conn)"]


def test_session_mode_pins_a_server_until_the_client_disconnects() -> None:
    """Session mode: released at disconnect, after ``server_reset_query`` (one round trip)."""
    h = Harness(default_pool_size=1, pool_mode="session")
    env, bouncer = h.env, h.bouncer
    conns: list[Connection] = []

    def first() -> Generator[simpy.Event, Any, None]:
        conn = yield from bouncer.connect()
        conns.append(conn)
        for n in range(3):  # three transactions, one server throughout
            wait = bouncer.link(conn, env.now)
            if n == 0 and wait is not None:
                yield wait  # the first one waits for the server's login
            else:
                assert wait is None  # still linked: nothing to wait for
            yield env.timeout(0.1)
            bouncer.transaction_done(conn)
        yield env.timeout(1.0)
        bouncer.close(conn)

    env.process(first())
    h.env.process(h.client(1, 0.05, 0.1))
    env.run(until=5)
    assert h.linked()[1] == pytest.approx(1.3)  # only when the first disconnected


@pytest.mark.parametrize(("mode", "expected"), [("statement", 0.5), ("transaction", 1.0)])
def test_statement_and_transaction_modes_release_at_their_points(
    mode: str, expected: float
) -> None:
    """Statement mode: after each statement; transaction mode: at the transaction's end."""
    h = Harness(default_pool_size=1, pool_mode=mode)
    env, bouncer = h.env, h.bouncer

    def first() -> Generator[simpy.Event, Any, None]:
        conn = yield from bouncer.connect()
        wait = bouncer.link(conn, env.now)
        if wait is not None:
            yield wait
        yield env.timeout(0.5)  # the statement
        bouncer.statement_done(conn)
        yield env.timeout(0.5)  # the client's Python, then COMMIT
        bouncer.transaction_done(conn)

    env.process(first())
    env.process(h.client(1, 0.1, 0.1))
    env.run(until=5)
    assert h.linked()[1] == pytest.approx(expected)


def test_idle_servers_close_after_server_idle_timeout_but_not_below_min_pool_size() -> None:
    """``check_unused_servers``: idle > server_idle_timeout, unless at ``min_pool_size``."""
    h = Harness(default_pool_size=4, min_pool_size=1, server_idle_timeout=2.0,
                pool_mode="transaction")
    h.start(*[(0.0, 1.0)] * 4)
    h.env.run(until=1.5)
    assert h.bouncer.servers == 4
    h.env.run(until=3.0 + JANITOR_PERIOD + 1e-6)
    # Idle since 1.0, past 2 s of idleness by the tick after 3.0: three close, one stays.
    assert h.bouncer.servers == 1


def test_min_pool_size_opens_one_server_per_janitor_tick_once_a_client_is_connected() -> None:
    """``check_pool_size`` launches for ``min_pool_size`` while ``pool_client_count > 0``."""
    h = Harness(default_pool_size=5, min_pool_size=3, pool_mode="transaction")
    h.env.run(until=2.0)
    assert h.bouncer.servers == 0  # no client yet
    h.env.process(h.bouncer.connect())
    h.env.run(until=2.0 + 3 * JANITOR_PERIOD + 1e-6)
    assert h.bouncer.servers == 3


def test_server_lifetime_closes_on_release_spaced_by_lifetime_over_pool_size() -> None:
    """``life_over``: past ``server_lifetime``, and at most one close per lifetime / pool size."""
    h = Harness(default_pool_size=2, server_lifetime=10.0, server_idle_timeout=0,
                pool_mode="transaction")
    for t in range(0, 30):  # two clients keep both servers busy, transaction after transaction
        h.env.process(h.client(2 * t, float(t), 0.9))
        h.env.process(h.client(2 * t + 1, float(t), 0.9))
    h.env.run(until=30)
    # Servers opened at 0 are past their life at ~10.9 (the first release after
    # 10); the second may close only 10/2 = 5 s after the first.
    assert h.recorder.tiers.server_opened is not None and h.recorder.tiers.server_opened >= 4
    opened = h.recorder.tiers.server_opened
    assert opened <= 2 + math.ceil(30 / 5)


def test_transaction_time_counts_the_wait_for_a_server() -> None:
    """``handle_client_work`` sets ``xact_start`` before ``find_server``: SHOW STATS's
    ``total_xact_time`` has each transaction's wait for a server in it."""
    h = Harness(default_pool_size=1, pool_mode="transaction")
    h.start((0.0, 1.0), (0.25, 1.0), (0.5, 1.0))
    h.env.run(until=10)
    # Each holds its server 1 s; they waited 0, 0.75 and 1.5 s.
    xacts = h.recorder.tiers.pgbouncer_xacts
    waits = h.recorder.tiers.pgbouncer_waits
    assert xacts == pytest.approx([1.0, 1.75, 2.5])
    assert waits == pytest.approx([0.0, 0.75, 1.5])
    metrics = h.recorder.tiers.metrics(10.0, 3)
    assert metrics["pgbouncer_xact_mean_ms"] - metrics["pgbouncer_wait_mean_ms"] == \
        pytest.approx(1000.0)
