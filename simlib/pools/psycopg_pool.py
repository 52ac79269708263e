"""psycopg 3's ``psycopg_pool.ConnectionPool`` (psycopg_pool/pool.py).

* Opening the pool starts ``num_workers`` background threads and has them
  open ``min_size`` connections; we take those as open before traffic starts.
* ``getconn()`` takes the oldest idle connection.  With none idle, it refuses
  at once with ``TooManyRequests`` if ``max_waiting`` requests already wait,
  otherwise it joins a FIFO queue and waits up to ``timeout`` (then
  ``PoolTimeout: couldn't get a connection after T sec``).  Joining the queue
  asks the pool to grow: if fewer than ``max_size`` connections exist and no
  growth is under way, a background worker opens *one* connection; when it is
  ready it goes to the first waiter, and if requests are still waiting the
  worker opens the next.  Growth is deliberately one connection at a time.
* Every connection gets an expiry date ``max_lifetime`` ahead, shortened by a
  random 0-5% so connections do not all expire together.  An expired
  connection is closed when it is returned and a worker opens a replacement.
* Every ``max_idle`` seconds, if the pool has more than ``min_size``
  connections and some were idle the whole period, one idle connection is
  closed.
* A failed background connect is retried after 1 s, then 2 s, 4 s, ... (±10%),
  for up to ``reconnect_timeout`` (5 minutes).
* The ``pool.connection()`` context commits on exit: one round trip.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import simpy

from simlib.config import Rule, flag, integer, number
from simlib.database import Connection, ConnectionRefused
from simlib.distributions import MISSING, ScenarioError
from simlib.pools import base

RECONNECT_TIMEOUT = 300.0
INITIAL_DELAY, DELAY_JITTER, DELAY_BACKOFF = 1.0, 0.1, 2.0


@dataclass(frozen=True, slots=True)
class PsycopgPoolConfig(base.PoolConfig):
    """psycopg 3's ``psycopg_pool.ConnectionPool``."""

    kind: ClassVar[str] = "psycopg_pool"
    RULES: ClassVar[Mapping[str, Rule]] = {
        "min_size": integer(">=", 0),
        "max_size": integer(">=", 1),
        "timeout": number(">", 0, inf=True),
        "max_lifetime": number(">", 0, inf=True),
        "max_idle": number(">", 0, inf=True),
        "max_waiting": integer(">=", 0),
        "num_workers": integer(">=", 1),
        "reset_on_return": flag,
    }

    min_size: int = 4
    max_size: int | None = None  # None = same as min_size
    timeout: float = 30.0
    max_lifetime: float = 3600.0
    max_idle: float = 600.0
    max_waiting: int = 0  # 0 = unlimited
    num_workers: int = 3
    reset_on_return: bool = True

    @property
    def effective_max_size(self) -> int:
        return self.min_size if self.max_size is None else self.max_size

    def check(self, field: str, given: Mapping[str, object]) -> None:
        if self.max_size is None and self.min_size == 0:
            # psycopg_pool: "if min_size is 0 max_size must be greater or than 0"
            raise ScenarioError(
                f"{field}.max_size", "must be given (an integer >= 1) when min_size is 0", MISSING
            )
        if self.max_size is not None and self.max_size < self.min_size:
            raise ScenarioError(
                f"{field}.max_size",
                f"must be an integer >= min_size ({self.min_size})",
                self.max_size,
            )

    def connection_limit(self) -> int:
        return self.effective_max_size

    def checkout_wait(self) -> float:
        return self.timeout

    def round_trips(self) -> base.RoundTrips:
        return base.RoundTrips(release=int(self.reset_on_return))  # the context's COMMIT


