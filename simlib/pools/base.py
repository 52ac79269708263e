"""What every pool model shares: the interface, the wait queue, and pool errors.

A pool model answers two questions for a request:

* ``checkout(request)``: a generator (use with ``yield from``) that returns a
  :class:`~simlib.database.Connection` once the request has one in hand, or
  raises :class:`PoolTimeout` (no connection within the library's rules) or
  :class:`~simlib.database.ConnectionRefused` (the server said no);
* ``release(conn)``: a generator that gives the connection back, following the
  library's rules for keeping or closing it.

``reset_delay(conn)`` tells how long resetting the connection on return takes
(the ``ROLLBACK``/``COMMIT`` round trip).  The request pays it right after its
query, in the same timeout, which keeps one simulated request down to very few
events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

import simpy

from simlib.database import Connection, DatabaseServer
from simlib.metrics import Recorder


class PoolTimeout(Exception):
    """The request got no connection under the pool's rules (timed out, or exhausted)."""


class WaitQueue:
    """Requests waiting for a connection, served first come first served.

    Each waiter is a SimPy event.  It succeeds with the connection (or the
    asyncpg holder) handed to it, or with ``None`` when its deadline passes
    first.  A timed-out waiter stays in the deque and is skipped when its turn
    comes; removing it from the middle would cost O(n) for nothing.
    """

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._queue: deque[simpy.Event] = deque()
        self.live = 0  # waiters still waiting

    def __len__(self) -> int:
        return self.live

    def wait(self, timeout: float) -> simpy.Event:
        event = self.env.event()
        self._queue.append(event)
        self.live += 1
        if timeout != float("inf"):
            timer = self.env.timeout(timeout)
            timer.callbacks.append(lambda _t: self._expire(event))
        return event

    def _expire(self, event: simpy.Event) -> None:
        if not event.triggered:
            self.live -= 1
            event.succeed(None)

    def hand(self, item: Any) -> bool:
        """Give ``item`` to the longest-waiting live waiter; False if none waits."""
        queue = self._queue
        while queue:
            event = queue.popleft()
            if not event.triggered:
                self.live -= 1
                event.succeed(item)
                return True
        return False


class PoolModel:
    """Base class: holds the environment, the server and the recorder."""

    kind = "base"

    def __init__(self, env: simpy.Environment, server: DatabaseServer, recorder: Recorder) -> None:
        self.env = env
        self.server = server
        self.recorder = recorder

    def start(self) -> None:
        """Open the connections the library opens before the service starts."""

    def checkout(self, request: Any) -> Generator[simpy.Event, Any, Connection]:
        raise NotImplementedError

    def reset_delay(self, conn: Connection) -> float:
        return 0.0

    def release(self, conn: Connection) -> Generator[simpy.Event, Any, None]:
        raise NotImplementedError
