"""Checking connection strings from the environment: well formed, and answering.

``LABS_PG_PRIMARY``, ``LABS_PG_REPLICAS``, ``LABS_REDIS``, ``LABS_PGBOUNCER`` (and
whatever variable a later kind of service reads) are typed by hand, so every way
they go wrong ends in one line that names the variable, says what is wrong and how
to fix it -- never a driver's traceback, and never the password they may contain.
A string is first checked for its form (scheme, syntax, port), without
connecting; then the server is asked a question (``SELECT pg_is_in_recovery()``,
``PING``, PgBouncer's ``SHOW VERSION``) with a short timeout, and the driver's
answer is sorted into the usual mistakes (nothing listening, wrong user or
database, another kind of server on that port) to say what to change.

What is checked depends on the kind of server: each kind's module
(:mod:`labs.services.postgres`, :mod:`labs.services.redis`,
:mod:`labs.services.pgbouncer`) gives every tier of its servers a :class:`Probe`
-- how its strings look, how to ask the server -- and :func:`env_problem` turns a
probe's answer into the one line.  The helpers here are the pieces those probes
share.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from labs.services.common import one_line, port_open

CHECK_TIMEOUT = 3.0
THROWAWAY = "or unset the LABS_* variables to use throwaway servers"


@dataclass(frozen=True)
class Probe:
    """How connection strings for one tier of servers are checked.

    ``form_problem`` and ``problem`` return None when all is well, else a short
    reason in the driver's words (without the password); ``address`` gives the
    string's ``host:port`` for messages.
    """

    server: str  # what must answer, as messages name it: "Postgres", "Redis"
    form: str  # what a string must look like: "a Redis URL (redis://HOST:PORT/DB)"
    duty: str  # what the server must do: "must answer as a primary"
    form_problem: Callable[[str], str | None]  # without connecting
    problem: Callable[[str], str | None]  # by asking the server, within CHECK_TIMEOUT
    address: Callable[[str], str]


# ---------------------------------------------------------------------------
# Pieces the probes share
# ---------------------------------------------------------------------------


def redact(dsn: str) -> str:
    """A DSN without its password, for printing (also any text that quotes one)."""
    dsn = re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def scrub(text: str, dsn: str) -> str:
    """``text`` (a driver's message about ``dsn``) without the DSN's password.

    Drivers quote a malformed DSN back in their messages, in forms ``redact``
    may not recognise, so the password itself is removed too.
    """
    text = redact(text)
    m = re.search(r"://[^:/@\s]*:([^@/\s]+)@", dsn) or re.search(r"password\s*=\s*(\S+)", dsn)
    # a very short "password" would blank out ordinary letters of the message
    return text.replace(m.group(1), "***") if m and len(m.group(1)) >= 4 else text


def scheme(dsn: str) -> str | None:
    """The URL scheme of ``dsn``, lower case (None: it is no URL)."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", dsn)
    return m.group(1).lower() if m else None


def bad_port(ports: str | None) -> str | None:
    """Why a (comma separated) port list is not 1..65535 (None: it is, or there is none)."""
    for p in (ports or "").split(","):
        if p and not (p.isdigit() and 1 <= int(p) <= 65535):
            return f"port must be 1..65535, got {p}"
    return None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type's name when it has none)."""
    text = str(error).strip()
    return one_line(text.splitlines()[0]) if text else type(error).__name__


# ---------------------------------------------------------------------------
# One line for one variable
# ---------------------------------------------------------------------------


def _fix(var: str, address: str, server: str, problem: str) -> str:
    """How to fix ``problem`` (a driver's words), as one clause."""
    low = problem.lower()
    if "not as pgbouncer" in low:
        return f"point {var} at PgBouncer's port, not at Postgres itself"
    if "admin console refuses" in low:
        return f"name a user of PgBouncer's admin_users or stats_users in {var}"
    if "does not exist" in low or "no such database" in low:
        return f"correct the user or database name in {var}, or create it on the server"
    if "password" in low or "authentication" in low:
        return f"correct the user or password in {var}"
    if "not a standby" in low:
        return f"point {var} at a streaming replica of the primary"
    if "is a standby" in low:
        return f"point {var} at the primary, not a replica"
    if "could not translate host" in low or "name or service not known" in low:
        return f"correct the host name in {var}"
    if "refused" in low or "no route" in low:
        return f"start {server} on {address}, or correct the host and port in {var}"
    host, _, port = address.rpartition(":")
    if port.isdigit() and port_open(int(port), host or "127.0.0.1"):
        # something accepted the connection, then did not talk as the server should
        return (f"something listens on {address} but does not answer as {server}; "
                f"point {var} at a {server} server")
    return f"start that server or correct {var}"


def env_problem(var: str, dsn: str, probe: Probe) -> tuple[str | None, str | None]:
    """Check one connection string from the variable ``var`` with ``probe``.

    Returns ``(problem, line)``: both None when the server is usable; else the
    short problem (for a status table) and the whole one-line error, which
    names the variable, the address, what is wrong and how to fix it.
    """
    form = probe.form_problem(dsn)
    if form is not None:
        return form, (
            f"{var}: must be {probe.form}, got {one_line(redact(dsn), 120)!r} ({form}); "
            f"correct {var}, {THROWAWAY}"
        )
    address = probe.address(dsn)
    problem = probe.problem(dsn)
    if problem is None:
        return None, None
    problem = one_line(problem, 160).rstrip(".")  # leave room for the fix
    return problem, (
        f"{var}: {address} {probe.duty} within {CHECK_TIMEOUT:g} s, got: {problem}; "
        f"{_fix(var, address, probe.server, problem)}, {THROWAWAY}"
    )
