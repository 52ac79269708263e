"""psycopg2 helpers shared by the drivers built on it (sqlalchemy, psycopg2, none)."""

from __future__ import annotations

import time

import psycopg2
import psycopg2.extensions

from labs.drivers.common import RunContext


def counting_factory(ctx: RunContext) -> type[psycopg2.extensions.connection]:
    """A psycopg2 connection class that logs every successful connect (and its duration).

    Passed as ``connection_factory=``: psycopg2 calls the class to connect, so
    its ``__init__`` *is* the connect.  This counts connects for any pool built
    on psycopg2 without touching the pool's code.
    """

    class CountingConnection(psycopg2.extensions.connection):
        def __init__(self, *args, **kwargs):
            t = time.perf_counter()
            super().__init__(*args, **kwargs)
            ctx.connected(time.perf_counter() - t)

    return CountingConnection


def connect_kwargs(ctx: RunContext) -> dict:
    """Keyword arguments for psycopg2.connect: our application_name and the counting factory."""
    return {
        "application_name": ctx.application_name,
        "connection_factory": counting_factory(ctx),
    }
