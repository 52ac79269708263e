"""Where a live run's servers are: one :class:`Endpoint` per server, one :class:`Topology` per run.

A scenario names tiers (a primary, streaming replicas, a Redis cache; PgBouncer and a
monitoring server are next); the services layer (:mod:`labs.services`) finds or starts
a server for each and hands the run a :class:`Topology`.  Everything downstream --
the executor, calibration, the probes that watch the servers -- reads its addresses
from here, so no connection string is passed around by hand.

An endpoint carries two addresses because a run uses a server in two ways: the
application connects with ``dsn`` (on labs' own Postgres, an ordinary role with
exactly the scenario's ``max_connections`` slots), and labs itself monitors and sets
up through ``admin_dsn`` (there a superuser in the reserved slots, so watching a run
never takes a slot from it).  For servers named in the environment both are the same.

The topology is open to new tiers: ``more`` holds endpoints of any other ``role``
(``endpoint("pgbouncer")``), so a tier added later needs no change here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: The roles the course's tiers use; a new tier brings its own.
PRIMARY, REPLICA, CACHE = "primary", "replica", "cache"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server: what the application connects to, what labs monitors through, and its role."""

    dsn: str
    admin_dsn: str = ""  # empty: the same as ``dsn``
    role: str = PRIMARY

    def __post_init__(self) -> None:
        if not self.admin_dsn:
            object.__setattr__(self, "admin_dsn", self.dsn)


@dataclass(frozen=True, slots=True)
class Topology:
    """The servers of one run, by tier."""

    primary: Endpoint
    replicas: tuple[Endpoint, ...] = ()
    cache: Endpoint | None = None
    more: tuple[Endpoint, ...] = field(default=())

    @classmethod
    def single(cls, dsn: str, admin_dsn: str = "") -> Topology:
        """Just a primary (tests and benchmarks that bring their own server)."""
        return cls(Endpoint(dsn, admin_dsn))

    @classmethod
    def of(cls, endpoints: Iterable[Endpoint]) -> Topology:
        """The endpoints sorted into tiers by role: the first primary, every replica,
        the first cache, and every endpoint of another role in ``more``.

        ValueError when there is no primary (every run has one).
        """
        found = list(endpoints)
        primaries = [e for e in found if e.role == PRIMARY]
        if not primaries:
            raise ValueError("a topology needs a primary endpoint, got none")
        caches = [e for e in found if e.role == CACHE]
        return cls(
            primaries[0],
            tuple(e for e in found if e.role == REPLICA),
            caches[0] if caches else None,
            tuple(e for e in found if e.role not in (PRIMARY, REPLICA, CACHE)),
        )

    def servers(self) -> tuple[Endpoint, ...]:
        """Every endpoint, tier by tier: primary, replicas, cache, then the others."""
        return (self.primary, *self.replicas, *((self.cache,) if self.cache else ()), *self.more)

    def endpoints(self, role: str) -> tuple[Endpoint, ...]:
        """Every endpoint with ``role``, in order."""
        return tuple(e for e in self.servers() if e.role == role)

    def endpoint(self, role: str) -> Endpoint | None:
        """The first endpoint with ``role``, or None when the run has no such tier."""
        found = self.endpoints(role)
        return found[0] if found else None

    def with_replicas(self, count: int) -> Topology:
        """The same servers with only the first ``count`` replicas (what a scenario uses)."""
        return Topology(self.primary, self.replicas[:count], self.cache, self.more)
