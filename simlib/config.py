"""Scenario sections as data: frozen dataclasses, and the rules that check them.

A scenario file is a handful of TOML tables (``[workload]``, ``[query]``,
``[pool]``, ``[database]``, ...).  Each table becomes one frozen dataclass, a
:class:`Section`, whose fields carry the defaults and whose ``RULES`` say how
each value is checked.  A rule is a small function ``rule(field, value)`` that
returns the value converted (``5`` becomes ``5.0`` for a float field) or raises
a :class:`~simlib.distributions.ScenarioError` whose one line names the field,
what is allowed and what was found: ``pool.pool_size: must be an integer >= 0,
got -3``.  Fields a file leaves out are simply not passed to the dataclass, so
every default lives in one place, the dataclass definition.

The sections every scenario has are defined here: :class:`Workload`,
:class:`Query`, :class:`Database` and :class:`Client`.  The others live beside
the model they configure -- each pool library's parameters in its module of
:mod:`simlib.pools`, ``[cache]`` in :mod:`simlib.cache`, ``[replicas]`` in
:mod:`simlib.replicas` -- so a new tier brings its section with it.

Extension hooks of :class:`Section`: ``RULES`` (one rule per field) and
:meth:`Section.check` (rules between fields, run after every field passed its
own).  ``Section.parse`` is the one entry point: it validates a table once, at
the edge; the frozen object it returns is trusted everywhere after.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeAlias

import numpy as np
import numpy.typing as npt

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
    "Client",
    "Database",
    "Popularity",
    "Query",
    "Rule",
    "Section",
    "Workload",
    "choice",
    "flag",
    "fraction",
    "integer",
    "name",
    "number",
]

# ---------------------------------------------------------------------------
# Rules: small functions that check one value and return it converted
# ---------------------------------------------------------------------------

Rule: TypeAlias = Callable[[str, object], Any]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
}


def number(op: str, bound: float, *, inf: bool = False) -> Rule:
    """A float compared with a bound, e.g. ``number(">", 0)``; ints are accepted."""
    compare = _COMPARE[op]
    allowed = f"must be a number {op} {bound:g}" + (" or inf" if inf else "")

    def rule(field: str, value: object) -> float:
        return check_number(field, value, allowed, lambda x: compare(x, bound), allow_inf=inf)

    return rule


def fraction(field: str, value: object) -> float:
    return check_number(field, value, "must be a number between 0 and 1", lambda x: 0 <= x <= 1)


def integer(op: str, bound: int) -> Rule:
    """An int compared with a bound; floats such as 2.5 (or 2.0) are refused."""
    compare = _COMPARE[op]
    allowed = f"must be an integer {op} {bound}"

    def rule(field: str, value: object) -> int:
        return check_integer(field, value, allowed, lambda x: compare(x, bound))

    return rule


def flag(field: str, value: object) -> bool:
    # Only real booleans: `pool_pre_ping = 1` is refused, as `pool_size = true` is.
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ScenarioError(field, "must be true or false", value)


def choice(*options: str) -> Rule:
    def rule(field: str, value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ScenarioError(field, one_of(options), value)

    return rule


def name(field: str, value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ScenarioError(field, "must be a non-empty string", value)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


class Section:
    """Base of the section dataclasses: parsing with ``RULES``, and ``to_dict``.

    Subclasses are frozen, slotted dataclasses.  They set ``RULES`` (field name
    -> rule) and may override :meth:`check` for rules between two fields.
    """

    # Empty slots, so the slotted dataclasses below stay free of a __dict__.
    __slots__ = ()
    RULES: ClassVar[Mapping[str, Rule]] = {}
    #: how an unknown key is reported ("unknown field", 'not a parameter of ...')
    UNKNOWN: ClassVar[str] = "unknown field"

    @classmethod
    def parse(cls, field: str, table: object) -> Self:
        """Check every key of ``table`` with its rule and construct the section.

        Keys the table leaves out are not passed, so the dataclass defaults apply.
        """
        if not isinstance(table, Mapping):
            raise ScenarioError(field or "scenario", "must be a table", table)
        rules = cls.RULES
        values: dict[str, object] = {}
        for key, value in table.items():
            if key not in rules:
                allowed = f"(allowed: {', '.join(rules)})" if rules else "(it has no parameters)"
                raise ScenarioError(subfield(field, key), f"{cls.UNKNOWN} {allowed}", value)
            values[key] = rules[key](subfield(field, key), value)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # subclasses are dataclasses
            if f.name not in values and f.default is dataclasses.MISSING:
                # A required field (psycopg2's minconn and maxconn).  Running its
                # rule on MISSING reuses the rule's own "must be ..." wording.
                try:
                    rules[f.name](subfield(field, f.name), MISSING)
                except ScenarioError as error:
                    problem = f"required, {error.problem}"
                    raise ScenarioError(error.field, problem, MISSING) from None
        section = cls(**values)
        section.check(field, values)
        return section

    def check(self, field: str, given: Mapping[str, object]) -> None:
        """Rules between fields; ``given`` holds the ones the table set (hook)."""

    def without_zeros(self, names: tuple[str, ...]) -> dict[str, object]:
        """:meth:`to_dict` without the fields of ``names`` left at 0 (off).

        For fields added after scenario files were written: a file that does
        not set one is written back as it was.
        """
        data = Section.to_dict(self)
        for name in names:
            if not getattr(self, name):
                del data[name]
        return data

    def to_dict(self) -> dict[str, object]:
        """The section's fields as a TOML table (``parse`` reads it back unchanged)."""
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
class Popularity(Section):
    """Which keys requests pick: Zipf (a few hot keys) or uniform."""

    dist: Literal["zipf", "uniform"]
    s: float = 0.0  # Zipf exponent; 0 makes Zipf uniform, larger is more skewed

    def probabilities(self, keys: int) -> npt.NDArray[np.float64]:
        """P(key k) for k = 1..keys; Zipf gives p_k proportional to k^-s."""
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        if self.dist == "uniform":
            return np.full(keys, 1.0 / keys)
        weights: npt.NDArray[np.float64] = np.arange(1, keys + 1, dtype=np.float64) ** -self.s
        probabilities: npt.NDArray[np.float64] = weights / weights.sum()
        return probabilities

    def to_dict(self) -> dict[str, object]:
        if self.dist == "uniform":
            return {"dist": "uniform"}  # s means nothing here, so it is not written
        return {"dist": "zipf", "s": self.s}

    @classmethod
    def parse(cls, field: str, value: object) -> Popularity:
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
                    f"{field}.s",
                    'not a parameter of popularity "uniform" (only "zipf" has s)',
                    item,
                )
            if key not in ("dist", "s"):
                raise ScenarioError(subfield(field, key), "unknown field (allowed: dist, s)", item)
        if dist == "uniform":
            return Popularity("uniform")
        s = check_number(
            f"{field}.s", value.get("s", 1.0), "must be a number >= 0", lambda x: x >= 0
        )
        return Popularity("zipf", s)


