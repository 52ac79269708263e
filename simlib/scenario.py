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
table driven: each section has a dict from field name to a small "rule"
function that checks one value and converts it.  Fields a file leaves out are
simply not passed to the dataclass, so the defaults live in one place, the
dataclass definitions below.

Pool parameters keep each library's own names and defaults (SQLAlchemy's
``pool_size``, psycopg2's ``minconn``, asyncpg's ``max_inactive_connection_lifetime``
...), so a setting can be copied between a real application and a scenario.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, TypeAlias

import numpy as np

from simlib.distributions import (
    MISSING,
    Constant,
    Distribution,
    Exponential,
    ScenarioError,
    check_integer,
    check_number,
    one_of,
    parse_distribution,
    subfield,
)

__all__ = [
    "POOL_KINDS",
    "AsyncpgPoolConfig",
    "Cache",
    "Database",
    "NoPoolConfig",
    "PoolConfig",
    "Popularity",
    "PsycopgPoolConfig",
    "QueuePoolConfig",
    "Query",
    "Client",
    "Replicas",
    "Scenario",
    "ScenarioError",
    "ThreadedPoolConfig",
    "Workload",
    "apply_override",
    "load_scenario",
    "parse_assignment",
    "parse_scenario",
]


# ---------------------------------------------------------------------------
# The scenario as data
# ---------------------------------------------------------------------------


class _Table:
    """Shared ``to_dict`` for the section classes: their fields as a TOML table."""

    # Empty slots, so the slotted dataclasses below stay free of a __dict__.
    __slots__ = ()

    def to_dict(self) -> dict[str, object]:
        table: dict[str, object] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            # TOML has no null: an optional field that is None is left out,
            # and reading the table back gives None again (the default).
            if value is None:
                continue
            table[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return table


@dataclass(frozen=True, slots=True)
class Popularity(_Table):
    """Which keys requests pick: Zipf (a few hot keys) or uniform."""

    dist: Literal["zipf", "uniform"]
    s: float = 0.0  # Zipf exponent; 0 makes Zipf uniform, larger is more skewed

    def probabilities(self, keys: int) -> np.ndarray:
        """P(key k) for k = 1..keys; Zipf gives p_k proportional to k^-s."""
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if self.dist == "uniform":
            return np.full(keys, 1.0 / keys)
        weights = np.arange(1, keys + 1, dtype=np.float64) ** -self.s
        return weights / weights.sum()

    def to_dict(self) -> dict[str, object]:
        if self.dist == "uniform":
            return {"dist": "uniform"}  # s means nothing here, so it is not written
        return {"dist": "zipf", "s": self.s}


@dataclass(frozen=True, slots=True)
class Workload(_Table):
    """Who sends requests, how often, for how long, and for which keys."""

    kind: Literal["open", "closed"] = "open"
    rate: float = 400.0  # open: Poisson arrivals per second
    clients: int = 50  # closed: clients looping request -> think -> request
    think_time: float = 0.0  # closed: mean (exponential) think time, seconds
    duration: float = 30.0  # measured seconds, after the warm-up
    warmup: float = 5.0  # seconds simulated before measuring starts
    keys: int = 10_000
    popularity: Popularity = Popularity("zipf", 0.9)
    write_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class Query(_Table):
    """The work one request does on the database."""

    service_time: Distribution = Exponential(0.005)
    cpu_bound: bool = False  # True: the query needs one of the database's cores


@dataclass(frozen=True, slots=True)
class Database(_Table):
    """The server side: connection cost, round trip, cores, connection limit."""

    connect_time: Distribution = Constant(0.004)
    network_rtt: float = 0.0001
    cores: int = 2  # 0 = unlimited
    max_connections: int = 100


@dataclass(frozen=True, slots=True)
class Client(_Table):
    """What the application's own code costs per request (Python is not free).

    ``dispatch``: from a request's arrival until its code has a connection
    in hand, beyond what the pool itself makes it wait: scheduling the
    request onto a thread or task, and the library's checkout code.  The
    request holds no connection yet.

    ``hold``: client time while a connection is checked out, beyond the
    round trips and the query: the driver sending the query and decoding the
    result, and the pool's return path.  The connection is busy (and no one
    else can use it) all that time, so it raises the pool's utilisation.

    Both default to nothing (a free client).  ``labs compare`` measures them
    for the scenario's library on this machine (see labs/calibrate.py).
    """

    dispatch: Distribution = Constant(0.0)
    hold: Distribution = Constant(0.0)


class _Pool(_Table):
    """Base of the pool configurations: their table starts with ``kind``."""

    __slots__ = ()
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, **_Table.to_dict(self)}


