"""One driver per pool kind, each going through the real library.

Thread-based drivers (sqlalchemy, psycopg2, psycopg_pool, none) subclass
:class:`labs.drivers.common.SyncDriver`; the asyncpg driver is a coroutine
driver run on one asyncio loop.  :func:`driver_class` picks by ``pool.kind``.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "sqlalchemy": ("labs.drivers.sqlalchemy_queuepool", "SQLAlchemyDriver"),
    "psycopg2": ("labs.drivers.psycopg2_threaded", "Psycopg2Driver"),
    "psycopg_pool": ("labs.drivers.psycopg3_pool", "PsycopgPoolDriver"),
    "asyncpg": ("labs.drivers.asyncpg_pool", "AsyncpgDriver"),
    "none": ("labs.drivers.nopool", "NoPoolDriver"),
}

#: Pool kinds whose driver is async (runs on an asyncio loop instead of threads).
ASYNC_KINDS = frozenset({"asyncpg"})


def driver_class(kind: str) -> type:
    """The driver class for a pool kind (imports only that library)."""
    module, name = _MODULES[kind]
    return getattr(importlib.import_module(module), name)
