"""SQLAlchemy's ``QueuePool``, rule for rule (sqlalchemy/pool/impl.py and base.py).

* The pool starts empty and opens connections lazily.
* Checkout takes an idle connection if there is one (oldest first; newest
  first with ``use_lifo``).  Otherwise, while fewer than ``pool_size +
  max_overflow`` connections exist, it opens a new one at once ("overflow").
  At the limit it waits on the idle queue's ``threading.Condition`` up to
  ``pool_timeout`` and then raises ``TimeoutError: QueuePool limit of size N
  overflow M reached, connection timed out, timeout T``.
* The hand-off is not FIFO (:class:`~simlib.pools.base.NotifyQueue`): a
  return puts the connection in the queue and wakes the first waiter, but
  any thread that runs before it (the returning thread checking out again, a
  newcomer, a thread ahead of it for the GIL) takes the connection, and the
  waiter waits again at the back.  If a connection was *closed* meanwhile
  (a failed connect), the timed-out request opens one instead of failing,
  as ``_do_get`` does after ``queue.Empty``.
* ``pool_recycle``: a connection older than that is closed and reopened at
  checkout, so the request pays a connect.
* ``pool_pre_ping``: one round trip at checkout, except for a connection just
  opened (SQLAlchemy marks it "fresh" and skips the ping).
* Return: reset-on-return rolls back (one round trip); then the connection is
  put back in the idle queue, whose capacity is ``pool_size``; when it is full
  the returned connection is closed.  So under bursts the overflow connections
  are opened and closed again and again: "overflow churn".
* ``pool_size = 0`` means no limit at all: SQLAlchemy then sets
  ``max_overflow = -1`` and the idle queue is unbounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import simpy

from simlib.config import Rule, flag, integer, number
from simlib.database import Connection, ConnectionRefused
from simlib.distributions import check_number
from simlib.pools import base

INF = float("inf")


def _recycle(field: str, value: object) -> float:
    return check_number(
        field, value, "must be -1 (off) or a number > 0", lambda x: x == -1 or x > 0
    )


@dataclass(frozen=True, slots=True)
class QueuePoolConfig(base.PoolConfig):
    """SQLAlchemy's QueuePool (the default pool of ``create_engine``)."""

    kind: ClassVar[str] = "sqlalchemy"
    RULES: ClassVar[Mapping[str, Rule]] = {
        "pool_size": integer(">=", 0),
        "max_overflow": integer(">=", -1),
        "pool_timeout": number(">=", 0, inf=True),
        "pool_recycle": _recycle,
        "pool_pre_ping": flag,
        "use_lifo": flag,
        "reset_on_return": flag,
    }

    pool_size: int = 5  # 0 = no limit, as in SQLAlchemy
    max_overflow: int = 10  # -1 = unlimited overflow
    pool_timeout: float = 30.0  # inf = wait forever
    pool_recycle: float = -1.0  # -1 = never recycle
    pool_pre_ping: bool = False
    use_lifo: bool = False
    reset_on_return: bool = True  # rollback() on return: one more round trip

    def connection_limit(self) -> int | None:
        if self.pool_size == 0 or self.max_overflow == -1:
            return None  # SQLAlchemy: no limit at all
        return self.pool_size + self.max_overflow

    def checkout_wait(self) -> float:
        return self.pool_timeout

    def round_trips(self) -> base.RoundTrips:
        return base.RoundTrips(checkout=int(self.pool_pre_ping), release=int(self.reset_on_return))


class QueuePoolModel(base.PoolModel[QueuePoolConfig]):
    """QueuePool's checkout and return (see the module doc)."""

    #: A Condition waiter looks at the queue once more at its deadline.
    CANCEL_ON_TIMEOUT = False

    def setup(self) -> None:
        config = self.config
        limit = config.connection_limit()
        self.limit = INF if limit is None else limit
        self.idle_capacity = INF if config.pool_size == 0 else config.pool_size
        self.idle: deque[Connection] = deque()
        self.total = 0  # connections that exist or are being opened
        self.waiters = base.NotifyQueue(self.interpreter)
        self.take = self.idle.pop if config.use_lifo else self.idle.popleft
        self.recycle = config.pool_recycle
        self.timeout_message = (
            f"QueuePool limit of size {config.pool_size} overflow {config.max_overflow} "
            f"reached, connection timed out, timeout {config.pool_timeout:0.2f}"
        )

    def checkout(self, request: base.Waiting) -> base.Checkout:
        env = self.env
        if self.idle:
            conn = self.take()
        elif self.total < self.limit:
            conn = yield from self._open()
        else:
            # _do_get: at the limit, Queue.get(True, pool_timeout) on the
            # Condition; barging and re-waiting are in wait_until_idle.
            got = yield from self.wait_until_idle(
                request, self.waiters, self.idle, self.config.pool_timeout,
                cancel_on_timeout=self.CANCEL_ON_TIMEOUT,
            )
            if got:
                conn = self.take()
            elif self.total < self.limit:
                conn = yield from self._open()  # a connection was closed meanwhile
            else:
                raise base.PoolTimeout(self.timeout_message)
        # Checks made at checkout, in SQLAlchemy's order: a record invalidated
        # earlier (its connection found dead) or past pool_recycle reconnects,
        # then the pre-ping.
        if conn.closed or (self.recycle > 0 and env.now - conn.created > self.recycle):
            self.server.close(conn)
            self.total -= 1
            conn = yield from self._open()
        if conn.fresh:
            conn.fresh = False
        elif self.ping:
            yield from self.interpreter.compute(self.ping_cpu)
            yield from self.io(self.ping)
        return conn

    def _open(self) -> Generator[simpy.Event, Any, Connection]:
        self.total += 1
        try:
            conn = yield from self.connect()
        except ConnectionRefused:
            self.total -= 1
            raise
        return conn

    def release(self, conn: Connection) -> base.Release:
        # _do_return_conn: Queue.put(record, False), which notifies one waiter;
        # Full (pool_size idle already): close it.
        if len(self.idle) < self.idle_capacity:
            self.idle.append(conn)
            if self.waiters.live:
                self.waiters.notify()
        else:
            self.server.close(conn)
            self.total -= 1
        return
        yield  # a generator, so callers can ``yield from`` every pool alike

    def discard(self, conn: Connection) -> base.Release:
        # The reset fails, _finalize_fairy invalidates the record, and the
        # record goes back to the queue without a connection: its next
        # checkout reconnects (the ``conn.closed`` check above).
        return self.release(conn)


RULES = (
    "lazy open; idle taken FIFO (`use_lifo`: LIFO); opens overflow at once below "
    "`pool_size + max_overflow`; else waits on a `threading.Condition` up to `pool_timeout` "
    "(not FIFO: whoever runs first takes a returned connection, the woken waiter waits "
    "again at the back), then `QueuePool limit "
    "of size N overflow M reached, connection timed out, timeout T`; `pool_recycle` checked "
    "at checkout, as is a record invalidated by a dead connection; `pool_pre_ping` one "
    "round trip, skipped on a fresh connection; "
    "reset-on-return rollback, one round trip; returned connection closed when `pool_size` "
    "are idle (overflow churn); `pool_size = 0` = no limit"
)

KIND = base.PoolKind(
    key="sqlalchemy",
    config=QueuePoolConfig,
    model=QueuePoolModel,
    rules=RULES,
    source="sqlalchemy/pool/impl.py (QueuePool), sqlalchemy/pool/base.py",
    call="sqlalchemy.create_engine(URL, {args})",
)
