"""Kinds of service: what the services layer needs to know about Postgres, Redis, ...

A live run uses servers of a few kinds -- Postgres (a primary and streaming
replicas), Redis, PgBouncer in front of the primary; a Prometheus server is
next.  The services layer (:mod:`labs.services.discovery`) finds them in the same
three places whatever their kind (connection strings in the environment, the
servers ``python -m labs services up`` started, throwaway local servers), so what
differs between kinds is put in one class per kind, :class:`ServiceKind`, and
each kind's module registers one instance with :func:`register_kind`.  The layer
loops over :func:`kinds` (and their tiers, :func:`slots`) wherever it handles
servers: starting, stopping, recording, checking, listing.

A kind's servers form one or more tiers (:class:`Tier`) of a run's
:class:`~labs.topology.Topology`: Postgres has the ``primary`` and ``replica``
tiers, Redis the ``cache`` tier.  A tier says what the layer does with each of its
servers without knowing the kind: which environment variable names existing ones,
how such a string is checked (a :class:`~labs.services.checks.Probe`), under which
key the state file keeps them, and what to say when a route has too few.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from labs.services.checks import Probe
from labs.services.common import LocalServer
from labs.topology import CACHE, PRIMARY, REPLICA, Endpoint

if TYPE_CHECKING:  # for annotations only: the scenario model is simlib's
    from simlib.scenario import Scenario

B = TypeVar("B")  # what a kind's ``find_binary`` returns and its ``start`` takes


@dataclass(frozen=True)
class Tier:
    """One tier of a kind's servers, as every route of the services layer handles it.

    The message templates are filled in with ``var`` (the variable), ``name``,
    ``n`` (how many servers the run needs), ``got`` (how many the route has) and
    ``other`` (the first other LABS_* variable that is set).
    """

    role: str  # the Topology role of its endpoints: "primary", "replica", "cache", ...
    name: str  # one server, in status tables, state files and messages: "replica"
    variable: str  # the environment variable naming existing servers
    probe: Probe  # how a connection string in ``variable`` is checked
    many: bool = False  # several servers: comma separated in ``variable``, a list in state
    #: the variable names fewer servers than the run needs
    env_missing: str = "{var}: the scenario needs {n} {name} server(s), got {got}; set {var}"
    #: `services up` started fewer servers than the run needs
    state_missing: str = (
        "{name}: `labs services up` started {got}, the scenario needs {n}; run "
        "`python -m labs services down` then `python -m labs services up`"
    )

    @property
    def state_key(self) -> str:
        """Its key in the state file: ``primary``, ``replicas``, ``redis``."""
        return self.name + "s" if self.many else self.name


class ServiceKind(ABC, Generic[B]):
    """One kind of server: how to find, start, name and check its servers.

    Subclasses set the class attributes ``name`` (how ``missing_binaries``
    keywords and messages call the kind), ``tiers`` (its servers' tiers, in the
    order status tables list them), ``keywords`` (the ``services_for`` keywords it
    reads, with their defaults), ``server`` (its :class:`LocalServer` subclass,
    which also restores its servers from a state file) and optionally ``rank``
    (lower starts first) and ``optional`` (only runs that ask for it need its
    program -- PgBouncer -- so :func:`~labs.services.cluster.missing_binaries`
    looks for it only when asked by name), and implement

    - :meth:`find_binary`: the program(s) its local servers run, or a one-line
      :class:`ServiceError` naming the package to install (with the
      ``LABS_*`` variable that overrides the search, e.g. ``LABS_PG_BINDIR``);
    - :meth:`count`: how many servers of a tier a run asks for;
    - :meth:`start`: start local servers for a run, yielding each as it is up;
    - :meth:`needs`: what a scenario asks of this kind, as ``services_for``
      keywords (what :func:`~labs.services.discovery.requirements` returns);

    and may override :meth:`check` (refuse bad keywords before any program is
    looked for).  Everything else -- the environment route, the state file of
    ``services up``, ``services status`` and ``down``, the run's ``Topology``,
    cleanup on exit and signals -- comes from the services layer.

    Adding a kind (PgBouncer, say) is one module plus its registration:
    ``labs/services/pgbouncer.py`` with a ``LocalServer`` subclass for the
    ``pgbouncer`` process (``PREFIX``, ``KIND``, ``LOG``, ``PIDFILE``, ``SCHEME``,
    ``shutdown``, and its own fields in ``to_state`` / ``fields_from_state``) and
    a ``ServiceKind`` subclass with ``name = "pgbouncer"``, one
    ``Tier(role="pgbouncer", name="pgbouncer", variable="LABS_PGBOUNCER",
    probe=...)``, ``keywords = {"pgbouncer": False}``,
    a ``rank`` after Postgres (its :meth:`start` finds the primary it fronts in
    ``started``) and ``needs`` reading the scenario's ``[pgbouncer]``; the module
    ends with ``register_kind(PgBouncer())`` and is imported by
    ``labs/services/__init__.py``.  Its endpoints then reach runs as
    ``topology.endpoint("pgbouncer")`` (:attr:`Topology.more`).
    """

    name: ClassVar[str]
    tiers: ClassVar[tuple[Tier, ...]]
    keywords: ClassVar[Mapping[str, object]]
    server: ClassVar[type[LocalServer]]
    rank: ClassVar[int] = 50
    optional: ClassVar[bool] = False

    @abstractmethod
    def find_binary(self) -> B:
        """The program(s) to start local servers with; ServiceError if missing."""

    @abstractmethod
    def count(self, tier: Tier, wants: Mapping[str, object]) -> int:
        """How many servers of ``tier`` a run with these keywords uses."""

    def check(self, wants: Mapping[str, object]) -> None:
        """Raise ServiceError when ``wants`` cannot be started (before anything is)."""
        for tier in self.tiers:
            self.count(tier, wants)

    @abstractmethod
    def start(
        self, wants: Mapping[str, object], binary: B, *, detached: bool,
        started: Sequence[Member],
    ) -> Iterator[tuple[Tier, LocalServer]]:
        """Start the servers ``wants`` asks for, yielding each as soon as it runs.

        ``started``: the servers of kinds that started before (lower ``rank``);
        ``detached``: the servers must outlive this process (``services up``).
        A server that fails to start is stopped before the error propagates;
        the ones yielded already are the caller's to stop.
        """

    @abstractmethod
    def needs(self, scenario: Scenario) -> dict[str, object]:
        """What ``scenario`` asks of this kind, as ``services_for`` keywords."""

    def needed(self, wants: Mapping[str, object]) -> bool:
        """Whether a run with these keywords uses any server of this kind."""
        return any(self.count(tier, wants) for tier in self.tiers)


@dataclass(frozen=True)
class Member:
    """One local server of a cluster: its kind, its tier and the server."""

    kind: ServiceKind[Any]
    tier: Tier
    server: LocalServer

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.server.dsn, self.server.admin_dsn, self.tier.role)


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------

_KINDS: list[ServiceKind[Any]] = []


def register_kind(kind: ServiceKind[Any]) -> ServiceKind[Any]:
    """Make ``kind`` known to the services layer (replacing a kind of the same name)."""
    others = [k for k in _KINDS if k.name != kind.name]
    clash = set(kind.keywords) & {w for k in others for w in k.keywords}
    if clash:
        raise ValueError(f"{kind.name}: keywords {sorted(clash)} are another kind's")
    if len(others) == len(_KINDS):
        _KINDS.append(kind)
    else:
        _KINDS[[k.name for k in _KINDS].index(kind.name)] = kind
    return kind


#: the listing order of tiers, as a Topology lists its endpoints; other roles follow
_ROLE_ORDER = (PRIMARY, REPLICA, CACHE)


def _listing_key(kind: ServiceKind[Any]) -> int:
    role = kind.tiers[0].role
    return _ROLE_ORDER.index(role) if role in _ROLE_ORDER else len(_ROLE_ORDER)


def kinds() -> tuple[ServiceKind[Any], ...]:
    """The registered kinds in listing order: the Topology's (primary, replica, cache),
    then kinds of other roles in the order they registered -- whatever the order of
    the imports that registered them."""
    return tuple(sorted(_KINDS, key=_listing_key))


def slots() -> list[tuple[ServiceKind[Any], Tier]]:
    """Every tier of every kind, in listing order."""
    return [(kind, tier) for kind in kinds() for tier in kind.tiers]


def resolve(wants: Mapping[str, object]) -> dict[str, object]:
    """``wants`` with every kind's defaults filled in.

    A keyword no kind reads is a mistake in the caller, reported as Python
    reports an unexpected keyword argument (TypeError).
    """
    defaults = {key: value for kind in kinds() for key, value in kind.keywords.items()}
    unknown = sorted(set(wants) - set(defaults))
    if unknown:
        raise TypeError(f"services: unexpected keyword(s) {', '.join(unknown)}; "
                        f"known: {', '.join(defaults)}")
    return defaults | dict(wants)
