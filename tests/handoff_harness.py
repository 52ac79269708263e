"""Run the real pool libraries' queues on a virtual clock, deterministically.

The differential tests (tests/test_handoff_differential.py) drive the *real*
code that decides who gets a returned connection and compare what it does,
request by request, with simlib's pool models.  Real threads and a real
event loop are not deterministic, so this module gives the libraries two
stand-ins that keep their logic and replace only time and scheduling:

* :class:`VirtualThreads`: "threads" that are greenlets.  One runs at a time
  and runs until it blocks (a sleep standing for I/O, or a lock), and the
  ones ready to run wait in FIFO order: simlib's interpreter model
  (simlib/interpreter.py) with Python free.  Locks are primitive locks on
  that scheduler (:class:`VirtualLock`, :class:`VirtualRLock`), and
  ``threading.Condition`` is CPython's own class, its source re-executed
  with those locks and the virtual clock (:func:`virtual_condition_class`).
  So SQLAlchemy's ``Queue`` and ``QueuePool`` run unchanged on top.
* :class:`VirtualClockLoop`: an asyncio event loop whose clock jumps to the
  next timer when nothing is ready.  asyncio's queues, futures, ``wait_for``
  and ready-queue order are the real ones; only waiting is instant.

What is *not* checked here is the scheduling assumption itself (FIFO turns,
free Python): that is what the live runs measure.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import threading
import types
from collections import deque
from collections.abc import Callable
from typing import Any

import greenlet


class _Wait:
    """One blocked greenlet's wait, so a timer and a wake-up cannot both end it."""

    __slots__ = ("glet", "done")

    def __init__(self, glet: greenlet.greenlet) -> None:
        self.glet = glet
        self.done = False


class VirtualThreads:
    """Greenlet threads on a virtual clock; FIFO turns; a thread runs until it blocks."""

    def __init__(self) -> None:
        self.now = 0.0
        self._ready: deque[tuple[greenlet.greenlet, Any]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._main = greenlet.getcurrent()

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        self._ready.append((greenlet.greenlet(lambda *_: fn(*args), parent=self._main), None))

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    def wake(self, wait: _Wait, value: Any) -> bool:
        if wait.done:
            return False
        wait.done = True
        self._ready.append((wait.glet, value))
        return True

    def block(self) -> tuple[_Wait, Callable[[], Any]]:
        """A wait for the current greenlet, and the function that blocks on it."""
        wait = _Wait(greenlet.getcurrent())
        return wait, self._main.switch

    def sleep(self, seconds: float) -> None:
        wait, park = self.block()
        self.at(self.now + seconds, lambda: self.wake(wait, None))
        park()

    def time(self) -> float:
        return self.now

    def run(self, until: float) -> None:
        while True:
            while self._ready:
                glet, value = self._ready.popleft()
                glet.switch(value)
            if not self._timers or self._timers[0][0] > until:
                return
            when, _, callback = heapq.heappop(self._timers)
            self.now = when
            callback()


class VirtualLock:
    """A primitive lock (``_thread.lock``) on :class:`VirtualThreads`.

    A release hands the lock to the first thread blocked on it, which then
    runs in its turn: the only contention these tests create is on
    ``Condition`` waiter locks, which only their owner acquires.
    """

    def __init__(self, vt: VirtualThreads) -> None:
        self.vt = vt
        self._locked = False
        self._waiters: deque[_Wait] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._locked:
            self._locked = True
            return True
        if not blocking:
            return False
        vt = self.vt
        wait, park = vt.block()
        self._waiters.append(wait)
        if timeout >= 0:
            vt.at(vt.now + timeout, lambda: vt.wake(wait, False))
        return bool(park())

    def release(self) -> None:
        while self._waiters:
            if self.vt.wake(self._waiters.popleft(), True):
                return  # ownership passes to the woken thread
        self._locked = False

    def locked(self) -> bool:
        return self._locked

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class VirtualRLock:
    """A reentrant lock with the private protocol ``threading.Condition`` uses."""

    def __init__(self, vt: VirtualThreads) -> None:
        self._lock = VirtualLock(vt)
        self._owner: greenlet.greenlet | None = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = greenlet.getcurrent()
        if self._owner is me:
            self._count += 1
            return True
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        self._count -= 1
        if not self._count:
            self._owner = None
            self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return self._owner is greenlet.getcurrent()

    def _release_save(self) -> tuple[int, greenlet.greenlet | None]:
        state = (self._count, self._owner)
        self._count, self._owner = 0, None
        self._lock.release()
        return state

    def _acquire_restore(self, state: tuple[int, greenlet.greenlet | None]) -> None:
        self._lock.acquire()
        self._count, self._owner = state


def virtual_condition_class(vt: VirtualThreads) -> type:
    """CPython's ``threading.Condition``, its own source, on virtual locks and clock."""
    namespace: dict[str, Any] = {
        "_allocate_lock": lambda: VirtualLock(vt),
        "_deque": deque,
        "_time": vt.time,
        "RLock": lambda: VirtualRLock(vt),
        "__name__": "virtual_threading",
    }
    exec(compile(inspect.getsource(threading.Condition), threading.__file__, "exec"), namespace)
    return namespace["Condition"]  # type: ignore[no-any-return]


def virtual_threading(vt: VirtualThreads) -> types.SimpleNamespace:
    """A stand-in for the ``threading`` module, as the pool libraries use it."""
    return types.SimpleNamespace(
        Lock=lambda: VirtualLock(vt),
        RLock=lambda: VirtualRLock(vt),
        Condition=virtual_condition_class(vt),
        local=threading.local,
    )


class _NoSelector:
    """What the virtual loop polls instead of sockets: it only moves the clock on."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("the virtual loop has nothing to wait for: a deadlock")
        self._loop.now += timeout
        return []

    def close(self) -> None:
        pass


class VirtualClockLoop(asyncio.BaseEventLoop):
    """asyncio's own loop (ready queue, timers, futures) on a clock that jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._selector = _NoSelector(self)
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self.now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass
