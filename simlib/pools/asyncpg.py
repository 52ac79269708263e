"""asyncpg's ``Pool`` (asyncpg/pool.py).

* The pool has exactly ``max_size`` *holders* kept on a LIFO stack.  A holder
  may or may not have a live connection.  Creating the pool connects the
  ``min_size`` holders on top of the stack; the others connect lazily, the
  first time they are acquired.
* ``acquire(timeout=None)`` takes from an ``asyncio.LifoQueue`` of holders
  that prefers connected ones (``_PoolConnectionHolderQueue._get``: the most
  recently released holder with a live connection, else the top), so a few
  hot connections do most of the work.  When all are taken it waits on the
  queue: ``asyncio.Queue``'s hand-off, where a release wakes the first
  getter but a task that runs before it takes the holder, and the woken
  getter waits again at the back (:class:`~simlib.pools.base.NotifyQueue`;
  asyncpg issue 1247).  With a timeout, ``compat.wait_for`` (inline: asyncpg's
  backport of 3.12's ``asyncio.timeout`` form) bounds the whole acquire,
  *including* a lazy connect; on expiry it raises ``asyncio.TimeoutError``.
* Release is ``asyncio.shield(ch.release())``: a task of its own resets the
  connection (one round trip for the reset query) and pushes the holder
  back, and the releasing task resumes two loop turns after the push, behind
  the getter it woke.  A connection that has served ``max_queries``
  queries is closed instead, and its holder reconnects on its next acquire.
* A connection idle for ``max_inactive_connection_lifetime`` seconds is
  closed (its holder stays and reconnects on demand); this applies to every
  connection, ``min_size`` is only the initial fill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from simlib.config import Rule, flag, integer, number
from simlib.database import Connection, ConnectionRefused
from simlib.distributions import ScenarioError
from simlib.pools import base

INF = math.inf


@dataclass(frozen=True, slots=True)
class AsyncpgPoolConfig(base.PoolConfig):
    """asyncpg's ``create_pool``."""

    kind: ClassVar[str] = "asyncpg"
    RULES: ClassVar[Mapping[str, Rule]] = {
        "min_size": integer(">=", 0),
        "max_size": integer(">=", 1),
        "timeout": number(">", 0, inf=True),
        "max_inactive_connection_lifetime": number(">=", 0, inf=True),
        "max_queries": integer(">=", 1),
        "reset_on_return": flag,
    }

    min_size: int = 10
    max_size: int = 10
    timeout: float = math.inf  # acquire(timeout=None) waits forever
    max_inactive_connection_lifetime: float = 300.0  # 0 disables
    max_queries: int = 50_000
    reset_on_return: bool = True

    def check(self, field: str, given: Mapping[str, object]) -> None:
        if self.max_size >= self.min_size:
            return
        # Blame the parameter the user wrote: max_size if given, else min_size.
        if "max_size" in given:
            raise ScenarioError(
                f"{field}.max_size", f"must be an integer >= min_size ({self.min_size})",
                self.max_size,
            )
        raise ScenarioError(
            f"{field}.min_size", f"must be an integer <= max_size ({self.max_size})",
            self.min_size,
        )

    def connection_limit(self) -> int:
        return self.max_size

    def checkout_wait(self) -> float:
        return self.timeout

    def round_trips(self) -> base.RoundTrips:
        return base.RoundTrips(release=int(self.reset_on_return))  # the reset query


class Holder:
    """A slot of the pool, with or without a connection."""

    __slots__ = ("conn", "released_at")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.released_at = 0.0