#: Most pieces a ``rate_schedule`` may have.
MAX_SCHEDULE_PIECES = 1000


def rate_schedule(field: str, value: object) -> tuple[tuple[float, float], ...]:
    """``[[start second, rate], ...]``: starts from 0, increasing; rates >= 0, not all 0."""
    allowed = (
        "must be an array of [start second, requests per second] pairs, the first starting "
        "at 0, the starts increasing, the rates >= 0 and not all 0"
    )
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_SCHEDULE_PIECES:
        raise ScenarioError(field, allowed, value)
    pieces: list[tuple[float, float]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ScenarioError(f"{field}[{i}]", "must be a pair [start second, rate]", pair)
        start = check_number(f"{field}[{i}][0]", pair[0], "must be a number >= 0",
                             lambda x: x >= 0)
        rate = check_number(f"{field}[{i}][1]", pair[1], "must be a number >= 0",
                            lambda x: x >= 0)
        if (i == 0 and start != 0) or (pieces and start <= pieces[-1][0]):
            raise ScenarioError(f"{field}[{i}][0]", allowed, pair[0])
        pieces.append((start, rate))
    if not any(rate > 0 for _, rate in pieces):
        raise ScenarioError(field, allowed, value)
    return tuple(pieces)


@dataclass(frozen=True, slots=True)
class Workload(Section):
    """Who sends requests, how often, for how long, and for which keys."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "kind": choice("open", "closed"),
        "rate": number(">", 0),
        "clients": integer(">=", 1),
        "think_time": number(">=", 0),
        "duration": number(">", 0),
        "warmup": number(">=", 0),
        "keys": integer(">=", 1),
        "popularity": Popularity.parse,
        "write_fraction": fraction,
        "rate_schedule": rate_schedule,
    }

    kind: Literal["open", "closed"] = "open"
    rate: float = 400.0  # open: Poisson arrivals per second
    clients: int = 50  # closed: clients looping request -> think -> request
    think_time: float = 0.0  # closed: mean (exponential) think time, seconds
    duration: float = 30.0  # measured seconds, after the warm-up
    warmup: float = 5.0  # seconds simulated before measuring starts
    keys: int = 10_000
    popularity: Popularity = Popularity("zipf", 0.9)
    write_fraction: float = 0.0
    # open: a piecewise-constant rate instead of `rate` (a spike, a storm):
    # ((start second, rate), ...), seconds from t = 0, the warm-up included.
    rate_schedule: tuple[tuple[float, float], ...] | None = None

    def check(self, field: str, given: Mapping[str, object]) -> None:
        if self.rate_schedule is None:
            return
        here = f"{field}.rate_schedule" if field else "rate_schedule"
        if self.kind != "open":
            raise ScenarioError(here, "only an open workload has a rate (kind = \"open\")",
                                [list(p) for p in self.rate_schedule])
        if "rate" in given:
            raise ScenarioError(f"{field}.rate" if field else "rate",
                                "give rate or rate_schedule, not both", given["rate"])

    def to_dict(self) -> dict[str, object]:
        data = Section.to_dict(self)
        if self.rate_schedule is not None:
            del data["rate"]  # the schedule replaces it
            data["rate_schedule"] = [list(p) for p in self.rate_schedule]
        return data

    def rate_at(self, t: float) -> float:
        """The arrival rate at time ``t`` (an open workload)."""
        if self.rate_schedule is None:
            return self.rate
        rate = self.rate_schedule[0][1]
        for start, r in self.rate_schedule:
            if start > t:
                break
            rate = r
        return rate

    def mean_rate(self, start: float, end: float) -> float:
        """The mean arrival rate over ``[start, end)`` (an open workload)."""
        if self.rate_schedule is None:
            return self.rate
        bounds = [s for s, _ in self.rate_schedule] + [math.inf]
        total = 0.0
        for (s, r), nxt in zip(self.rate_schedule, bounds[1:], strict=True):
            lo, hi = max(s, start), min(nxt, end)
            if hi > lo:
                total += r * (hi - lo)
        return total / (end - start)


@dataclass(frozen=True, slots=True)
class Query(Section):
    """The work one request does on the database."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "service_time": parse_distribution,
        "cpu_bound": flag,
        "sleep_granularity": number(">=", 0),
        "sleep_overhead": number(">=", 0),
    }

    service_time: Distribution = Exponential(0.005)
    cpu_bound: bool = False  # True: the query needs one of the database's cores
    # A waiting query that sleeps in whole steps of this, each sleep rounded
    # up: Postgres's pg_sleep() waits on its latch in whole milliseconds
    # (misc.c: delay_ms = ceil(delay * 1000)), so pg_sleep(0.0023) takes 3 ms.
    # The labs' live queries are pg_sleep; 0 = the service time exactly.
    sleep_granularity: float = 0.0
    # How much later than its rounded sleep a sleeping query's answer leaves
    # the server: the statement's parse, plan and start, and the backend's
    # timer waking late (the latch's epoll timeout and the scheduler).  Not
    # part of a round trip: a ROLLBACK or a pre-ping's SELECT does not sleep.
    sleep_overhead: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return self.without_zeros(("sleep_granularity", "sleep_overhead"))

    @property
    def sleeps(self) -> bool:
        """The server time differs from the drawn service time (a rounded or late sleep)."""
        return not self.cpu_bound and bool(self.sleep_granularity or self.sleep_overhead)

    def server_time(self, service: float) -> float:
        """Seconds the server spends on a query drawn as ``service``."""
        if self.cpu_bound or service <= 0:
            return service
        g = self.sleep_granularity
        slept = math.ceil(service / g - 1e-9) * g if g else service
        return slept + self.sleep_overhead


