"""PgBouncer's admin console, read as typed rows: ``SHOW POOLS``, ``SHOW STATS``, ``SHOW CONFIG``.

PgBouncer answers commands of its own on a virtual database, ``pgbouncer`` (the
admin console), to the users its ``admin_users`` and ``stats_users`` name.  Two of
them show what a pool is doing, as PgBouncer 1.18 reports it (``doc/usage.md``,
``src/admin.c``):

* ``SHOW POOLS``, one row per (database, user) pool, at this instant:
  ``cl_active`` clients linked to a server connection *or* idle (logged in,
  nothing to run), ``cl_waiting`` clients that sent a query and wait for a server,
  ``sv_active`` servers linked to a client, ``sv_idle`` servers ready for one,
  ``sv_used`` servers idle longer than ``server_check_delay`` (tested with
  ``server_check_query`` before reuse), ``sv_tested``, ``sv_login`` servers still
  logging in to Postgres, and ``maxwait`` + ``maxwait_us``: how long the oldest
  waiting client has waited (whole seconds, and the microseconds beyond them).
* ``SHOW STATS``, one row per database, cumulative since PgBouncer started:
  ``total_xact_count`` transactions and ``total_query_count`` queries, counted
  as each one ends (so they are exact, live counters: a transaction run through
  PgBouncer shows at once), bytes received and sent, and the microseconds spent
  in transactions, in queries, and waiting for a server (``total_wait_time``);
  the ``avg_*`` columns are per-second averages over the last ``stats_period``
  (60 s), refreshed only that often.  The console's own commands are counted
  under the database ``pgbouncer``.

``SHOW CONFIG`` lists every setting with its value and whether ``SET`` can change it
(``changeable``); ``SET key = 'value'`` and ``RELOAD`` change the running
PgBouncer (the service, :mod:`labs.services.pgbouncer`, says which settings take).

The console speaks only the simple query protocol and has no transactions, so
everything here goes through psycopg2 in autocommit, with no query parameters:
a value is quoted into the command text, and refused if it holds a quote.
:class:`PoolSampler` reads ``SHOW POOLS`` on a thread of its own every few
milliseconds while a run lasts (a live run's probe of PgBouncer's side).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Self

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = [
    "ADMIN_DATABASE",
    "ConfigRow",
    "Console",
    "ConsoleError",
    "PoolRow",
    "PoolSample",
    "PoolSampler",
    "StatsRow",
    "console_dsn",
    "show_config",
    "show_pools",
    "show_stats",
]

ADMIN_DATABASE = "pgbouncer"  # the admin console's virtual database
CONNECT_TIMEOUT = 3.0
SAMPLE_INTERVAL = 0.05

Clock = Callable[[], float]


class ConsoleError(RuntimeError):
    """A command the admin console refused or answered with something unexpected."""


# ---------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------


def _row(cls: Any, columns: Sequence[str], values: Sequence[Any]) -> Any:
    """One row as ``cls`` (one of the row dataclasses below), its fields taken by column name.

    Columns ``cls`` does not have are left out (every PgBouncer release adds a
    few: 1.18's ``cl_active_cancel_req``, ...); a field the row lacks is an error,
    since a missing counter read as 0 would pass for a measurement.  The
    counters arrive as ``numeric`` (psycopg2: Decimal) and become ints.
    """
    row = dict(zip(columns, values, strict=True))
    missing = [f.name for f in fields(cls) if f.name not in row]
    if missing:
        raise ConsoleError(f"{cls.__name__}: the console's answer has no {', '.join(missing)} "
                           f"column (got {', '.join(columns)})")
    # the annotations are strings here (``from __future__ import annotations``)
    return cls(**{f.name: int(row[f.name] or 0) if f.type in ("int", int)
                  else str(row[f.name] or "") for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One pool (database, user) of ``SHOW POOLS``."""

    database: str
    user: str
    cl_active: int  # clients linked to a server, or idle
    cl_waiting: int  # clients that sent a query and wait for a server
    sv_active: int  # servers linked to a client
    sv_idle: int  # servers ready for a client
    sv_used: int  # servers idle past server_check_delay: tested before reuse
    sv_tested: int  # servers running server_reset_query or server_check_query
    sv_login: int  # servers logging in to Postgres
    maxwait: int  # the oldest waiting client's wait, whole seconds ...
    maxwait_us: int  # ... and the microseconds beyond them
    pool_mode: str

    @property
    def wait(self) -> float:
        """How long the oldest waiting client has waited, in seconds."""
        return self.maxwait + self.maxwait_us / 1e6

    @property
    def servers(self) -> int:
        """Server connections this pool holds to Postgres, whatever their state."""
        return self.sv_active + self.sv_idle + self.sv_used + self.sv_tested + self.sv_login


@dataclass(frozen=True, slots=True)
class StatsRow:
    """One database of ``SHOW STATS``: totals since start, averages of the last period."""

    database: str
    total_xact_count: int
    total_query_count: int
    total_received: int  # bytes
    total_sent: int  # bytes
    total_xact_time: int  # microseconds in transactions
    total_query_time: int  # microseconds in queries
    total_wait_time: int  # microseconds clients waited for a server
    avg_xact_count: int  # per second, over the last stats_period
    avg_query_count: int
    avg_recv: int
    avg_sent: int
    avg_xact_time: int  # microseconds
    avg_query_time: int
    avg_wait_time: int


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """One setting of ``SHOW CONFIG``: its value (as PgBouncer prints it) and default."""

    key: str
    value: str
    default: str
    changeable: str  # "yes" or "no": whether SET and RELOAD can change it


# ---------------------------------------------------------------------------
# The console
# ---------------------------------------------------------------------------


def console_dsn(dsn: str) -> str:
    """The admin console of the PgBouncer ``dsn`` points at (same host, port, user)."""
    params = parse_dsn(dsn)
    params["dbname"] = ADMIN_DATABASE
    return make_dsn(**params)


@dataclass
class Console:
    """One connection to a PgBouncer's admin console (``Console.open(dsn)``)."""

    conn: Any  # a psycopg2 connection in autocommit

    @classmethod
    def open(cls, dsn: str, timeout: float = CONNECT_TIMEOUT) -> Self:
        """Connect to the console of the PgBouncer ``dsn`` points at (any database of it)."""
        conn = psycopg2.connect(console_dsn(dsn), connect_timeout=max(1, round(timeout)))
        conn.autocommit = True  # the console knows no BEGIN
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def show(self, what: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """``SHOW what``: the column names and the rows."""
        with self.conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            columns = [d[0] for d in cur.description or ()]
            return columns, list(cur.fetchall())

    def pools(self) -> list[PoolRow]:
        columns, rows = self.show("POOLS")
        return [_row(PoolRow, columns, r) for r in rows]

    def stats(self) -> list[StatsRow]:
        columns, rows = self.show("STATS")
        return [_row(StatsRow, columns, r) for r in rows]

    def config(self) -> dict[str, ConfigRow]:
        """Every setting by name."""
        columns, rows = self.show("CONFIG")
        found = [_row(ConfigRow, columns, r) for r in rows]
        return {row.key: row for row in found}

    def version(self) -> str:
        """``SHOW VERSION``: ``PgBouncer 1.18.0``."""
        _, rows = self.show("VERSION")
        return str(rows[0][0]) if rows else ""

    def command(self, text: str) -> str:
        """Run one console command; its status (``SET ...``, ``RELOAD``).

        ConsoleError with the console's own words when it refuses.
        """
        try:
            with self.conn.cursor() as cur:
                cur.execute(text)
                return str(cur.statusmessage or "")
        except psycopg2.Error as e:
            detail = " ".join(str(e).split()) or type(e).__name__
            raise ConsoleError(f"{text}: {detail}") from None

    def set(self, key: str, value: str) -> str:
        """``SET key = 'value'``.

        The value is always quoted: PgBouncer parses an unquoted value as a
        word (``[a-z0-9_]``), so ``SET reserve_pool_timeout = 0.5`` would be a
        syntax error.  Needs an ``admin_users`` user ("admin access needed").
        """
        if not key.replace("_", "").isalnum() or "'" in value:
            raise ConsoleError(f"SET {key} = {value!r}: a setting name and a value "
                               "without quotes are required")
        return self.command(f"SET {key} = '{value}'")

    def reload(self) -> str:
        """``RELOAD``: PgBouncer reads its pgbouncer.ini again (undoing earlier SETs)."""
        return self.command("RELOAD")


@contextmanager
def _console(dsn: str) -> Iterator[Console]:
    console = Console.open(dsn)
    try:
        yield console
    finally:
        console.close()


def show_pools(dsn: str) -> list[PoolRow]:
    """``SHOW POOLS`` of the PgBouncer ``dsn`` points at, on a connection of its own."""
    with _console(dsn) as console:
        return console.pools()


def show_stats(dsn: str) -> list[StatsRow]:
    """``SHOW STATS`` of the PgBouncer ``dsn`` points at, on a connection of its own."""
    with _console(dsn) as console:
        return console.stats()


def show_config(dsn: str) -> dict[str, ConfigRow]:
    """``SHOW CONFIG`` of the PgBouncer ``dsn`` points at, by setting name."""
    with _console(dsn) as console:
        return console.config()


def pool_of(rows: Sequence[PoolRow], database: str, user: str | None = None) -> PoolRow | None:
    """The pool of ``database`` (and ``user``, when given) among ``rows``, if there is one."""
    for row in rows:
        if row.database == database and (user is None or row.user == user):
            return row
    return None


def stats_of(rows: Sequence[StatsRow], database: str) -> StatsRow | None:
    """The ``SHOW STATS`` row of ``database``, if PgBouncer has one yet."""
    return next((row for row in rows if row.database == database), None)


# ---------------------------------------------------------------------------
# Sampling SHOW POOLS while a run lasts
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSample:
    """``SHOW POOLS`` at one instant: the sampler's clock, and every pool."""

    t: float
    pools: tuple[PoolRow, ...]

    def pool(self, database: str, user: str | None = None) -> PoolRow | None:
        return pool_of(self.pools, database, user)


class PoolSampler:
    """``SHOW POOLS`` every ``interval`` seconds on a thread and a connection of its own.

    ``start()`` connects (so a PgBouncer that does not answer fails there, in
    the caller) and starts the thread; ``stop()`` ends it and returns the
    samples, oldest first.  Samples are taken on a fixed schedule from the first
    on, however long one took; a sample that fails (PgBouncer gone, in a fault
    test) is counted in ``errors``, its message kept in ``last_error``.  Also a
    context manager: ``with PoolSampler(dsn) as sampler: ...``.
    """

    def __init__(self, dsn: str, interval: float = SAMPLE_INTERVAL,
                 clock: Clock = time.perf_counter) -> None:
        if not interval > 0:
            raise ValueError(f"interval: must be a number of seconds > 0, got {interval!r}")
        self.dsn = dsn
        self.interval = interval
        self.clock = clock
        self.samples: list[PoolSample] = []
        self.errors = 0
        self.last_error = ""
        self._console: Console | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="labs-pgbouncer-pools",
                                        daemon=True)

    def start(self) -> Self:
        self._console = Console.open(self.dsn)
        self._thread.start()
        return self

    def stop(self) -> list[PoolSample]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self._console is not None:
            try:
                self._console.close()
            except psycopg2.Error:
                pass
            self._console = None
        return list(self.samples)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sample(self) -> None:
        assert self._console is not None
        try:
            pools = self._console.pools()
        except (psycopg2.Error, ConsoleError) as e:
            self.errors += 1
            self.last_error = " ".join(str(e).split()) or type(e).__name__
            return
        self.samples.append(PoolSample(self.clock(), tuple(pools)))

    def _loop(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            self._sample()
            next_t += self.interval
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.perf_counter()

    def series(self, database: str, column: str,
               user: str | None = None) -> list[tuple[float, int]]:
        """One column of one pool over time: ``(t, value)`` per sample that has the pool."""
        out = []
        for sample in self.samples:
            row = sample.pool(database, user)
            if row is not None:
                out.append((sample.t, int(getattr(row, column))))
        return out

    def peak(self, database: str, column: str, user: str | None = None) -> int:
        """The largest value one column of one pool took (0 without samples)."""
        return max((v for _, v in self.series(database, column, user)), default=0)


def as_mapping(row: PoolRow | StatsRow | ConfigRow) -> Mapping[str, object]:
    """A row as a plain dict (for JSON documents)."""
    return {f.name: getattr(row, f.name) for f in fields(row)}
