"""One request path for threads and for asyncio: code written as steps, run by either.

The live harness drives two kinds of library.  psycopg2, psycopg_pool and
SQLAlchemy's QueuePool block a thread per request; asyncpg and SQLAlchemy's
asyncio engine run every request as a task on one event loop.  What a request
*does* -- check a connection out, run the statement, give it back, ask the
cache first, fail over to the primary -- is the same for both, so it is
written once, as a generator of **steps**.

A step is a call to make: the generator yields ``(function, args)`` and gets
the call's result back (or its exception, thrown in where it yielded).
:func:`run` makes the calls on the current thread; :func:`run_async` makes
them on the event loop and awaits every result that is awaitable.  So a step
``(driver.checkout, ())`` blocks a thread with psycopg2 and suspends a task
with asyncpg, and the code around it is the same text.  Generators compose
with ``yield from``: a request's whole path (the cache, then a replica's pool,
then the primary's) is one generator, run by one runner.

This is the sans-I/O pattern (h11, hyper-h2 and ``sqlalchemy.util.concurrency``
use it in their own ways): the logic never does I/O itself, so it never needs
to know which kind of I/O it has.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Step", "Steps", "run", "run_async"]

T = TypeVar("T")

#: A call to make: a function (plain, or a coroutine function) and its arguments.
Step = tuple[Callable[..., Any], tuple[Any, ...]]
#: Code written as steps, returning a ``T``.
Steps = Generator[Step, Any, T]


class _Done:
    """The steps have returned ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _next(steps: Steps[Any], value: Any, error: BaseException | None) -> Step | _Done:
    """Send the last call's result (or throw its exception) in; the next step, or done."""
    try:
        return steps.send(value) if error is None else steps.throw(error)
    except StopIteration as stop:
        return _Done(stop.value)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except BaseException as exc:  # noqa: BLE001 - handed to the steps, which decide
        return None, exc


def run(steps: Steps[T]) -> T:
    """Run ``steps`` on this thread: each step is a plain (blocking) call."""
    step = _next(steps, None, None)
    while not isinstance(step, _Done):
        step = _next(steps, *_call(*step))
    return step.value  # what the generator returned: a T


async def run_async(steps: Steps[T]) -> T:
    """Run ``steps`` on the running event loop, awaiting each result that is awaitable."""
    step = _next(steps, None, None)
    while not isinstance(step, _Done):
        value, error = _call(*step)
        if hasattr(value, "__await__"):  # a coroutine or a future: its result is the step's
            try:
                value = await value
            except BaseException as exc:  # noqa: BLE001 - cancellation too: the steps clean up
                value, error = None, exc
        step = _next(steps, value, error)
    return step.value
