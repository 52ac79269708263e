"""Finding the services a live run uses, in the contract's order.

1. connection strings in the environment: one variable per tier of every
   registered kind -- ``LABS_PG_PRIMARY``, ``LABS_PG_REPLICAS`` (comma separated),
   ``LABS_REDIS`` and ``LABS_PGBOUNCER`` -- e.g. ``docker compose up`` (compose.yaml);
2. servers started earlier with ``python -m labs services up`` (a state file in
   ``$LABS_STATE_DIR``, default ``~/.cache/dbperf-labs/``; :mod:`.cluster`);
3. otherwise throwaway local servers for the duration of one ``with`` block.

``services_for`` is the one entry point; its keywords are those the registered
kinds read (:mod:`labs.services.base`: ``replicas``, ``max_connections`` and
``replica_delay`` for Postgres, ``redis`` for Redis, ``pgbouncer`` -- true or a
scenario's ``[pgbouncer]`` -- for PgBouncer, ``prometheus`` for Prometheus)::

    with services_for(replicas=1, redis=True, max_connections=20) as svc:
        svc.topology                              # labs.topology.Topology
        svc.primary, svc.replicas, svc.redis      # DSNs / URL, from the topology
        svc.pgbouncer                             # through PgBouncer (pgbouncer=...)
        svc.can_configure                         # True only for throwaway servers
        svc.set_max_connections(50)               # restart with a new limit

Every route loops over the kinds' tiers instead of naming servers: a tier says
which variable names its servers, how one is checked, how many a run wants and
what to say when a route has too few; the run gets the first that many of each.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from labs.services import pgbouncer, postgres, prometheus
from labs.services.base import ServiceKind, Tier, kinds, resolve, slots
from labs.services.checks import env_problem, redact
from labs.services.cluster import (  # noqa: F401  (re-exported: callers use them from here)
    ENV_STATE_DIR,
    STATE_VERSION,
    LocalCluster,
    check_state_dir,
    missing_binaries,
    read_state,
    remove_state,
    state_entries,
    state_path,
    state_problems,
    state_servers,
    write_state,
)
from labs.services.common import ServiceError, signals_deferred, signals_raise
from labs.services.postgres import postgres_problem  # noqa: F401  (re-exported)
from labs.services.redis import redis_problem  # noqa: F401  (re-exported)
from labs.topology import Endpoint, Topology

if TYPE_CHECKING:  # for annotations only
    from simlib.pgbouncer import PgBouncerConfig
    from simlib.scenario import Scenario

log = logging.getLogger("labs.services")

T = TypeVar("T")


# ---------------------------------------------------------------------------
# What a run gets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    """Where the services are (``topology``), and whether this run may reconfigure them.

    ``source``: ``"env"``, ``"services-up"`` or ``"throwaway"``; ``cluster``: the
    local servers behind the topology (None for servers from the environment).
    """

    topology: Topology
    source: str
    cluster: LocalCluster | None = field(default=None, repr=False, compare=False)

    @property
    def primary(self) -> str:
        """The primary's DSN for the run."""
        return self.topology.primary.dsn

    @property
    def primary_admin(self) -> str:
        """Superuser DSN for monitoring and set-up: on labs' own servers it uses
        reserved slots, so it never takes one of the run's max_connections."""
        return self.topology.primary.admin_dsn

    @property
    def replicas(self) -> tuple[str, ...]:
        """The streaming replicas' DSNs, as many as asked for."""
        return tuple(e.dsn for e in self.topology.replicas)

    @property
    def redis(self) -> str | None:
        """The redis:// URL, when asked for."""
        return self.topology.cache.dsn if self.topology.cache else None

    @property
    def pgbouncer(self) -> str | None:
        """The DSN through PgBouncer to the primary's database, when asked for."""
        bouncer = self.topology.endpoint(pgbouncer.PGBOUNCER)
        return bouncer.dsn if bouncer else None

    @property
    def prometheus(self) -> str | None:
        """The Prometheus server's base URL, when asked for (``prometheus=True``)."""
        server = self.topology.endpoint(prometheus.PROMETHEUS)
        return server.dsn if server else None

    @property
    def can_configure(self) -> bool:
        """True when labs may restart the servers (max_connections, replica delay)."""
        return self.source == "throwaway" and self.cluster is not None

    def max_connections(self) -> int:
        """Connections the run's role may open on the primary (its connection limit)."""
        return postgres.connection_limit(self.primary)

    def server_max_connections(self) -> int:
        """The primary's raw ``max_connections`` setting."""
        return postgres.server_max_connections(self.primary)

    def replica_delay(self) -> float:
        """The first replica's ``recovery_min_apply_delay``, seconds (0 without replicas)."""
        return postgres.replica_delay(self.replicas[0]) if self.replicas else 0.0

    def set_max_connections(self, n: int) -> None:
        cluster = self._configurable("max_connections")
        postgres.set_max_connections(cluster.primary, cluster.replicas, n)

    def set_replica_delay(self, seconds: float) -> None:
        cluster = self._configurable("the replica delay")
        postgres.set_replica_delay(cluster.replicas, seconds)

    def _configurable(self, what: str) -> LocalCluster:
        if self.cluster is None or not self.can_configure:
            raise ServiceError(
                f"{what}: can only be changed on throwaway servers, got services from "
                f"{self.source}; unset the LABS_* variables or run `python -m labs services down`"
            )
        return self.cluster


