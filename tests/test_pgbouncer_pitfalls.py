"""PgBouncer's transaction mode breaks session state: each pitfall shown failing, then fixed.

In ``pool_mode = transaction`` a client has a server connection only while a
transaction runs; the next transaction may get another server, and the server it
had goes to another client with whatever state the first one left on it.  Two
consequences every PgBouncer user meets, each made deterministic here by the
pool's size and the order of the clients' steps (no sleeps, no races), on a
throwaway primary and a fresh PgBouncer 1.18 per case:

* asyncpg's statement cache names its prepared statements on the *server*
  (``__asyncpg_stmt_N__``, created once, then only bound and executed); with
  two servers, the second use of a statement lands on a server that never saw
  it: ``prepared statement "__asyncpg_stmt_1__" does not exist``.  With
  ``statement_cache_size=0`` asyncpg uses the unnamed statement: Parse, Describe
  and Flush, then Bind, Execute and Sync (asyncpg/protocol/coreproto.pyx) -- no
  Sync in between, so PgBouncer keeps the client on one server for all of it.
* A session ``SET`` stays on the server connection, so the next client on it
  (a pool of one: the same server) sees it.  PgBouncer re-sets only the startup
  parameters it tracks per client (``client_encoding``, ``DateStyle``,
  ``TimeZone``, ``standard_conforming_strings``, ``application_name``) to the
  values each client sent at login, so ``SET application_name`` does not leak to a
  client that named its own, while ``SET statement_timeout`` leaks to everyone.
  ``SET LOCAL`` ends with its transaction, and in session mode the server is
  reset (``DISCARD ALL``) before another client gets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg2
import pytest

from labs.services import missing_binaries, start_pgbouncer, start_primary
from labs.services.pgbouncer import PgBouncerServer
from labs.services.postgres import PostgresServer
from simlib.pgbouncer import PgBouncerConfig

MISSING = missing_binaries(redis=False, pgbouncer=True)
pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(MISSING is not None, reason=f"server binaries missing: {MISSING}"),
]

QUERY = "SELECT $1::int + 1"


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    server = start_primary(20)
    try:
        yield server
    finally:
        server.stop()


def bouncer(primary: PostgresServer, **settings: object) -> PgBouncerServer:
    """A fresh PgBouncer (an empty pool) in front of ``primary``."""
    return start_pgbouncer(primary, PgBouncerConfig(**settings))


def connect(dsn: str, autocommit: bool = True, **params: str):
    conn = psycopg2.connect(dsn, connect_timeout=3, **params)
    conn.autocommit = autocommit
    return conn


def value(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


# ---------------------------------------------------------------------------
# (a) asyncpg's prepared statements
# ---------------------------------------------------------------------------


async def interleave(dsn: str, statement_cache_size: int) -> list[int]:
    """Client A runs a statement, B holds the only server in a transaction, A runs it again.

    Pool of 2: A's first run creates server 1 (prepare and execute on it); B's
    ``BEGIN`` takes server 1, idle; A's second run needs a server, so PgBouncer
    opens server 2 for it -- where a cached statement was never prepared.
    """
    import asyncpg

    a = await asyncpg.connect(dsn, statement_cache_size=statement_cache_size)
    b = await asyncpg.connect(dsn, statement_cache_size=statement_cache_size)
    try:
        results = [await a.fetchval(QUERY, 1)]
        async with b.transaction():
            await b.fetchval("SELECT 1")  # B is linked to server 1 until COMMIT
            results.append(await a.fetchval(QUERY, 2))
        results.append(await a.fetchval(QUERY, 3))
        return results
    finally:
        await a.close()
        await b.close()


@pytest.mark.timeout(30)
def test_asyncpg_statement_cache_fails_in_transaction_mode_unless_disabled(primary):
    import asyncpg

    server = bouncer(primary, pool_mode="transaction", default_pool_size=2)
    try:
        with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError) as err:
            asyncio.run(interleave(server.dsn, statement_cache_size=100))  # asyncpg's default
        first = str(err.value).splitlines()[0]
        assert first.startswith('prepared statement "__asyncpg_stmt_')
        assert first.endswith('__" does not exist')
        # the fix: no statement cache (unnamed statements, parsed and run in one link)
        assert asyncio.run(interleave(server.dsn, statement_cache_size=0)) == [2, 3, 4]
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_asyncpg_statement_cache_works_in_session_mode(primary):
    # the same steps in session mode: each client keeps its own server
    server = bouncer(primary, pool_mode="session", default_pool_size=2)
    try:
        assert asyncio.run(interleave(server.dsn, statement_cache_size=100)) == [2, 3, 4]
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# (b) session SET
# ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_session_set_leaks_to_the_next_client_in_transaction_mode(primary):
    server = bouncer(primary, pool_mode="transaction", default_pool_size=1)
    try:
        a = connect(server.dsn, application_name="client-a")
        b = connect(server.dsn, application_name="client-b")
        try:
            assert value(b, "SHOW statement_timeout") == "0"
            with a.cursor() as cur:
                cur.execute("SET statement_timeout = '4321ms'")
                cur.execute("SET application_name = 'set-by-a'")
            # one server: B runs on the backend A just used ...
            assert value(a, "SELECT pg_backend_pid()") == value(b, "SELECT pg_backend_pid()")
            # ... and finds A's setting there
            assert value(b, "SHOW statement_timeout") == "4321ms"
            # application_name is a parameter PgBouncer tracks per client: B's is put back
            assert value(b, "SHOW application_name") == "client-b"
            # ... but only for a client that sent one at login: this one gets the server's
            c = connect(server.dsn)
            try:
                assert value(c, "SHOW application_name") == "client-b"
            finally:
                c.close()
            with b.cursor() as cur:
                cur.execute("RESET statement_timeout")  # (what a server_reset_query would do)
            assert value(a, "SHOW statement_timeout") == "0"

            # the fix in transaction mode: SET LOCAL, which ends with the transaction
            a.autocommit = False
            with a.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = '4321ms'")
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone()[0] == "4321ms"
            a.commit()
            assert value(b, "SHOW statement_timeout") == "0"
        finally:
            a.close()
            b.close()
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_session_set_does_not_leak_in_session_mode(primary):
    server = bouncer(primary, pool_mode="session", default_pool_size=1)
    try:
        a = connect(server.dsn)
        try:
            with a.cursor() as cur:
                cur.execute("SET statement_timeout = '4321ms'")
            pid = value(a, "SELECT pg_backend_pid()")
        finally:
            a.close()  # the server goes back to the pool through DISCARD ALL
        b = connect(server.dsn)
        try:
            assert value(b, "SELECT pg_backend_pid()") == pid  # the same server ...
            assert value(b, "SHOW statement_timeout") == "0"  # ... reset
        finally:
            b.close()
    finally:
        server.stop()
