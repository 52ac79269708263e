"""Pool models, one module per library; :func:`make_pool` picks by ``pool.kind``."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from simlib.database import DatabaseServer
from simlib.metrics import Recorder
from simlib.pools.asyncpgpool import AsyncpgPoolModel
from simlib.pools.base import PoolModel, PoolTimeout
from simlib.pools.nopool import NoPoolModel
from simlib.pools.psycopgpool import PsycopgPoolModel
from simlib.pools.queuepool import QueuePoolModel
from simlib.pools.threaded import ThreadedPoolModel
from simlib.scenario import (
    AsyncpgPoolConfig,
    NoPoolConfig,
    PoolConfig,
    PsycopgPoolConfig,
    QueuePoolConfig,
    ThreadedPoolConfig,
)

__all__ = ["PoolModel", "PoolTimeout", "make_pool"]


def make_pool(
    env: simpy.Environment,
    server: DatabaseServer,
    recorder: Recorder,
    config: PoolConfig,
    uniform: Callable[[], float],
) -> PoolModel:
    """The pool model for ``config``'s kind."""
    if isinstance(config, QueuePoolConfig):
        return QueuePoolModel(env, server, recorder, config)
    if isinstance(config, ThreadedPoolConfig):
        return ThreadedPoolModel(env, server, recorder, config)
    if isinstance(config, PsycopgPoolConfig):
        return PsycopgPoolModel(env, server, recorder, config, uniform)
    if isinstance(config, AsyncpgPoolConfig):
        return AsyncpgPoolModel(env, server, recorder, config)
    if isinstance(config, NoPoolConfig):
        return NoPoolModel(env, server, recorder)
    raise TypeError(f"unknown pool config {config!r}")
