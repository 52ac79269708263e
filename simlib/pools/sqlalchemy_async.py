"""SQLAlchemy's asyncio engine: ``create_async_engine`` over asyncpg, ``AsyncAdaptedQueuePool``.

``create_async_engine`` builds an ``AsyncEngine`` whose pool is
``AsyncAdaptedQueuePool`` (sqlalchemy/pool/impl.py).  That class is
``QueuePool`` with one attribute swapped, its queue class
(``_queue_class = AsyncAdaptedQueue``, an ``asyncio.Queue`` in place of the
``threading.Condition`` queue), and its docstring says it: "The arguments and
operation of AsyncAdaptedQueuePool are otherwise identical to that of
QueuePool".  So the parameters (``pool_size``, ``max_overflow``,
``pool_timeout``, ``pool_recycle``, ``pool_pre_ping``, ``use_lifo``, reset on
return) and the rules of checkout and return are QueuePool's, and so is the
model: :class:`simlib.pools.sqlalchemy.QueuePoolModel`.  A timeout raises the
same ``QueuePool limit of size N overflow M reached`` error.

What the asyncio queue changes is small, and modelled: ``asyncio.Queue``
wakes the first getter as the Condition wakes the first thread, and a task
that runs first (on the event loop, in its ``_ready`` order) takes the
connection, so the hand-off barges the same way
(:class:`~simlib.pools.base.NotifyQueue`).  The timeout differs:
``AsyncAdaptedQueue.get`` is ``wait_for(queue.get(), timeout)``, which
*cancels* a getter at its deadline even when it was woken and a connection
waits for it (the woken getter then passes the wake-up on), where a
Condition waiter looks at the queue once more and takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from simlib.pools import base
from simlib.pools.sqlalchemy import QueuePoolConfig, QueuePoolModel


@dataclass(frozen=True, slots=True)
class AsyncQueuePoolConfig(QueuePoolConfig):
    """``create_async_engine``'s pool: QueuePool's parameters, names and defaults."""

    kind: ClassVar[str] = "sqlalchemy_async"


class AsyncQueuePoolModel(QueuePoolModel):
    """QueuePool's rules with ``asyncio.wait_for``'s timeout (see the module doc)."""

    CANCEL_ON_TIMEOUT = True


KIND = base.PoolKind(
    key="sqlalchemy_async",
    config=AsyncQueuePoolConfig,
    model=AsyncQueuePoolModel,
    rules=(
        "`create_async_engine` over asyncpg: `AsyncAdaptedQueuePool` is QueuePool with an "
        "`asyncio.Queue`, so the parameters and the rules are `sqlalchemy`'s, modelled by "
        "its model, with `wait_for`'s cancelling timeout"
    ),
    source="sqlalchemy/pool/impl.py (AsyncAdaptedQueuePool), sqlalchemy/ext/asyncio/engine.py",
    asynchronous=True,
    call="sqlalchemy.ext.asyncio.create_async_engine(URL, {args})",
)