@dataclass(frozen=True, slots=True)
class QueuePoolConfig(_Pool):
    """SQLAlchemy's QueuePool (the default pool of ``create_engine``)."""

    kind: ClassVar[Literal["sqlalchemy"]] = "sqlalchemy"
    pool_size: int = 5  # 0 = no limit, as in SQLAlchemy
    max_overflow: int = 10  # -1 = unlimited overflow
    pool_timeout: float = 30.0  # inf = wait forever
    pool_recycle: float = -1.0  # -1 = never recycle
    pool_pre_ping: bool = False
    use_lifo: bool = False
    reset_on_return: bool = True  # rollback() on return: one more round trip


@dataclass(frozen=True, slots=True)
class ThreadedPoolConfig(_Pool):
    """psycopg2's ThreadedConnectionPool: never waits, fails when exhausted."""

    kind: ClassVar[Literal["psycopg2"]] = "psycopg2"
    # No defaults: ThreadedConnectionPool(minconn, maxconn) requires both.
    minconn: int
    maxconn: int
    reset_on_return: bool = True


@dataclass(frozen=True, slots=True)
class PsycopgPoolConfig(_Pool):
    """psycopg 3's ``psycopg_pool.ConnectionPool``."""

    kind: ClassVar[Literal["psycopg_pool"]] = "psycopg_pool"
    min_size: int = 4
    max_size: int | None = None  # None = same as min_size
    timeout: float = 30.0
    max_lifetime: float = 3600.0
    max_idle: float = 600.0
    max_waiting: int = 0  # 0 = unlimited
    num_workers: int = 3
    reset_on_return: bool = True

    @property
    def effective_max_size(self) -> int:
        return self.min_size if self.max_size is None else self.max_size


@dataclass(frozen=True, slots=True)
class AsyncpgPoolConfig(_Pool):
    """asyncpg's ``create_pool``."""

    kind: ClassVar[Literal["asyncpg"]] = "asyncpg"
    min_size: int = 10
    max_size: int = 10
    timeout: float = math.inf  # acquire(timeout=None) waits forever
    max_inactive_connection_lifetime: float = 300.0  # 0 disables
    max_queries: int = 50_000
    reset_on_return: bool = True


@dataclass(frozen=True, slots=True)
class NoPoolConfig(_Pool):
    """No pool: every request opens a connection and closes it afterwards."""

    kind: ClassVar[Literal["none"]] = "none"


PoolConfig: TypeAlias = (
    QueuePoolConfig | ThreadedPoolConfig | PsycopgPoolConfig | AsyncpgPoolConfig | NoPoolConfig
)

POOL_KINDS: dict[str, type[PoolConfig]] = {
    cls.kind: cls
    for cls in (
        QueuePoolConfig,
        ThreadedPoolConfig,
        PsycopgPoolConfig,
        AsyncpgPoolConfig,
        NoPoolConfig,
    )
}


@dataclass(frozen=True, slots=True)
class Cache(_Table):
    """A cache-aside store (Redis) in front of reads (modelled in simlib/cache.py).

    ``single_flight``: stampede protection.  False (the plain cache-aside
    pattern): every read that misses queries the database, so when a hot key
    expires all its concurrent readers query at once.  True: one query per key
    is in flight; other readers that miss wait for it and take its result.
    """

    ttl: float = 60.0  # inf = no expiry
    capacity: int | None = None  # None = unbounded; else LRU eviction
    hit_time: float = 0.0002
    on_write: Literal["invalidate", "write_through", "none"] = "invalidate"
    single_flight: bool = False


@dataclass(frozen=True, slots=True)
class Replicas(_Table):
    """Streaming read replicas that see the primary's commits after a lag.

    Modelled in simlib/replicas.py.  For ``read_your_writes`` a "client" is
    a closed workload's loop; in an open workload each request comes from
    one of ``workload.clients`` users, picked uniformly at random.
    """

    count: int = 1
    lag: Distribution = Constant(0.2)
    route_reads: Literal["replicas", "primary", "read_your_writes"] = "replicas"
    ryw_window: float = 1.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """One complete, validated scenario."""

    name: str
    seed: int = 0
    replications: int = 5
    workload: Workload = Workload()
    query: Query = Query()
    pool: PoolConfig = QueuePoolConfig()
    database: Database = Database()
    client: Client = Client()
    cache: Cache | None = None  # None = no cache
    replicas: Replicas | None = None  # None = primary only

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
        if self.cache is not None:
            data["cache"] = self.cache.to_dict()
        if self.replicas is not None:
            data["replicas"] = self.replicas.to_dict()
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
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            data = _set_path(data, _split_key(key, "with_values"), value)
        return parse_scenario(data, default_name=self.name)


# ---------------------------------------------------------------------------
# Rules: small functions that check one value and return it converted
# ---------------------------------------------------------------------------