def _first_per_tier(
    items: Iterable[tuple[ServiceKind[Any], Tier, T]], wants: Mapping[str, object]
) -> list[tuple[Tier, T]]:
    """Of each tier's items (in order), the first as many as ``wants`` asks for."""
    taken: Counter[Tier] = Counter()
    chosen = []
    for kind, tier, item in items:
        if taken[tier] < kind.count(tier, wants):
            taken[tier] += 1
            chosen.append((tier, item))
    return chosen


def _from_cluster(cluster: LocalCluster, source: str, wants: Mapping[str, object]) -> Services:
    items = [(m.kind, m.tier, m.endpoint) for m in cluster.listed()]
    chosen = _first_per_tier(items, wants)
    return Services(Topology.of(e for _, e in chosen), source, cluster)


def _shortfall(
    counts: Iterable[tuple[ServiceKind[Any], Tier, int]],
    wants: Mapping[str, object],
    template: Callable[[Tier], str],
    other: str = "",
) -> str | None:
    """The message for the first tier a route has fewer servers of than ``wants`` asks for."""
    for kind, tier, got in counts:
        n = kind.count(tier, wants)
        if got < n:
            return template(tier).format(var=tier.variable, name=tier.name, n=n, got=got,
                                         other=other)
    return None


# ---------------------------------------------------------------------------
# 1. The environment
# ---------------------------------------------------------------------------


class Named(NamedTuple):
    """The connection strings one tier's variable names."""

    kind: ServiceKind[Any]
    tier: Tier
    values: tuple[str, ...]


def env_variables() -> list[str]:
    """The variables that name servers of your own, one per tier of every kind."""
    return [tier.variable for _, tier in slots()]


def env_config(env: Mapping[str, str] | None = None) -> list[Named] | None:
    """What the LABS_* variables name, tier by tier; None when none is set."""
    env = os.environ if env is None else env
    named = []
    for kind, tier in slots():
        text = env.get(tier.variable, "").strip()
        parts = text.split(",") if tier.many else [text]
        named.append(Named(kind, tier, tuple(p.strip() for p in parts if p.strip())))
    return named if any(n.values for n in named) else None


def _env_short(cfg: list[Named], wants: Mapping[str, object]) -> str | None:
    """Why the variables name too few servers for ``wants`` (None: enough)."""
    other = next(n.tier.variable for n in cfg if n.values)
    counts = [(n.kind, n.tier, len(n.values)) for n in cfg]
    return _shortfall(counts, wants, lambda tier: tier.env_missing, other)


def from_env(env: Mapping[str, str] | None = None, **wants: object) -> Services | None:
    """The servers the LABS_* variables name, each checked; None when none is set."""
    return _from_env(resolve(wants), env)