class PsycopgPoolModel(base.PoolModel[PsycopgPoolConfig]):
    """ConnectionPool's getconn, putconn and background workers (see the module doc)."""

    def setup(self) -> None:
        config = self.config
        self.max_size = config.effective_max_size
        self.idle: deque[Connection] = deque()
        self.nconns = config.min_size
        self.nconns_min = config.min_size
        self.growing = False
        self.waiters = base.WaitQueue(self.interpreter)
        self.workers = simpy.Resource(self.env, capacity=config.num_workers)

    def start(self) -> None:
        for _ in range(self.config.min_size):
            conn = self.server.preopen()
            self._set_expiry(conn)
            self.idle.append(conn)
        if self.config.max_idle != math.inf:
            self.env.process(self._shrink_periodically())

    def _set_expiry(self, conn: Connection) -> None:
        jitter = 1.0 - 0.05 * self.uniform()
        conn.expire_at = self.env.now + self.config.max_lifetime * jitter

    # -- getconn ----------------------------------------------------------
    def checkout(self, request: base.Waiting) -> base.Checkout:
        if self.idle:
            idle = self.idle.popleft()
            if len(self.idle) < self.nconns_min:
                self.nconns_min = len(self.idle)
            return idle
        max_waiting = self.config.max_waiting
        if max_waiting and len(self.waiters) >= max_waiting:
            raise base.PoolTimeout(
                f"TooManyRequests: the pool has already {max_waiting} requests waiting"
            )
        request.waited = True
        event = self.waiters.wait(self.config.timeout)
        self._maybe_grow()
        # WaitingClient.wait: the connection is ours once assigned, but the
        # thread still has to run again to return it.
        conn: Connection | None = yield from self.interpreter.parked(event)
        if conn is None:
            raise base.PoolTimeout(
                f"PoolTimeout: couldn't get a connection after {self.config.timeout} sec"
            )
        return conn

    def _maybe_grow(self) -> None:
        if self.nconns >= self.max_size or self.growing:
            return
        self.nconns += 1
        self.growing = True
        self.env.process(self._add_connection(growing=True))

    # -- background work --------------------------------------------------
    def _add_connection(self, growing: bool = False) -> Generator[simpy.Event, Any, None]:
        env = self.env
        started = env.now
        delay = INITIAL_DELAY
        while True:
            with self.workers.request() as worker:
                yield worker
                try:
                    conn = yield from self.server.connect()
                    break
                except ConnectionRefused:
                    pass
            if env.now - started >= RECONNECT_TIMEOUT:
                # psycopg_pool gives up on this connection (and, as in the
                # library, leaves the "growing" flag set).
                self.nconns -= 1
                return
            yield env.timeout(delay * (1 + DELAY_JITTER * (2 * self.uniform() - 1)))
            delay *= DELAY_BACKOFF
        self._set_expiry(conn)
        self._add_to_pool(conn)
        if growing:
            if self.nconns < self.max_size and len(self.waiters):
                self.nconns += 1
                env.process(self._add_connection(growing=True))
            else:
                self.growing = False

    def _add_to_pool(self, conn: Connection) -> None:
        if not self.waiters.hand(conn):
            self.idle.append(conn)

    def _shrink_periodically(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(self.config.max_idle)
            nconns_min, self.nconns_min = self.nconns_min, len(self.idle)
            if self.nconns > self.config.min_size and nconns_min > 0:
                conn = self.idle.popleft()
                self.nconns -= 1
                self.nconns_min -= 1
                self.server.close(conn)

    # -- putconn ----------------------------------------------------------
    def release(self, conn: Connection) -> base.Release:
        if conn.expire_at <= self.env.now:
            self.server.close(conn)
            self.env.process(self._add_connection())
        else:
            self._add_to_pool(conn)
        return
        yield


    def discard(self, conn: Connection) -> base.Release:
        # putconn finds it BAD: it is thrown away and a worker opens another.
        self.server.close(conn)
        self.env.process(self._add_connection())
        return
        yield


KIND = base.PoolKind(
    key="psycopg_pool",
    config=PsycopgPoolConfig,
    model=PsycopgPoolModel,
    rules=(
        "`min_size` opened in the background; FIFO idle; waiters FIFO up to `timeout` "
        "(`PoolTimeout`), `max_waiting` (`TooManyRequests`); growth one connection at a time "
        "by a background worker (`num_workers`); `max_lifetime` with −5…0% jitter, replaced "
        "on return; one idle connection closed per `max_idle` above `min_size`; reconnect "
        "back-off 1 s ×2"
    ),
    source="psycopg_pool/pool.py (ConnectionPool)",
    call="psycopg_pool.ConnectionPool(URL, {args})",
)