Rule: TypeAlias = Callable[[str, object], object]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
}


def _number(op: str, bound: float, *, inf: bool = False) -> Rule:
    """A float compared with a bound, e.g. ``_number(">", 0)``; ints are accepted."""
    compare = _COMPARE[op]
    allowed = f"must be a number {op} {bound:g}" + (" or inf" if inf else "")

    def rule(field: str, value: object) -> float:
        return check_number(field, value, allowed, lambda x: compare(x, bound), allow_inf=inf)

    return rule


def _fraction(field: str, value: object) -> float:
    return check_number(field, value, "must be a number between 0 and 1", lambda x: 0 <= x <= 1)


def _integer(op: str, bound: int) -> Rule:
    """An int compared with a bound; floats such as 2.5 (or 2.0) are refused."""
    compare = _COMPARE[op]
    allowed = f"must be an integer {op} {bound}"

    def rule(field: str, value: object) -> int:
        return check_integer(field, value, allowed, lambda x: compare(x, bound))

    return rule


def _replications(field: str, value: object) -> int:
    return check_integer(
        field, value, "must be an integer between 1 and 1000", lambda x: 1 <= x <= 1000
    )


def _recycle(field: str, value: object) -> float:
    return check_number(
        field, value, "must be -1 (off) or a number > 0", lambda x: x == -1 or x > 0
    )


def _flag(field: str, value: object) -> bool:
    # Only real booleans: `pool_pre_ping = 1` is refused, as `pool_size = true` is.
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ScenarioError(field, "must be true or false", value)