def _from_env(wants: Mapping[str, object], env: Mapping[str, str] | None) -> Services | None:
    cfg = env_config(env)
    if cfg is None:
        return None
    short = _env_short(cfg, wants)
    if short:
        raise ServiceError(short)
    chosen = _first_per_tier(((n.kind, n.tier, dsn) for n in cfg for dsn in n.values), wants)
    for tier, dsn in chosen:
        _, line = env_problem(tier.variable, dsn, tier.probe)
        if line:
            raise ServiceError(line)
    return Services(Topology.of(Endpoint(dsn, role=tier.role) for tier, dsn in chosen), "env")


def _describe_env(cfg: list[Named]) -> dict[str, Any]:
    servers, problems = [], []
    short = _env_short(cfg, resolve({}))
    if short:
        problems.append(short)
    for named in cfg:
        tier = named.tier
        for dsn in named.values:
            problem, line = env_problem(tier.variable, dsn, tier.probe)
            servers.append({"role": tier.name, "variable": tier.variable, "dsn": redact(dsn),
                            "address": tier.probe.address(dsn), "answers": problem is None,
                            "problem": problem})
            if line:
                problems.append(line)
    return {"route": "env", "servers": servers, "ok": not problems, "problems": problems}


# ---------------------------------------------------------------------------
# 2. `python -m labs services up`
# ---------------------------------------------------------------------------


def from_state(**wants: object) -> Services | None:
    """The servers ``services up`` started, if they all answer; None when there are none."""
    wants = resolve(wants)
    doc = read_state()
    if doc is None:
        return None
    problems = state_problems(doc)
    if problems:
        log.warning(
            "labs: services from `python -m labs services up` are not usable (%s); "
            "starting throwaway servers (clean up with `python -m labs services down`)",
            "; ".join(problems),
        )
        return None
    have = Counter(tier for _, tier, _, entry in state_entries(doc) if entry)
    short = _shortfall([(k, t, have[t]) for k, t in slots()], wants, lambda t: t.state_missing)
    if short:
        raise ServiceError(short)
    return _from_cluster(LocalCluster.from_state(doc), "services-up", wants)


def _describe_state(doc: Mapping[str, Any]) -> dict[str, Any]:
    checked = state_servers(doc)
    return {
        "route": "services-up",
        "servers": [
            {key: s[key] for key in ("role", "dsn", "pid", "dir")}
            | {"answers": s["problem"] is None, "problem": s["problem"]}
            for s in checked if "dsn" in s
        ],
        "problems": [
            f"{s['name']}: {s['problem']}; restart them with `python -m labs services down` "
            "then `python -m labs services up`"
            for s in checked if s["problem"]
        ],
    }


# ---------------------------------------------------------------------------
# 3. Throwaway servers, and the entry points
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway(**wants: object) -> Iterator[Services]:
    """Start local servers for the block; stop them and delete their directories after.

    Cleans up after a normal exit, an exception, Ctrl-C (SIGINT), SIGTERM and
    SIGHUP; an ``atexit`` hook catches anything that slips past.
    """
    wants = resolve(wants)
    with signals_raise():
        cluster = LocalCluster.start(wants)
        try:
            yield _from_cluster(cluster, "throwaway", wants)
        finally:
            with signals_deferred():
                cluster.stop()


@contextlib.contextmanager
def services_for(**wants: object) -> Iterator[Services]:
    """The services one run uses, found in the contract's order (see the module doc).

    ``wants``: the registered kinds' keywords (``replicas``, ``redis``,
    ``max_connections``, ``replica_delay``, ``pgbouncer``).  ``max_connections`` and
    ``replica_delay`` are applied only to throwaway servers; for the others
    ``Services.can_configure`` is False and the caller can read what the servers
    use with ``.max_connections()`` / ``.replica_delay()``.
    """
    wants = resolve(wants)
    found = _from_env(wants, None) or from_state(**wants)
    if found is not None:
        yield found
        return
    with throwaway(**wants) as svc:
        yield svc


def requirements(scenario: Scenario) -> dict[str, object]:
    """What a scenario needs from the services, as ``services_for`` keywords.

    Each kind says its part: ``[replicas].count`` streaming replicas,
    ``database.max_connections`` and a replica delay equal to a constant
    ``[replicas].lag`` (other lag distributions: no delay is imposed) from
    Postgres; Redis when there is a ``[cache]``; PgBouncer with the settings of
    the ``[pgbouncer]``, when there is one.
    """
    return {key: value for kind in kinds() for key, value in kind.needs(scenario).items()}


