"""Local servers as one unit, and the state file that lets them outlive a command.

A :class:`LocalCluster` is every server labs started for one run (throwaway) or for
``python -m labs services up``, whatever its kind: a list of
:class:`~labs.services.base.Member` s -- (kind, tier, server) -- in the order they
started.  Kinds start by ``rank`` (Redis first: it starts in a blink, so a broken
``redis-server`` shows before ``initdb`` runs; Postgres next, a primary and then
its replicas), and stop in the reverse order, so a replica goes before its
primary and a proxy before the database behind it.  A failure while starting
stops whatever had started, as a Ctrl-C or SIGTERM then does, so a fault never
leaves a server behind.

``services up`` records its cluster in a JSON state file (``$LABS_STATE_DIR``,
default ``~/.cache/dbperf-labs/services.json``) written atomically: ``version``,
``started`` and one key per tier (:attr:`Tier.state_key`: ``primary``,
``replicas``, ``redis``) holding that tier's server (a list for tiers of many),
as the server's ``to_state`` describes it.  A file of another version, or one
whose entries do not describe labs' own servers, is treated as no state, so
``services down`` and ``services up`` never fail on one; ``stop`` only ever
touches directories named like labs' own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labs.services.base import Member, ServiceKind, Tier, kinds, resolve, slots
from labs.services.common import (
    LocalServer,
    ServiceError,
    one_line,
    pid_alive,
    signals_deferred,
    unregister,
)
from labs.topology import CACHE, PRIMARY, REPLICA, Topology
from simlib.files import atomic_write_text

log = logging.getLogger("labs.services")

ENV_STATE_DIR = "LABS_STATE_DIR"
STATE_VERSION = 1  # bump when the layout changes: other versions read as no state


def missing_binaries(**include: bool) -> str | None:
    """What stops local servers from starting: the missing programs' error, or None.

    The same search :meth:`LocalCluster.start` makes (``LABS_PG_BINDIR`` / PATH /
    ``pg_config`` / ``/usr/lib/postgresql/*/bin``, ``LABS_REDIS_SERVER`` / PATH, ...),
    without starting anything; live tests skip with this reason.  Every kind is
    searched unless passed as false by name (``missing_binaries(redis=False)``),
    except the optional ones (PgBouncer), searched only when passed as true
    (``missing_binaries(pgbouncer=True)``): a machine without them still runs
    everything else.
    """
    unknown = sorted(set(include) - {kind.name for kind in kinds()})
    if unknown:
        raise TypeError(f"missing_binaries: unexpected keyword(s) {', '.join(unknown)}")
    try:
        for kind in kinds():
            if include.get(kind.name, not kind.optional):
                kind.find_binary()
    except ServiceError as exc:
        return str(exc)
    return None


@dataclass
class LocalCluster:
    """Servers labs started, of every kind, in the order they started."""

    members: list[Member] = field(default_factory=list)

    @classmethod
    def start(cls, wants: Mapping[str, object], *, detached: bool = False) -> LocalCluster:
        """Start what ``wants`` asks for; on any failure stop what was started and re-raise.

        ``wants``: ``services_for`` keywords; ``detached``: the servers outlive
        this process (``services up``; see :meth:`detach`).
        """
        wants = resolve(wants)
        chosen = [kind for kind in kinds() if kind.needed(wants)]
        for kind in chosen:
            kind.check(wants)
        # every program first: a missing one costs no start and no clean-up
        binaries = [(kind, kind.find_binary()) for kind in chosen]
        cluster = cls()
        try:
            for kind, binary in sorted(binaries, key=lambda pair: pair[0].rank):
                started = tuple(cluster.members)
                for tier, server in kind.start(wants, binary, detached=detached, started=started):
                    cluster.members.append(Member(kind, tier, server))
            return cluster
        except BaseException:
            with signals_deferred():
                cluster.stop()
            raise

    def stop(self) -> None:
        """Stop everything, newest first, and delete the directories."""
        for member in reversed(self.members):
            with contextlib.suppress(Exception):
                member.server.stop()
        self.members = []

    def detach(self) -> None:
        """Let the servers outlive this process (``services up``): no atexit stop."""
        for member in self.members:
            unregister(member.server)

    # -- what it holds -------------------------------------------------------

    def servers(self, role: str) -> list[LocalServer]:
        """The servers of one Topology role, in the order they started."""
        return [m.server for m in self.members if m.tier.role == role]

    def _first(self, role: str) -> LocalServer | None:
        found = self.servers(role)
        return found[0] if found else None

    @property
    def primary(self) -> LocalServer | None:
        return self._first(PRIMARY)

    @property
    def replicas(self) -> list[LocalServer]:
        return self.servers(REPLICA)

    @property
    def redis(self) -> LocalServer | None:
        return self._first(CACHE)

    def listed(self) -> list[Member]:
        """The members in listing order: kinds as registered, then their tiers."""
        order = {tier: i for i, (_, tier) in enumerate(slots())}
        return sorted(self.members, key=lambda m: order.get(m.tier, len(order)))

    def topology(self) -> Topology:
        """Every server as an Endpoint (needs a primary)."""
        return Topology.of(m.endpoint for m in self.listed())

    def addresses(self) -> list[str]:
        """Each server's DSN or URL, in listing order."""
        return [m.server.dsn for m in self.listed()]

    # -- the state file ------------------------------------------------------

    def to_state(self) -> dict[str, object]:
        doc: dict[str, object] = {"version": STATE_VERSION, "started": time.time()}
        listed = self.listed()
        for _, tier in slots():
            entries = [m.server.to_state() for m in listed if m.tier == tier]
            doc[tier.state_key] = entries if tier.many else (entries[0] if entries else None)
        return doc

    @classmethod
    def from_state(cls, doc: Mapping[str, Any]) -> LocalCluster:
        """The cluster a state file describes; ServiceError/KeyError/... if it is damaged."""
        members = [
            Member(kind, tier, kind.server.from_state(entry))
            for kind, tier, _, entry in state_entries(doc)
            if entry
        ]
        return cls(sorted(members, key=lambda m: m.kind.rank))  # in the order they started


Entry = tuple[ServiceKind[Any], Tier, str, Any]


def state_entries(doc: Mapping[str, Any]) -> list[Entry]:
    """(kind, tier, name, entry) of each server a state file names, in listing order.

    ``name`` is how messages call it (``primary``, ``replica 1``, ``redis``).  A
    tier every run needs (the primary) is there even without an entry (None).
    """
    out: list[Entry] = []
    everyone = resolve({})
    for kind, tier in slots():
        value = doc.get(tier.state_key)
        if tier.many:
            out += [(kind, tier, f"{tier.name} {i + 1}", e) for i, e in enumerate(value or [])]
        elif value or kind.count(tier, everyone):
            out.append((kind, tier, tier.name, value or None))
    return out


def state_dir() -> Path:
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dbperf-labs"


def state_path() -> Path:
    return state_dir() / "services.json"


def read_state() -> dict[str, Any] | None:
    """The state file of ``services up``; None when there is none, or it is unusable.

    A file that cannot be read, or whose entries do not describe labs' own
    servers, is passed over with a warning: ``services down`` then deletes it
    and ``services up`` writes a fresh one, instead of both failing on it.
    """
    try:
        doc = json.loads(state_path().read_text())
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or nothing can be
        return None
    except (OSError, ValueError) as e:
        log.warning("labs: ignoring unreadable %s (%s)", state_path(), one_line(e, 120))
        return None
    if not (isinstance(doc, dict) and doc.get("version") == STATE_VERSION):
        return None
    try:
        LocalCluster.from_state(doc)  # directories must be ours, ports numbers
        for kind, _, name, entry in state_entries(doc):
            key = kind.server.ADDRESS_KEY
            if entry and not isinstance(entry.get(key), str):
                raise ValueError(f"{name}: {key} must be a string, got {entry.get(key)!r}")
    except (ServiceError, LookupError, TypeError, ValueError, AttributeError) as e:
        why = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else one_line(e, 120)
        log.warning(
            "labs: ignoring damaged %s (%s); `python -m labs services down` deletes it",
            state_path(), why,
        )
        return None
    return doc


def _state_dir_error(e: OSError) -> ServiceError:
    return ServiceError(
        f"{ENV_STATE_DIR}: {state_dir()} must be a writable directory, got: "
        f"{e.strerror or e}; set {ENV_STATE_DIR} to one"
    )


def check_state_dir() -> None:
    """Raise ServiceError unless the state file can be written (creates the directory).

    ``services up`` can ask this before starting anything, rather than start
    servers it then cannot record.
    """
    path = state_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise _state_dir_error(e) from None


def write_state(cluster: LocalCluster) -> Path:
    path = state_path()
    try:
        atomic_write_text(path, json.dumps(cluster.to_state(), indent=2) + "\n")
    except OSError as e:
        raise _state_dir_error(e) from None
    return path


def remove_state() -> None:
    state_path().unlink(missing_ok=True)


def state_servers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each server of a state file, checked: name, role, dsn, pid, dir, problem."""
    servers: list[dict[str, Any]] = []
    for kind, tier, name, entry in state_entries(doc):
        if not entry:
            servers.append({"name": name, "role": tier.name, "problem": "missing"})
            continue
        dsn, pid = entry.get(kind.server.ADDRESS_KEY), entry.get("pid")
        problem = tier.probe.problem(dsn) if pid_alive(pid) else f"process {pid} is not running"
        servers.append({"name": name, "role": tier.name, "dsn": dsn, "pid": pid,
                        "dir": entry.get("dir"), "problem": problem})
    return servers


def state_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why the servers in a state file are not usable (empty list: all fine)."""
    return [f"{s['name']}: {s['problem']}" for s in state_servers(doc) if s["problem"]]
