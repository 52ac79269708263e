"""Checking connection strings from the environment: well formed, and answering.

``LABS_PG_PRIMARY``, ``LABS_PG_REPLICAS`` and ``LABS_REDIS`` are typed by hand,
so every way they go wrong ends in one line that names the variable, says what
is wrong and how to fix it -- never a driver's traceback, and never the
password they may contain.  A string is first checked for its form (scheme,
syntax, port), without connecting; then the server is asked a question
(``SELECT pg_is_in_recovery()`` or ``PING``) with a short timeout, and the
driver's answer is sorted into the usual mistakes (nothing listening, wrong
user or database, another kind of server on that port) to say what to change.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from labs.services.common import one_line, port_open
from labs.services.postgres import query_one

CHECK_TIMEOUT = 3.0
PG_SCHEMES = ("postgresql", "postgres")  # the URI schemes libpq accepts
REDIS_SCHEMES = ("redis", "rediss", "unix")  # the URL schemes redis-py accepts
PG_FORM = "a Postgres connection string (postgresql://USER@HOST:PORT/DATABASE or key=value pairs)"
REDIS_FORM = "a Redis URL (redis://HOST:PORT/DB)"
THROWAWAY = "or unset the LABS_* variables to use throwaway servers"


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


def dsn_address(dsn: str) -> str:
    """host:port of a Postgres DSN (URI or key=value) or a redis:// URL, for messages."""
    if dsn.startswith(tuple(f"{s}://" for s in REDIS_SCHEMES)):
        parts = urlsplit(dsn)
        try:
            return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        except ValueError:
            return "?"
    try:
        from psycopg2.extensions import parse_dsn

        params = parse_dsn(dsn)
    except Exception:
        return "?"
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def _scheme(dsn: str) -> str | None:
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", dsn)
    return m.group(1).lower() if m else None


def _bad_port(ports: str | None) -> str | None:
    for p in (ports or "").split(","):
        if p and not (p.isdigit() and 1 <= int(p) <= 65535):
            return f"port must be 1..65535, got {p}"
    return None


def postgres_form_problem(dsn: str) -> str | None:
    """Why ``dsn`` is not a Postgres connection string libpq can use (None: it is)."""
    scheme = _scheme(dsn)
    if scheme is not None and scheme not in PG_SCHEMES:
        return f"scheme {scheme}:// is not {' or '.join(s + '://' for s in PG_SCHEMES)}"
    try:
        from psycopg2.extensions import parse_dsn

        params = parse_dsn(dsn)
    except Exception as e:
        return scrub(_first_line(e), dsn)
    return _bad_port(params.get("port"))


def redis_form_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL redis-py can use (None: it is)."""
    scheme = _scheme(url)
    if scheme not in REDIS_SCHEMES:
        got = f"{scheme}://" if scheme else "no scheme"
        return f"scheme must be {', '.join(s + '://' for s in REDIS_SCHEMES)}, got {got}"
    try:
        port = urlsplit(url).port
    except ValueError as e:
        return scrub(_first_line(e), url)
    return _bad_port(None if port is None else str(port))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return one_line(text.splitlines()[0]) if text else type(error).__name__


def postgres_problem(dsn: str, standby: bool | None = None) -> str | None:
    """None if the DSN answers (and is/is not a standby as asked), else why not."""
    try:
        in_recovery = query_one(dsn, "SELECT pg_is_in_recovery()", timeout=CHECK_TIMEOUT)
    except Exception as e:
        problem = scrub(_first_line(e), dsn)
        # libpq repeats the address we already name: keep what went wrong
        problem = re.sub(r'^connection to server at "[^"]*", port \d+ failed:\s*', "", problem)
        return re.sub(r"^FATAL:\s*", "", problem)
    if standby is True and not in_recovery:
        return "answers but is not a standby (pg_is_in_recovery() is false)"
    if standby is False and in_recovery:
        return "answers but is a standby, not a primary"
    return None


def redis_problem(url: str) -> str | None:
    try:
        import redis as redis_py

        client = redis_py.Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:
        return scrub(one_line(e), url) or type(e).__name__
    return None


def server_problem(role: str, dsn: str) -> str | None:
    """None if ``dsn`` answers as ``role`` ("primary", "replica", "redis"), else why not."""
    if role == "redis":
        return redis_problem(dsn)
    return postgres_problem(dsn, standby=role == "replica")


# ---------------------------------------------------------------------------
# One line for one variable
# ---------------------------------------------------------------------------

# role -> what kind of server it must be, and what it must do
_ROLES = {
    "primary": ("Postgres", "must answer as a primary"),
    "replica": ("Postgres", "must answer as a standby"),
    "redis": ("Redis", "must answer PING"),
}


def _fix(var: str, address: str, kind: str, problem: str) -> str:
    """How to fix ``problem`` (a driver's words), as one clause."""
    low = problem.lower()
    if "does not exist" in low:
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
        return f"start {kind} on {address}, or correct the host and port in {var}"
    host, _, port = address.rpartition(":")
    if port.isdigit() and port_open(int(port), host or "127.0.0.1"):
        # something accepted the connection, then did not talk as the server should
        return (f"something listens on {address} but does not answer as {kind}; "
                f"point {var} at a {kind} server")
    return f"start that server or correct {var}"


def env_problem(var: str, dsn: str, role: str) -> tuple[str | None, str | None]:
    """Check one LABS_* connection string for ``role`` ("primary", "replica", "redis").

    Returns ``(problem, line)``: both None when the server is usable; else the
    short problem (for a status table) and the whole one-line error, which
    names the variable, the address, what is wrong and how to fix it.
    """
    kind, duty = _ROLES[role]
    form = redis_form_problem(dsn) if kind == "Redis" else postgres_form_problem(dsn)
    if form is not None:
        wanted = REDIS_FORM if kind == "Redis" else PG_FORM
        return form, (
            f"{var}: must be {wanted}, got {one_line(redact(dsn), 120)!r} ({form}); "
            f"correct {var}, {THROWAWAY}"
        )
    address = dsn_address(dsn)
    problem = server_problem(role, dsn)
    if problem is None:
        return None, None
    problem = one_line(problem, 160).rstrip(".")  # leave room for the fix
    return problem, (
        f"{var}: {address} {duty} within {CHECK_TIMEOUT:g} s, got: {problem}; "
        f"{_fix(var, address, kind, problem)}, {THROWAWAY}"
    )
