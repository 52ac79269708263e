"""Pool models, one module per library, each describing itself with a ``KIND``.

Every module of this package except ``base`` exports ``KIND``, a
:class:`~simlib.pools.base.PoolKind` (its configuration, model, rules and
sources).  :func:`pool_kinds` finds them all, so a new pool library is one new
module here and nothing else: no table to edit.  Its key is the scenario's
``pool.kind``, its module's name, and the name of its live driver in
``labs/drivers/``.  Kinds from outside the package are passed in as objects
with :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import simpy

from simlib.database import Server
from simlib.interpreter import Interpreter
from simlib.metrics import Recorder
from simlib.pools.base import (
    ClientCosts,
    PoolConfig,
    PoolKind,
    PoolModel,
    PoolTimeout,
    RoundTrips,
)

__all__ = [
    "PoolConfig",
    "PoolKind",
    "PoolModel",
    "PoolTimeout",
    "RoundTrips",
    "make_pool",
    "pool_kind",
    "pool_kinds",
    "register",
    "rules_table",
]

_KINDS: dict[str, PoolKind] = {}


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        kind = getattr(importlib.import_module(f"{__name__}.{info.name}"), "KIND", None)
        if not isinstance(kind, PoolKind):
            raise TypeError(f"simlib.pools.{info.name}: must export KIND, a PoolKind")
        register(kind)


def register(kind: PoolKind) -> PoolKind:
    """Make ``kind`` known under its key (scenario validation, make_pool, labs)."""
    known = _KINDS.get(kind.key)
    if known is not None and known is not kind:
        raise ValueError(f"pool kind {kind.key!r} is registered twice")
    _KINDS[kind.key] = kind
    return kind


def pool_kinds() -> dict[str, PoolKind]:
    """Every known pool kind by key, in the order they were registered."""
    return dict(_KINDS)


def pool_kind(key: str) -> PoolKind:
    """The descriptor of one kind (KeyError for an unknown key)."""
    return _KINDS[key]


def make_pool(
    env: simpy.Environment,
    server: Server,
    recorder: Recorder,
    config: PoolConfig,
    uniform: Callable[[], float],
    interpreter: Interpreter | None = None,
    costs: ClientCosts | None = None,
) -> PoolModel[Any]:
    """The pool model for ``config``'s kind, in front of ``server``.

    ``interpreter``: the application process's (None: nobody waits to run);
    ``costs``: the ``[client]`` costs of its Python (None: free).
    """
    return _KINDS[config.kind].model(env, server, recorder, config, uniform, interpreter, costs)


def rules_table() -> str:
    """The README's table of the rules each pool kind models, made from the descriptors.

    ``tests/test_pools.py`` checks that the README shows exactly this, so the
    table cannot drift from the models (``make readme-table`` prints it).
    """
    lines = [
        "| `pool.kind` | rules modelled | read from |",
        "|---|---|---|",
    ]
    lines += [f"| `{k.key}` | {k.rules} | {k.source} |" for k in _KINDS.values()]
    return "\n".join(lines)


_discover()
