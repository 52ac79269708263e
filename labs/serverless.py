"""Serverless live: environments created on demand, cold starts, connections left behind.

What simlib's ``[serverless]`` models (:mod:`simlib.serverless`), run for real
with psycopg2, the driver of most functions: each invocation (a request of the
open-loop schedule, on a worker thread) takes an *environment*, an object
that holds one connection and serves one invocation at a time:

* the warm idle environment idle the shortest time, if there is one;
* otherwise a new one, while fewer than ``concurrency_limit`` are alive: its
  cold start is a real ``time.sleep`` of a draw from simlib's ``cold_start``
  stream (in the order environments are created, as simlib draws), and its
  first use a real ``psycopg2.connect``;
* otherwise the invocation is throttled: it fails at once
  (``TooManyRequestsException``), an error.

``connection = "global"`` keeps the connection in the environment between
invocations; ``"per_invocation"`` connects and closes in each.  A reclaimer
thread ends environments idle for ``keep_warm`` the way a platform does: the
process is frozen and killed, so nothing closes its connection.  Here the
connection object is kept, open and untouched, until the run is over, so
Postgres holds the idle session as it would, and counts it against
``max_connections``.  Each record says whether its invocation began cold or
was throttled; the driver keeps how many environments were alive over time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2

from labs.drivers._psycopg2 import Statements, connect_kwargs, psycopg2_version
from labs.drivers.base import Driver
from labs.probes import step_average
from labs.records import CURRENT_RECORD, Record, RunContext
from simlib.scenario import Scenario
from simlib.streams import Streams

#: How often the reclaimer looks for environments idle past ``keep_warm``.
RECLAIM_PERIOD = 0.02


class Throttled(Exception):
    """An invocation beyond ``concurrency_limit``: the platform refuses it at once."""

    def __init__(self) -> None:
        super().__init__("TooManyRequestsException: Rate Exceeded (concurrency limit)")


class Environment:
    """One execution environment: its connection (global) and since when it is idle."""

    __slots__ = ("conn", "idle_since")

    def __init__(self) -> None:
        self.conn: Any = None
        self.idle_since = 0.0


class ServerlessDriver(Driver):
    """Invocations through environments made on demand (see the module doc)."""

    kind = "serverless"

    def __init__(self, scenario: Scenario, ctx: RunContext) -> None:
        super().__init__(scenario, ctx)
        config = scenario.serverless
        assert config is not None
        self.config = config
        self.limit = config.concurrency_limit
        self.statements = Statements(ctx)
        self._kwargs = connect_kwargs(ctx)
        self._cold_start = Streams(scenario.seed, 0).distribution("cold_start",
                                                                 config.cold_start)
        self._lock = threading.Lock()
        self.warm: list[Environment] = []  # idle, the last one idle on top
        self.alive = 0
        #: (run-relative time, environments alive) at every change
        self.alive_log: list[tuple[float, int]] = [(0.0, 0)]
        self.orphans: list[Any] = []  # connections of reclaimed environments, left open
        self._stop = threading.Event()
        self._reclaimer = threading.Thread(target=self._reclaim, name="labs-reclaimer",
                                           daemon=True)

    def open(self) -> None:
        self._reclaimer.start()

    def close(self) -> None:
        self._stop.set()
        if self._reclaimer.is_alive():
            self._reclaimer.join(timeout=5.0)
        for conn in [*self.orphans, *(e.conn for e in self.warm)]:
            if conn is not None:
                conn.close()

    def _changed(self, delta: int) -> None:
        self.alive += delta
        self.alive_log.append((self.ctx.now(), self.alive))

    def checkout(self) -> Any:
        rec = CURRENT_RECORD.get()
        pause = 0.0
        with self._lock:
            if self.warm:
                env, cold = self.warm.pop(), False
            elif self.alive < self.config.concurrency_limit:
                self._changed(+1)
                env, cold = Environment(), True
                pause = self._cold_start()
            else:
                if rec is not None:
                    rec.source = "throttled"
                raise Throttled()
        if cold:
            if rec is not None:
                rec.source = "cold"
            time.sleep(pause)  # the runtime's and the module's init
        if env.conn is None or env.conn.closed:
            env.conn = psycopg2.connect(self.ctx.dsn, **self._kwargs)
            env.conn.autocommit = True
        return env

    def execute(self, env: Any, rec: Record, write: bool | None) -> int | None:
        return self.statements.execute(env.conn, rec, write)

    def release(self, env: Any, ok: bool) -> None:
        if self.config.connection == "per_invocation" or not ok:
            env.conn.close()
            env.conn = None
        with self._lock:
            env.idle_since = time.perf_counter()
            self.warm.append(env)

    def _reclaim(self) -> None:
        keep = self.config.keep_warm
        while not self._stop.wait(RECLAIM_PERIOD):
            now = time.perf_counter()
            with self._lock:
                # The bottom of the stack has been idle longest.
                while self.warm and now - self.warm[0].idle_since >= keep:
                    env = self.warm.pop(0)
                    self._changed(-1)
                    if env.conn is not None and not env.conn.closed:
                        self.orphans.append(env.conn)  # frozen and killed: never closed

    def details(self) -> dict[str, object]:
        return {"limit": self.limit, "psycopg2": psycopg2_version(),
                "connection": self.config.connection, "orphaned": len(self.orphans),
                "environments_max": max(a for _, a in self.alive_log)}


def serverless_values(driver: ServerlessDriver, records: list[Record], start: float,
                      end: float) -> dict[str, float]:
    """``cold_start_rate``, ``throttle_rate`` and ``environments_mean`` over [start, end)."""
    inside = [r for r in records if start <= r.scheduled < end]
    n = len(inside)
    times = [t for t, _ in driver.alive_log]
    alive = [float(a) for _, a in driver.alive_log]
    return {
        "cold_start_rate": sum(r.source == "cold" for r in inside) / n if n else float("nan"),
        "throttle_rate": sum(r.source == "throttled" for r in inside) / n if n else float("nan"),
        "environments_mean": step_average(times, alive, start, end),
    }