@dataclass(frozen=True, slots=True)
class Database(Section):
    """The server side: connection cost, round trip, cores, connection limit."""

    RULES: ClassVar[Mapping[str, Rule]] = {
        "connect_time": parse_distribution,
        "network_rtt": number(">=", 0),
        "cores": integer(">=", 0),
        "max_connections": integer(">=", 1),
        "idle_in_transaction_session_timeout": number(">=", 0),
        "idle_session_timeout": number(">=", 0),
    }

    connect_time: Distribution = Constant(0.004)
    network_rtt: float = 0.0001
    cores: int = 2  # 0 = unlimited
    max_connections: int = 100
    # Postgres's setting, in seconds here (milliseconds in postgresql.conf):
    # a session idle inside an open transaction this long is terminated.
    # 0 = off, Postgres's default.
    idle_in_transaction_session_timeout: float = 0.0
    # Postgres 14's idle_session_timeout, in seconds: a session idle outside
    # a transaction this long is ended.  0 = off, the default: a connection a
    # frozen serverless environment left behind then stays open.
    idle_session_timeout: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return self.without_zeros(("idle_in_transaction_session_timeout",
                                   "idle_session_timeout"))


@dataclass(frozen=True, slots=True)
class Client(Section):
    """What the application's own code costs per request, and what it forgets to give back.

    Costs are **CPU seconds of Python**, which do not depend on load.  The
    model runs them on the application process's interpreter
    (:mod:`simlib.interpreter`): one thread at a time holds the GIL (or the
    event loop), on a core it may share with Postgres (``[host]``).  So their
    wall-clock cost grows with load in the model as it does live.

    ``dispatch``: the request's Python before it has a connection in hand:
    the handler, and the library's checkout code.  No connection is held.

    ``hold``: Python while a connection is checked out, beyond the round
    trips and the query: the driver sending the query and decoding the
    result, and the pool's return path.  The connection is busy (and no one
    else can use it) all that time, so it raises the pool's utilisation.

    ``cpu_share``: the share of ``dispatch`` and ``hold`` that is CPU.  The
    rest is waiting that neither holds the interpreter nor a core (the OS
    waking a thread, a short wait the model does not list): it costs the
    request wall time, but does not grow with the process's load.

    ``after``: Python the request's thread runs after its answer has gone:
    the load generator's or the framework's bookkeeping, logging, metrics.
    It is not in the request's latency, but it holds the interpreter, so it
    slows every other request of the process.

    ``fail``: Python a request runs, instead of ``after``, when it got no
    connection: the library raising its error (psycopg2's ``PoolError``, a
    timeout, a refusal), the handler catching it and answering with an
    error.  A storm of requests failing at once is CPU-bound on it: 36
    threads of psycopg2 failing and retrying keep a GIL busy, and the few
    requests that do get a connection wait for their turn to run.

    ``ping``, ``reset``, ``connect``: Python each of these costs beyond its
    round trips and the server's work, charged only where it happens: a
    pre-ping at checkout, a reset on return, a connection opened (the
    driver's startup and authentication, SCRAM hashing included) and closed.

    Leaks.  ``leak_fraction`` of the requests keep their connection for
    ``leak_time`` more seconds after their answer has gone: a session closed
    late (by the garbage collector, at the end of a background task) or
    never.  With ``leak_in_transaction`` its transaction was left open too,
    so Postgres shows the session ``idle in transaction`` and
    ``[database] idle_in_transaction_session_timeout`` ends it; the pool
    then finds the connection broken when it comes back.

    All default to nothing (a free, tidy client).  ``labs compare`` measures
    the costs for the scenario's library on this machine (labs/calibrate.py).
    """

    RULES: ClassVar[Mapping[str, Rule]] = {
        "dispatch": parse_distribution,
        "hold": parse_distribution,
        "after": number(">=", 0),
        "fail": number(">=", 0),
        "cpu_share": fraction,
        "ping": number(">=", 0),
        "reset": number(">=", 0),
        "connect": number(">=", 0),
        "leak_fraction": fraction,
        "leak_time": parse_distribution,
        "leak_in_transaction": flag,
    }

    dispatch: Distribution = Constant(0.0)
    hold: Distribution = Constant(0.0)
    after: float = 0.0
    fail: float = 0.0
    cpu_share: float = 1.0
    ping: float = 0.0
    reset: float = 0.0
    connect: float = 0.0
    leak_fraction: float = 0.0
    leak_time: Distribution = Constant(0.0)
    leak_in_transaction: bool = False

    def to_dict(self) -> dict[str, object]:
        # Only what differs from the defaults, so files stay as written.
        data = Section.to_dict(self)
        default = Client()
        return {k: v for k, v in data.items()
                if k in ("dispatch", "hold") or getattr(self, k) != getattr(default, k)}


