"""One live driver per pool kind, each going through the real library.

Every module here named after a simlib pool kind (``sqlalchemy``, ``psycopg2``,
``psycopg_pool``, ``asyncpg``, ``none``, ...) exports ``DRIVER``, a
:class:`~labs.drivers.base.Driver` subclass whose ``kind`` is that name; the
package finds them all, so a new kind's driver is one module and nothing else.
Modules whose name starts with ``_`` are helpers, and ``base`` holds what every
driver shares.  :func:`driver_class` picks by ``pool.kind``.
"""

from __future__ import annotations

import importlib
import pkgutil

from labs.drivers.base import GENERIC_TIMEOUTS, Driver
from labs.drivers.base import classify as _classify

__all__ = ["Driver", "classify", "driver_class", "driver_classes"]

_DRIVERS: dict[str, type[Driver]] = {}


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        cls = getattr(importlib.import_module(f"{__name__}.{info.name}"), "DRIVER", None)
        if not (isinstance(cls, type) and issubclass(cls, Driver)) or cls.kind != info.name:
            raise TypeError(f"labs.drivers.{info.name}: must export DRIVER, a Driver of that kind")
        _DRIVERS[cls.kind] = cls


def driver_classes() -> dict[str, type[Driver]]:
    """Every live driver by pool kind."""
    return dict(_DRIVERS)


def driver_class(kind: str) -> type[Driver]:
    """The driver class for a pool kind (KeyError for a kind without a live driver)."""
    return _DRIVERS[kind]


def classify(exc: BaseException) -> tuple[int, str | None]:
    """(outcome, sqlstate) for an exception from any driver: a pool timeout of any library."""
    timeouts = GENERIC_TIMEOUTS + tuple(t for cls in _DRIVERS.values() for t in cls.timeouts)
    return _classify(exc, timeouts)


_discover()
