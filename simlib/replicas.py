"""Streaming read replicas: who sees which write when, and where reads go.

What it models, and which real behaviour it follows (the scenario's ``[replicas]``):

* **Replication lag.**  Every write commits on the primary; each replica
  makes it visible ``lag`` seconds later, a fresh draw of the ``lag``
  distribution per commit and replica.  This is Postgres streaming
  replication as ``recovery_min_apply_delay`` shapes it: the standby
  applies a *commit* record no earlier than the primary's commit timestamp
  plus the delay, so a constant ``lag`` of 0.2 is the 200 ms measured on the
  course's machine (shared/reference-facts.md).  A standby replays WAL in
  order, so a commit never becomes visible before an earlier one: with a
  random lag the visible time is ``max(commit + lag, previous visible time)``
  on that replica.
* **Versions.**  The data is a version number per key: the count of writes
  to it committed on the primary.  A read on a replica returns the newest
  version visible there when its query starts; a read on the primary returns
  the newest committed.  The request path (:mod:`simlib.access`) calls a read
  *stale* when it returns an older version than the newest committed on the
  primary when the read began (the contract's ``stale_read_ratio``).
* **Connections.**  Each replica is its own :class:`~simlib.database.DatabaseServer`
  with the scenario's ``[database]`` settings, and the application holds one
  pool per replica with the scenario's ``[pool]`` settings, as an
  application does with one SQLAlchemy engine (so one pool) per database URL.
  Writes always use the primary's pool.
* **Routing** (``route_reads``): ``"primary"`` sends every read to the
  primary; ``"replicas"`` sends each read to a replica picked uniformly at
  random (stream ``routing``), as the router examples of Django and
  SQLAlchemy's docs do with ``random.choice``.  Random rather than round
  robin because a random split of Poisson arrivals is again Poisson, so each
  replica stays an M/G/c queue that the pool theory describes; round robin
  would give each replica smoother (Erlang) arrivals.  ``"read_your_writes"``
  sends a client's reads to the primary for ``ryw_window`` seconds after its
  own last write committed, and to a random replica otherwise (the "sticky
  primary after write" pattern, e.g. a session flag or cookie).  A *client*
  is a closed workload's loop; in an open workload each request comes from
  one of ``workload.clients`` users picked uniformly at random (stream
  ``clients``), a stand-in for a site's logged-in users.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import simpy

from simlib.config import Rule, Section, choice, integer, number
from simlib.database import Server
from simlib.distributions import Constant, Distribution, parse_distribution
from simlib.pools.base import PoolModel
from simlib.request import Backend


@dataclass(frozen=True, slots=True)
class Replicas(Section):
    """The scenario's ``[replicas]``: streaming replicas that see the primary's commits late.

    For ``read_your_writes`` a "client" is a closed workload's loop; in an
    open workload each request comes from one of ``workload.clients`` users,
    picked uniformly at random.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {
        "count": integer(">=", 1),
        "lag": parse_distribution,
        "route_reads": choice("replicas", "primary", "read_your_writes"),
        "ryw_window": number(">=", 0),
    }

    count: int = 1
    lag: Distribution = Constant(0.2)
    route_reads: Literal["replicas", "primary", "read_your_writes"] = "replicas"
    ryw_window: float = 1.0



class Replica:
    """One standby: its server, the application's pool for it, and what it has applied."""

    __slots__ = ("index", "backend", "_visible", "_pending", "_last_apply")

    def __init__(self, index: int, server: Server, pool: PoolModel[Any]) -> None:
        self.index = index
        self.backend = Backend(pool, server)
        self._visible: dict[int, int] = {}  # key -> version applied here
        # key -> (visible_at, version) not applied yet, in commit order.  Kept
        # lazily: a key's queue is only looked at when the key is read or
        # written, which saves a simulated event per commit and replica.
        self._pending: dict[int, deque[tuple[float, int]]] = {}
        self._last_apply = 0.0

    @property
    def server(self) -> Server:
        return self.backend.server

    @property
    def pool(self) -> PoolModel[Any]:
        return self.backend.pool

    def replicate(self, key: int, version: int, now: float, lag: float) -> None:
        """The primary committed ``version`` of ``key`` at ``now``; it shows here after ``lag``."""
        # WAL is replayed in order: never before an earlier commit.
        at = max(now + lag, self._last_apply)
        self._last_apply = at
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = deque()
        else:
            self._apply(key, queue, now)
        queue.append((at, version))

    def version(self, key: int, now: float) -> int:
        """The version of ``key`` a query starting ``now`` on this replica sees."""
        queue = self._pending.get(key)
        if queue:
            self._apply(key, queue, now)
        return self._visible.get(key, 0)

    def _apply(self, key: int, queue: deque[tuple[float, int]], now: float) -> None:
        while queue and queue[0][0] <= now:
            self._visible[key] = queue.popleft()[1]


class ReplicaSet:
    """All replicas, the lag they apply, and the routing rule for reads."""

    def __init__(
        self,
        env: simpy.Environment,
        config: Replicas,
        replicas: Sequence[Replica],
        lag: Callable[[], float],
        uniform: Callable[[], float],
    ) -> None:
        self.env = env
        self.config = config
        self.replicas = list(replicas)
        self._lag = lag
        self._uniform = uniform
        self._mode = config.route_reads
        self._window = config.ryw_window
        self._last_write: dict[int, float] = {}  # client -> commit time of its last write

    @property
    def needs_clients(self) -> bool:
        return self._mode == "read_your_writes"

    def start(self) -> None:
        for replica in self.replicas:
            replica.pool.start()

    def committed(self, key: int, version: int, client: int) -> None:
        """A write of ``client`` committed on the primary now: ship it to every replica."""
        now = self.env.now
        for replica in self.replicas:
            replica.replicate(key, version, now, self._lag())
        if self._mode == "read_your_writes":
            self._last_write[client] = now

    def route(self, client: int) -> Replica | None:
        """Where a read of ``client`` goes now: a replica, or None for the primary."""
        mode = self._mode
        if mode == "primary":
            return None
        if mode == "read_your_writes":
            wrote = self._last_write.get(client)
            if wrote is not None and self.env.now - wrote < self._window:
                return None
        n = len(self.replicas)
        return self.replicas[min(int(self._uniform() * n), n - 1)]