def _choice(*options: str) -> Rule:
    def rule(field: str, value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ScenarioError(field, one_of(options), value)

    return rule


def _name(field: str, value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ScenarioError(field, "must be a non-empty string", value)


def _popularity(field: str, value: object) -> Popularity:
    if isinstance(value, Popularity):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ScenarioError(
            field, 'must be a table: { dist = "zipf", s = 0.9 } or { dist = "uniform" }', value
        )
    dist = value.get("dist", MISSING)
    if not isinstance(dist, str) or dist not in ("zipf", "uniform"):
        raise ScenarioError(f"{field}.dist", one_of(("zipf", "uniform")), dist)
    for key, item in value.items():
        if key == "s" and dist == "uniform":
            raise ScenarioError(
                f"{field}.s", 'not a parameter of popularity "uniform" (only "zipf" has s)', item
            )
        if key not in ("dist", "s"):
            raise ScenarioError(subfield(field, key), "unknown field (allowed: dist, s)", item)
    if dist == "uniform":
        return Popularity("uniform")
    s = check_number(f"{field}.s", value.get("s", 1.0), "must be a number >= 0", lambda x: x >= 0)
    return Popularity("zipf", s)


def _build(
    cls: type,
    section: str,
    table: object,
    rules: Mapping[str, Rule],
    unknown: str = "unknown field",
) -> object:
    """Check every key of ``table`` with its rule and construct ``cls``.

    Keys the table leaves out are not passed, so the dataclass defaults apply.
    """
    if not isinstance(table, Mapping):
        raise ScenarioError(section or "scenario", "must be a table", table)
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in rules:
            allowed = f"(allowed: {', '.join(rules)})" if rules else "(it has no parameters)"
            raise ScenarioError(subfield(section, key), f"{unknown} {allowed}", value)
        values[key] = rules[key](subfield(section, key), value)
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is dataclasses.MISSING:
            # A required field (psycopg2's minconn and maxconn).  Running its
            # rule on MISSING reuses the rule's own "must be ..." wording.
            try:
                rules[f.name](subfield(section, f.name), MISSING)
            except ScenarioError as error:
                raise ScenarioError(error.field, f"required, {error.problem}", MISSING) from None
    return cls(**values)


def _section(cls: type, rules: Mapping[str, Rule]) -> Rule:
    return lambda field, value: _build(cls, field, value, rules)


_WORKLOAD_RULES: dict[str, Rule] = {
    "kind": _choice("open", "closed"),
    "rate": _number(">", 0),
    "clients": _integer(">=", 1),
    "think_time": _number(">=", 0),
    "duration": _number(">", 0),
    "warmup": _number(">=", 0),
    "keys": _integer(">=", 1),
    "popularity": _popularity,
    "write_fraction": _fraction,
}

_QUERY_RULES: dict[str, Rule] = {
    "service_time": parse_distribution,
    "cpu_bound": _flag,
}

_DATABASE_RULES: dict[str, Rule] = {
    "connect_time": parse_distribution,
    "network_rtt": _number(">=", 0),
    "cores": _integer(">=", 0),
    "max_connections": _integer(">=", 1),
}

_CLIENT_RULES: dict[str, Rule] = {
    "dispatch": parse_distribution,
    "hold": parse_distribution,
}

_POOL_RULES: dict[type, dict[str, Rule]] = {
    QueuePoolConfig: {
        "pool_size": _integer(">=", 0),
        "max_overflow": _integer(">=", -1),
        "pool_timeout": _number(">=", 0, inf=True),
        "pool_recycle": _recycle,
        "pool_pre_ping": _flag,
        "use_lifo": _flag,
        "reset_on_return": _flag,
    },
    ThreadedPoolConfig: {
        "minconn": _integer(">=", 0),
        "maxconn": _integer(">=", 1),
        "reset_on_return": _flag,
    },
    PsycopgPoolConfig: {
        "min_size": _integer(">=", 0),
        "max_size": _integer(">=", 1),
        "timeout": _number(">", 0, inf=True),
        "max_lifetime": _number(">", 0, inf=True),
        "max_idle": _number(">", 0, inf=True),
        "max_waiting": _integer(">=", 0),
        "num_workers": _integer(">=", 1),
        "reset_on_return": _flag,
    },
    AsyncpgPoolConfig: {
        "min_size": _integer(">=", 0),
        "max_size": _integer(">=", 1),
        "timeout": _number(">", 0, inf=True),
        "max_inactive_connection_lifetime": _number(">=", 0, inf=True),
        "max_queries": _integer(">=", 1),
        "reset_on_return": _flag,
    },
    NoPoolConfig: {},
}

_CACHE_RULES: dict[str, Rule] = {
    "ttl": _number(">", 0, inf=True),
    "capacity": _integer(">=", 1),
    "hit_time": _number(">=", 0),
    "on_write": _choice("invalidate", "write_through", "none"),
    "single_flight": _flag,
}

_REPLICAS_RULES: dict[str, Rule] = {
    "count": _integer(">=", 1),
    "lag": parse_distribution,
    "route_reads": _choice("replicas", "primary", "read_your_writes"),
    "ryw_window": _number(">=", 0),
}


def _pool(field: str, table: object) -> PoolConfig:
    """The [pool] table: ``kind`` picks the library, and so the parameters."""
    if not isinstance(table, Mapping):
        raise ScenarioError(field, "must be a table", table)
    kind = table.get("kind", "sqlalchemy")
    if not isinstance(kind, str) or kind not in POOL_KINDS:
        raise ScenarioError(f"{field}.kind", one_of(tuple(POOL_KINDS)), kind)
    cls = POOL_KINDS[kind]
    params = {key: value for key, value in table.items() if key != "kind"}
    pool = _build(cls, field, params, _POOL_RULES[cls], f'not a parameter of pool kind "{kind}"')

    # Rules between two parameters, as the libraries themselves enforce them.
    if isinstance(pool, ThreadedPoolConfig) and pool.minconn > pool.maxconn:
        raise ScenarioError(
            f"{field}.minconn", f"must be an integer <= maxconn ({pool.maxconn})", pool.minconn
        )
    if isinstance(pool, PsycopgPoolConfig):
        if pool.max_size is None and pool.min_size == 0:
            # psycopg_pool: "if min_size is 0 max_size must be greater or than 0"
            raise ScenarioError(
                f"{field}.max_size",
                "must be given (an integer >= 1) when min_size is 0",
                MISSING,
            )
        if pool.max_size is not None and pool.max_size < pool.min_size:
            raise ScenarioError(
                f"{field}.max_size",
                f"must be an integer >= min_size ({pool.min_size})",
                pool.max_size,
            )
    if isinstance(pool, AsyncpgPoolConfig) and pool.max_size < pool.min_size:
        # Blame the parameter the user wrote: max_size if given, else min_size.
        if "max_size" in params:
            raise ScenarioError(
                f"{field}.max_size",
                f"must be an integer >= min_size ({pool.min_size})",
                pool.max_size,
            )
        raise ScenarioError(
            f"{field}.min_size",
            f"must be an integer <= max_size ({pool.max_size})",
            pool.min_size,
        )
    return pool  # type: ignore[return-value]


_SCENARIO_RULES: dict[str, Rule] = {
    "name": _name,
    "seed": _integer(">=", 0),
    "replications": _replications,
    "workload": _section(Workload, _WORKLOAD_RULES),
    "query": _section(Query, _QUERY_RULES),
    "pool": _pool,
    "database": _section(Database, _DATABASE_RULES),
    "client": _section(Client, _CLIENT_RULES),
    "cache": _section(Cache, _CACHE_RULES),
    "replicas": _section(Replicas, _REPLICAS_RULES),
}


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def parse_scenario(data: Mapping[str, object], *, default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as nested dicts (a parsed TOML document)."""
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": default_name, **data}
    return _build(Scenario, "", data, _SCENARIO_RULES)  # type: ignore[return-value]


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
