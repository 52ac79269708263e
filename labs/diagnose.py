"""What went wrong in a live run, in one line: the faults a run counts, named.

A live run counts its failures (``error_rate``, ``timeout_rate``) and keeps the
commonest messages (``details["errors_top"]``); it does not stop at the first
one, because a fault *is* a result here: Postgres refusing a fleet past
``max_connections`` is what scenario 31 measures.  But a table with
``error_rate 0.55`` does not say why, so ``labs run`` and ``labs compare``
print one line on stderr for a run that failed requests, naming the fault
from the messages the real libraries and servers gave and saying what to
change.  The faults it knows, each by the text its source prints:

* PgBouncer refusing clients past ``max_client_conn`` (``FATAL: no more
  connections allowed (max_client_conn)``, ``src/client.c``);
* Postgres refusing connections past ``max_connections`` (SQLSTATE 53300,
  "sorry, too many clients already"), directly or behind PgBouncer;
* PgBouncer going away during the run: connections to its port refused, or
  closed under a query ("server closed the connection unexpectedly");
* PgBouncer closing a client that waited past ``query_wait_timeout``
  ("query_wait_timeout");
* the pool full: requests that timed out waiting for a connection
  (``timeout_rate``; SQLAlchemy's "QueuePool limit ... reached",
  psycopg_pool's ``PoolTimeout``, asyncpg's wait).

Anything else is reported by its commonest message.  The line is a note
about the run, whose results stand (exit status 0, the JSON written as
usual).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2.extensions import parse_dsn

from simlib.scenario import Scenario

#: Failure shares below this are not worth a line (a stray error in thousands).
FLOOR = 0.001


def _share(metrics: Mapping[str, float], name: str) -> float:
    value = metrics.get(name, 0.0)
    return value if isinstance(value, int | float) and math.isfinite(value) else 0.0


def diagnose(scenario: Scenario, metrics: Mapping[str, float],
             details: Mapping[str, Any], pgbouncer_port: str | None = None) -> str | None:
    """One line naming what failed a run's requests and what to change; None if none did.

    ``metrics`` and ``details`` are a :class:`labs.executor.LiveResult`'s;
    ``pgbouncer_port`` the port of the PgBouncer the run went through, if
    any (to tell its refusals from Postgres's).
    """
    errors = _share(metrics, "error_rate")
    timeouts = _share(metrics, "timeout_rate")
    if errors < FLOOR and timeouts < FLOOR:
        return None
    parts = []
    if errors >= FLOOR:
        parts.append(f"{errors:.1%} of requests failed: "
                     + _explain_errors(scenario, details.get("errors_top") or [], pgbouncer_port))
    if timeouts >= FLOOR:
        parts.append(f"{timeouts:.1%} timed out: " + _explain_timeouts(scenario))
    return "; ".join(parts)


def _explain_errors(scenario: Scenario, top: Sequence[Mapping[str, Any]],
                    pgbouncer_port: str | None) -> str:
    if not top:
        return "no message was kept"
    message = str(top[0].get("error", ""))
    bouncer = scenario.pgbouncer
    if "max_client_conn" in message and bouncer is not None:
        return (f"PgBouncer refused clients past max_client_conn = {bouncer.max_client_conn} "
                "(\"no more connections allowed\"); raise pgbouncer.max_client_conn above "
                "every pool's largest size together, or make the pools smaller")
    if "too many clients" in message or "53300" in message:
        where = "behind PgBouncer " if bouncer is not None else ""
        return (f"Postgres {where}refused connections past max_connections = "
                f"{scenario.database.max_connections} (\"sorry, too many clients already\"); "
                "make the pools (or PgBouncer's pool) smaller, put PgBouncer in front, or "
                "raise database.max_connections")
    if "query_wait_timeout" in message and bouncer is not None:
        return (f"PgBouncer closed clients that waited past query_wait_timeout = "
                f"{bouncer.query_wait_timeout:g} s for a server; give it more servers "
                "(pgbouncer.default_pool_size) or raise the timeout")
    if pgbouncer_port is not None and _lost_pgbouncer(message, pgbouncer_port):
        return (f"PgBouncer at port {pgbouncer_port} stopped answering during the "
                f"run ({_short(message)}); start it again (python -m labs services up "
                "--pgbouncer) or point LABS_PGBOUNCER at one that runs")
    return f"the commonest error ({top[0].get('count', '?')} times): {_short(message)}"


def _lost_pgbouncer(message: str, port: str) -> bool:
    refused = "Connection refused" in message and f"port {port}" in message
    return refused or "server closed the connection unexpectedly" in message


def _explain_timeouts(scenario: Scenario) -> str:
    limit = scenario.pool.connection_limit()
    wait = scenario.pool.checkout_wait()
    held = f"all {limit} connections" if limit is not None else "every connection"
    waited = f" {wait:g} s" if math.isfinite(wait) and wait > 0 else ""
    return (f"the pool was full ({held} in use) and they waited{waited} in vain; make the "
            "pool larger (under max_connections), the queries shorter, or the timeout longer")


def port_of(dsn: str) -> str | None:
    """The port of a libpq connection string (None: the default, or not parsable)."""
    try:
        return parse_dsn(dsn).get("port")
    except Exception:  # a malformed DSN was refused long before a run
        return None


def _short(message: str, limit: int = 140) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