class AsyncpgPoolModel(base.PoolModel[AsyncpgPoolConfig]):
    """asyncpg's holders, acquire and release (see the module doc)."""

    def setup(self) -> None:
        config = self.config
        self.stack: list[Holder] = [Holder() for _ in range(config.max_size)]
        self.waiters = base.NotifyQueue(self.interpreter)
        self.in_use: dict[int, Holder] = {}  # id(connection) -> its holder
        lifetime = config.max_inactive_connection_lifetime
        self.inactive_limit = lifetime if lifetime > 0 else INF

    def start(self) -> None:
        # The top of the stack is its end: connect the last min_size holders.
        for holder in self.stack[len(self.stack) - self.config.min_size :]:
            holder.conn = self.server.preopen()

    def checkout(self, request: base.Waiting) -> base.Checkout:
        env = self.env
        timeout = self.config.timeout
        deadline = env.now + timeout
        # compat.wait_for awaits _acquire_impl() inline on every Python this
        # project runs: asyncio.wait_for from 3.12, and before that asyncpg's
        # own backport (_asyncio_compat.wait_for: ``async with
        # timeout(...)``), not the task-wrapping asyncio.wait_for of 3.11.
        # So a task that asks while a released holder waits for its woken
        # getter takes it, with or without a timeout.
        if not self.stack:
            # await self._queue.get() inside wait_for(timeout): the asyncio.Queue
            # hand-off (a task that runs first takes a released holder).
            got = yield from self.wait_until_idle(
                request, self.waiters, self.stack, timeout, cancel_on_timeout=True
            )
            if not got:
                raise base.PoolTimeout("asyncio.TimeoutError: pool acquire timed out")
        holder = self._get()
        if holder.conn is None:
            delay = self.server.begin_connect()
            if env.now + delay > deadline:
                # wait_for cancels the connect at the deadline.
                yield from self.io(deadline - env.now)
                self.server.abandon_connect()
                self._push(holder)
                raise base.PoolTimeout("asyncio.TimeoutError: pool acquire timed out")
            yield from self.io(delay)
            try:
                holder.conn = self.server.finish_connect()
            except ConnectionRefused:
                self._push(holder)
                raise
        conn = holder.conn
        conn.queries += 1
        self.in_use[id(conn)] = holder
        conn.on_lost = lambda: self._lost(conn)
        return conn

    def _lost(self, conn: Connection) -> None:
        """The server ended a checked-out session: asyncpg gives its holder back at once.

        ``Protocol.connection_lost`` -> ``Connection._cleanup`` ->
        ``PoolConnectionHolder._release_on_close``: the holder goes back to
        the queue without a connection (the later ``release`` does nothing).
        """
        holder = self.in_use.pop(id(conn), None)
        if holder is not None:
            holder.conn = None
            self._push(holder)

    def _get(self) -> Holder:
        """``_PoolConnectionHolderQueue._get``: the newest connected holder, else the top."""
        stack = self.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i].conn is not None:
                return stack.pop(i)
        return stack.pop()

    def reset_delay(self, conn: Connection) -> float:
        # None on the request's path: release() resets, in the shielded task.
        return 0.0

    def release(self, conn: Connection) -> base.Release:
        # Pool.release is ``await asyncio.shield(ch.release(timeout))``: the
        # reset and the push run in a task of their own, which starts one
        # turn of the loop later; the releasing task resumes only when that
        # task's done callback has set the shield's outer future, two turns
        # after the push.  So the getter the push wakes runs first: the
        # releaser cannot take its own holder back, but tasks already ready
        # (other releasers about to ask again) can.
        interpreter = self.interpreter
        yield from interpreter.next_turn()
        # The reset query; a connection past max_queries is closed without one.
        if self.reset and conn.queries < self.config.max_queries and not conn.closed:
            yield from interpreter.compute(self.reset_cpu)
            yield from self.io(self.reset)
        self._give_back(conn)
        yield from interpreter.next_turn()
        yield from interpreter.next_turn()

    def _give_back(self, conn: Connection) -> None:
        """``PoolConnectionHolder.release``: closed after ``max_queries``, else idle again."""
        holder = self.in_use.pop(id(conn))
        if conn.queries >= self.config.max_queries:
            self.server.close(conn)
            holder.conn = None
        elif self.inactive_limit != INF:
            holder.released_at = released = self.env.now
            timer = self.env.timeout(self.inactive_limit)
            timer.callbacks.append(lambda _t: self._maybe_deactivate(holder, released))
        self._push(holder)

    def discard(self, conn: Connection) -> base.Release:
        # Already given back when the session was lost (_lost); release()
        # of a connection whose holder is back does nothing.
        holder = self.in_use.pop(id(conn), None)
        if holder is not None:
            holder.conn = None
            self._push(holder)
        return
        yield

    def _push(self, holder: Holder) -> None:
        # queue.put_nowait(holder): wakes the first getter, who must still run.
        self.stack.append(holder)
        if self.waiters.live:
            self.waiters.notify()

    def _maybe_deactivate(self, holder: Holder, released: float) -> None:
        # Only if the holder has stayed idle since that release.
        conn = holder.conn
        if conn is not None and holder.released_at == released and id(conn) not in self.in_use:
            self.server.close(conn)
            holder.conn = None


KIND = base.PoolKind(
    key="asyncpg",
    config=AsyncpgPoolConfig,
    model=AsyncpgPoolModel,
    rules=(
        "`max_size` holders on a LIFO stack, connected ones first, `min_size` connected "
        "at creation, the rest lazily; `asyncio.Queue` hand-off (a task that runs first "
        "takes a released holder; the woken one waits again at the back); `timeout` "
        "bounds waiting *and* the lazy connect; reset query on release; "
        "closed after `max_queries`; closed after `max_inactive_connection_lifetime` idle"
    ),
    source="asyncpg/pool.py (Pool, PoolConnectionHolder)",
    asynchronous=True,
    call="await asyncpg.create_pool(URL, {args})",
)