@dataclass(frozen=True, slots=True)
class Host(Section):
    """Where the application's processes run, and whose cores their Python uses.

    ``shared_cores``: the application runs on the database server's machine
    and its Python shares ``[database] cores`` with Postgres's CPU-bound
    queries (processor sharing), as on a laptop, a single VM, or the labs'
    loopback runs.  False: the application has cores of its own, and each
    process's Python runs at full speed whenever it holds its GIL.

    ``switch_interval``: ``sys.setswitchinterval()``, how long a thread may
    keep the GIL while another waits before it is made to drop it.  An
    asyncio pool's tasks share one event loop, which never preempts.

    ``gil``: False models no turn-taking at all: free-threaded CPython
    (3.13t), or one process per request; the client's costs then delay only
    their own request, the textbook's assumption.

    ``wakeup``: how long the OS takes to run a thread that a lock or a
    ``threading.Condition`` has woken (a futex wake, then a free core), before
    it can even ask for the GIL.  Threads that are running meanwhile take a
    returned connection first: one of the ways QueuePool waiters are
    overtaken.  Tasks on an event loop wake by a callback, at no such cost.

    ``threads``: the worker threads that serve an open loop's requests (a
    ``ThreadPoolExecutor``, a gthread worker's threads); 0 is the rule labs
    uses, min(256, max(32, 4 x the pool's connection limit)).  Arrivals that
    find them all busy queue in the executor, and a thread that finishes a
    request takes the next one at once, without giving up the GIL.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {
        "shared_cores": flag,
        "switch_interval": number(">", 0),
        "wakeup": number(">=", 0),
        "gil_order": choice("fifo", "random"),
        "gil": flag,
        "threads": integer(">=", 0),
    }

    shared_cores: bool = False
    switch_interval: float = 0.005  # CPython's default
    wakeup: float = 0.0  # seconds for the OS to run a thread woken by a lock or condition
    gil_order: str = "fifo"  # which waiting thread gets a dropped GIL: "fifo" or "random"
    gil: bool = True  # False: no turn-taking (free-threaded CPython, a process per request)
    threads: int = 0  # an open loop's worker threads; 0: min(256, max(32, 4 x the pool's limit))