def configure(scenario: Scenario, svc: Services) -> str | None:
    """Give the servers the scenario's ``max_connections``, replica lag and ``[pgbouncer]``;
    what differs, if any.

    Only throwaway servers can be reconfigured (a restart, or a reload for the
    delay); for servers from the environment or ``services up`` the returned
    note says what the run will differ in from the scenario.  PgBouncer is the
    exception: a running one takes the ``[pgbouncer]`` settings through its
    admin console whatever the route (:func:`.pgbouncer.apply_config`), so runs
    with different settings share one; when a PgBouncer of your own refuses
    them (its user is no admin), the note says so.
    """
    notes = []
    wanted = scenario.database.max_connections
    if svc.can_configure:
        svc.set_max_connections(wanted)
    elif svc.max_connections() != wanted:
        notes.append(f"the server allows {svc.max_connections()} connections, the scenario "
                     f"{wanted}; services from {svc.source} cannot be reconfigured")
    delay = requirements(scenario).get("replica_delay")
    if scenario.replicas is not None and isinstance(delay, float | int):
        if svc.can_configure:
            svc.set_replica_delay(float(delay))
        elif abs(svc.replica_delay() - delay) > 1e-3:
            notes.append(
                f"the replicas apply commits {svc.replica_delay():g} s late, the scenario's "
                f"lag is {delay:g} s; services from {svc.source} cannot be reconfigured")
    note = _configure_pgbouncer(scenario, svc)
    if note:
        notes.append(note)
    return "; ".join(notes) or None


def _configure_pgbouncer(scenario: Scenario, svc: Services) -> str | None:
    """Apply ``[pgbouncer]`` to the run's PgBouncer (see :func:`configure_pgbouncer`).

    A run straight to Postgres beside a PgBouncer of labs' own (a lesson's, a
    suite's) first has it close its idle servers: they are Postgres
    connections of the run's own user, and would take ``max_connections``
    slots the scenario gives its pools.
    """
    if scenario.pgbouncer is not None:
        return configure_pgbouncer(scenario.pgbouncer, svc)
    bouncer = svc.topology.endpoint(pgbouncer.PGBOUNCER)
    if bouncer is not None and svc.source != "env":
        pgbouncer.close_servers(bouncer.admin_dsn)
    return None


def configure_pgbouncer(config: PgBouncerConfig, svc: Services) -> str | None:
    """Give the run's PgBouncer ``config``, unless it already has those settings.

    A PgBouncer of labs' own knows what it was started (or last set) with: a
    throwaway one started for this scenario needs nothing, one started for a
    suite with the first scenario's settings needs the others'.  Returns a
    note when a PgBouncer of one's own (``LABS_PGBOUNCER``) refused them.
    """
    bouncer = svc.topology.endpoint(pgbouncer.PGBOUNCER)
    if bouncer is None:
        return None
    local = [s for s in (svc.cluster.servers(pgbouncer.PGBOUNCER) if svc.cluster else [])
             if isinstance(s, pgbouncer.PgBouncerServer)]
    if local and pgbouncer.ini_settings(local[0].config) == pgbouncer.ini_settings(config):
        return None
    try:
        pgbouncer.apply_config(bouncer.admin_dsn, config, local[0] if local else None)
    except ServiceError as e:
        if svc.source != "env":
            raise
        return f"{e}; the run uses that PgBouncer's own settings"
    return None


@contextlib.contextmanager
def services_for_scenario(scenario: Scenario) -> Iterator[Services]:
    """``services_for`` with what ``scenario`` needs (see :func:`requirements`)."""
    with services_for(**requirements(scenario)) as svc:
        yield svc


def describe(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``services status`` shows (a JSON document): the route and its servers."""
    out: dict[str, Any] = {"state_file": str(state_path())}
    cfg = env_config(env)
    if cfg is not None:
        return out | _describe_env(cfg)
    doc = read_state()
    if doc is not None:
        checked = _describe_state(doc)
        return out | checked | {"ok": not checked["problems"]}
    return out | {"route": "throwaway", "servers": [], "problems": [], "ok": True}
