"""Scenario files: reading, checking and changing them.

A scenario is one TOML file describing a workload, the connection pool in front
of the database, the database itself and, optionally, a cache and read
replicas (see shared/scenario-contract.md for the format).  ``load_scenario``
reads a file, applies ``--set KEY=VALUE`` overrides and returns a ``Scenario``:
a tree of frozen dataclasses that the simulator can trust without checking
anything again.

Every check happens here, once.  A mistake in a file becomes a ``ScenarioError``
whose message is a single line naming the field, what is allowed and what was
found, e.g. ``pool.pool_size: must be an integer >= 0, got -3``.  The parser is
table driven: each section is a :class:`~simlib.config.Section` dataclass with
a dict from field name to a small "rule" function that checks one value and
converts it (see :mod:`simlib.config`).  Fields a file leaves out are simply
not passed to the dataclass, so the defaults live in one place, the dataclass
definitions.

Where the sections live: the ones every scenario has in :mod:`simlib.config`;
``[pool]`` in the module of its library (:mod:`simlib.pools`, which finds the
libraries itself, so ``pool.kind`` accepts whatever kinds exist); ``[cache]``
in :mod:`simlib.cache`; ``[replicas]`` in :mod:`simlib.replicas`.  A new tier
(a ``[pgbouncer]``, a ``[fleet]``) brings its section in its own module and
registers it here: one field of :class:`Scenario` and one entry of its ``RULES``.

Pool parameters keep each library's own names and defaults (SQLAlchemy's
``pool_size``, psycopg2's ``minconn``, asyncpg's ``max_inactive_connection_lifetime``
...), so a setting can be copied between a real application and a scenario.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from simlib.cache import Cache
from simlib.config import (
    Client,
    Database,
    Host,
    Popularity,
    Query,
    Rule,
    Section,
    Workload,
    integer,
    name,
)
from simlib.distributions import ScenarioError, check_integer, one_of, subfield
from simlib.fleet import Fleet
from simlib.pgbouncer import PgBouncerConfig
from simlib.pools import PoolConfig, pool_kinds
from simlib.replicas import Replicas
from simlib.serverless import Serverless

__all__ = [
    "POOL_KINDS",
    "Cache",
    "Client",
    "Database",
    "Fleet",
    "Host",
    "PgBouncerConfig",
    "PoolConfig",
    "Popularity",
    "Query",
    "Replicas",
    "Scenario",
    "ScenarioError",
    "Serverless",
    "Workload",
    "apply_override",
    "load_scenario",
    "parse_assignment",
    "parse_scenario",
]

#: ``pool.kind`` -> its configuration class, for every known pool library.
POOL_KINDS: dict[str, type[PoolConfig]] = {key: k.config for key, k in pool_kinds().items()}


def _replications(field: str, value: object) -> int:
    return check_integer(
        field, value, "must be an integer between 1 and 1000", lambda x: 1 <= x <= 1000
    )


def _pool(field: str, table: object) -> PoolConfig:
    """The [pool] table: ``kind`` picks the library, and so the parameters."""
    if not isinstance(table, Mapping):
        raise ScenarioError(field, "must be a table", table)
    kind = table.get("kind", "sqlalchemy")
    if not isinstance(kind, str) or kind not in POOL_KINDS:
        raise ScenarioError(f"{field}.kind", one_of(tuple(POOL_KINDS)), kind)
    params = {key: value for key, value in table.items() if key != "kind"}
    return POOL_KINDS[kind].parse(field, params)


@dataclass(frozen=True, slots=True)
class Scenario(Section):
    """One complete, validated scenario."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "name": name,
        "seed": integer(">=", 0),
        "replications": _replications,
        "workload": Workload.parse,
        "query": Query.parse,
        "pool": _pool,
        "database": Database.parse,
        "client": Client.parse,
        "host": Host.parse,
        "cache": Cache.parse,
        "replicas": Replicas.parse,
        "fleet": Fleet.parse,
        "pgbouncer": PgBouncerConfig.parse,
        "serverless": Serverless.parse,
    }

    name: str
    seed: int = 0
    replications: int = 5
    workload: Workload = Workload()
    query: Query = Query()
    pool: PoolConfig = POOL_KINDS["sqlalchemy"]()
    database: Database = Database()
    client: Client = Client()
    host: Host = Host()
    cache: Cache | None = None  # None = no cache
    replicas: Replicas | None = None  # None = primary only
    fleet: Fleet | None = None  # None = one application process
    pgbouncer: PgBouncerConfig | None = None  # None = the pools connect to Postgres
    serverless: Serverless | None = None  # None = long-lived processes

    def check(self, field: str, given: Mapping[str, object]) -> None:
        """Combinations of tiers that cannot be, or are not modelled: one line each."""
        many = "fleet" if self.fleet is not None else "serverless" if self.serverless else None
        if self.fleet is not None and self.serverless is not None:
            raise ScenarioError("serverless", "cannot be combined with [fleet]: a serverless "
                                "scenario's processes are its environments; remove one")
        if many is not None and self.keyed:
            raise ScenarioError(many, "is not modelled with [cache], [replicas] or "
                                "workload.write_fraction > 0 yet; remove one or the other")
        if self.pgbouncer is not None and self.replicas is not None:
            raise ScenarioError("pgbouncer", "fronts the primary only; it is not modelled "
                                "with [replicas] yet; remove one or the other")
        if self.serverless is not None:
            self._check_serverless()

    def _check_serverless(self) -> None:
        if self.workload.kind != "open":
            raise ScenarioError("serverless", "needs an open workload (invocations arrive on "
                                "their own: workload.kind = \"open\")", self.workload.kind)
        try:
            default = type(self.pool)()
        except TypeError:  # a kind with required parameters (psycopg2's minconn, maxconn)
            raise ScenarioError(
                "pool.kind", "[serverless] environments hold one connection each, not a "
                "pool: use a kind without required parameters (\"none\" for psycopg2.connect)",
                self.pool.kind) from None
        changed = [k for k, v in self.pool.to_dict().items() if default.to_dict().get(k) != v]
        if changed:
            raise ScenarioError(
                f"pool.{changed[0]}", "not used with [serverless]: each environment holds one "
                "connection (serverless.connection), so [pool] takes only kind",
                getattr(self.pool, changed[0]))

    @property
    def keyed(self) -> bool:
        """True when requests take the keyed path (keys, versions, a cache, replicas).

        The one place this is decided: a cache, replicas or writes make *which*
        key a request touches, and which version of it comes back, matter.
        Both executors follow it (simlib.access, labs.access).
        """
        return self.workload.write_fraction > 0 or self.cache is not None or (
            self.replicas is not None
        )

    def to_dict(self) -> dict[str, object]:
        """The scenario as plain nested dicts, in the scenario file's form.

        ``parse_scenario(s.to_dict()) == s`` always holds.
        """
        data: dict[str, object] = {
            "name": self.name,
            "seed": self.seed,
            "replications": self.replications,
            "workload": self.workload.to_dict(),
            "query": self.query.to_dict(),
            "pool": self.pool.to_dict(),
            "database": self.database.to_dict(),
        }
        if self.client != Client():
            # Left out when free, so scenario files without [client] stay as written.
            data["client"] = self.client.to_dict()
        if self.host != Host():
            data["host"] = self.host.to_dict()
        if self.cache is not None:
            data["cache"] = self.cache.to_dict()
        if self.replicas is not None:
            data["replicas"] = self.replicas.to_dict()
        for tier in ("fleet", "pgbouncer", "serverless"):
            section = getattr(self, tier)
            if section is not None:
                data[tier] = section.to_dict()
        return data

    def with_overrides(self, assignments: Sequence[str]) -> Scenario:
        """A new scenario with ``KEY=VALUE`` strings applied, as by ``--set``."""
        return self._with([parse_assignment(a) for a in assignments])

    def with_values(self, values: Mapping[str, object]) -> Scenario:
        """A new scenario with dotted keys set to Python values.

        Meant for parameter sweeps: ``s.with_values({"pool.pool_size": n})``.
        Values may also be simlib objects, e.g. ``Exponential(0.01)``.
        """
        return self._with(list(values.items()))

    def _with(self, pairs: Sequence[tuple[str, object]]) -> Scenario:
        data: Mapping[str, object] = self.to_dict()
        kinds = [value for key, value in pairs if key == "pool.kind"]
        if kinds and kinds[-1] != self.pool.kind:
            # Switching library: to_dict() wrote out every parameter of the
            # old pool, and they are not parameters of the new one.  Start the
            # new pool from its own defaults instead.
            data = {**data, "pool": {}}
        for key, value in pairs:
            to_dict = getattr(value, "to_dict", None)
            if callable(to_dict):
                value = to_dict()
            data = _set_path(data, _split_key(key, "with_values"), value)
        return parse_scenario(data, default_name=self.name)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def parse_scenario(data: Mapping[str, object], *, default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as nested dicts (a parsed TOML document)."""
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": default_name, **data}
    return Scenario.parse("", data)


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a scenario file, apply ``--set`` overrides, validate.

    The scenario's name defaults to the file name without ``.toml``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(str(path), "cannot read: TOML files must be UTF-8 text") from None
    except OSError as error:
        raise ScenarioError(str(path), f"cannot read: {error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(str(path), f"invalid TOML: {error}") from None
    for assignment in overrides:
        data = apply_override(data, assignment)
    return parse_scenario(data, default_name=path.stem)


def apply_override(data: Mapping[str, object], assignment: str) -> dict[str, object]:
    """Return a copy of ``data`` with one ``KEY=VALUE`` assignment applied.

    KEY is dotted (``pool.pool_size``); missing tables on the way are created.
    VALUE is read as a TOML value (``8``, ``inf``, ``true``, ``"x"``,
    ``{ dist = "constant", value = 0 }``); anything that is not valid TOML is
    taken as a plain string, so ``pool.kind=asyncpg`` needs no quotes.
    ``data`` itself is not changed.
    """
    key, value = parse_assignment(assignment)
    return _set_path(data, _split_key(key, "--set"), value)


def parse_assignment(assignment: str) -> tuple[str, object]:
    """Split ``KEY=VALUE`` into the dotted key and the value (see apply_override)."""
    key, sep, text = assignment.partition("=") if isinstance(assignment, str) else ("", "", "")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise ScenarioError(
            "--set", "must be KEY=VALUE with a dotted KEY, such as pool.pool_size=8", assignment
        )
    return ".".join(parts), _toml_value(text.strip())


def _toml_value(text: str) -> object:
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    # "1\nw = 2" is valid TOML but not one value: treat it as a string too.
    return parsed["v"] if list(parsed) == ["v"] else text


def _split_key(key: object, source: str) -> list[str]:
    parts = [part.strip() for part in key.split(".")] if isinstance(key, str) else [""]
    if not all(parts):
        raise ScenarioError(source, "keys must be dotted field names such as pool.pool_size", key)
    return parts


def _set_path(
    data: Mapping[str, object], parts: Sequence[str], value: object, done: str = ""
) -> dict[str, object]:
    """Copy ``data`` along the path ``parts`` and set the value at its end.

    Only the tables on the path are copied; the rest is shared, which is safe
    because nothing here modifies a table after copying it.
    """
    head, rest = parts[0], parts[1:]
    here = subfield(done, head)
    new = dict(data)
    if not rest:
        new[head] = value
        return new
    child = new.get(head, {})
    if not isinstance(child, Mapping):
        raise ScenarioError(
            here, f"must be a table to set {here}.{'.'.join(rest)} inside it", child
        )
    new[head] = _set_path(child, rest, value, here)
    return new
