"""One application process's Python: only one thread (or task) runs it at a time.

A Python backend runs its request handlers as threads (a WSGI server, a
``ThreadPoolExecutor``) or as asyncio tasks.  Either way, one process runs one
piece of Python at a time:

* **threads** take turns at CPython's global interpreter lock (the GIL).  A
  thread holds it while it runs Python and drops it when it blocks: on a
  socket (psycopg2 and libpq release it around every network wait), on
  ``time.sleep``, on a lock or a ``threading.Condition``.  A thread that holds
  it for ``sys.getswitchinterval()`` (5 ms by default) while another waits is
  made to drop it (``Python/ceval_gil.c``: the waiter sets
  ``gil_drop_request`` after one interval, and ``FORCE_SWITCHING`` makes the
  holder wait until someone else has taken it);
* **asyncio tasks** take turns on the event loop's thread.  A task runs until
  it awaits something that is not ready; tasks made ready meanwhile wait in
  the loop's ``_ready`` deque, first in first out (``call_soon`` appends,
  ``_run_once`` pops from the left).  Nothing preempts a task.

:class:`Interpreter` is that turn-taking, for one process.  A request's
process *holds* it while its Python runs and *drops* it whenever it waits for
I/O, a sleep or a pool.  Waiting to run again is first come first served:
exactly the event loop's rule, and for the GIL an approximation (CPython
signals one waiting thread and the OS picks which; nothing promises order).

Why it matters for pools: a released connection is not the woken waiter's
until the waiter *runs*.  Until then, whoever runs first (the thread that
just returned it and checks out again, a newcomer, any thread queued ahead
for the GIL) can take it, and the waiter goes back to waiting at the end of
the line.  The pool models (:mod:`simlib.pools`) ask the interpreter for that
order; they do not assume it.

CPU.  While a process holds its interpreter its Python runs on a core: at
full speed when the application has cores of its own, or on the cores it
shares with the database's backends when ``[host] shared_cores`` says so (a
:class:`~simlib.database.ProcessorSharing` shared with the CPU-bound
queries).  So the client's work gets slower under load for two reasons a
wall-clock calibration cannot see: its threads queue for the one interpreter,
and its core is busy with Postgres.

Waking.  A thread blocked on a lock or a condition, or a task awaiting a
future, is *parked* (:meth:`Interpreter.parked`); whoever ends its wait
(:meth:`Interpreter.wake`) puts it in line at that moment, as releasing a
lock or ``set_result`` does.  Waits on time (I/O, sleeps) join the line when
their time comes (:meth:`Interpreter.io`).

Extension hooks: :meth:`Interpreter.compute` (Python work while holding),
:meth:`Interpreter.io` and :meth:`Interpreter.blocked` (waits without
holding), :meth:`Interpreter.parked` and :meth:`Interpreter.wake` (waits that
another process ends), and the primitives :meth:`Interpreter.take` and
:meth:`Interpreter.drop`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

import simpy

from simlib.database import ProcessorSharing

#: What :meth:`Interpreter.take` and :meth:`Interpreter.compute` yield to SimPy.
Steps = Generator[simpy.Event, Any, None]

#: CPython's default ``sys.getswitchinterval()``, seconds.
SWITCH_INTERVAL = 0.005

#: The CPython the project pins (constraints.txt), unless ``[host] python`` says otherwise.
PYTHON = (3, 11)


class Interpreter:
    """The GIL of one process (or its event loop): who runs Python now, who waits.

    ``cpu``: the cores its Python runs on when they are shared (None: a core
    of its own, at full speed).  ``switch_interval``: how long a thread may
    hold on while another waits (``inf`` for an event loop, which never
    preempts).  ``python``: the CPython version, for the library code that
    differs by version (asyncio's ``wait_for`` runs its awaitable in a new
    task before 3.12, inline from 3.12).
    """

    __slots__ = ("env", "cpu", "switch_interval", "python", "busy", "_ready")

    def __init__(
        self,
        env: simpy.Environment,
        cpu: ProcessorSharing | None = None,
        switch_interval: float = SWITCH_INTERVAL,
        python: tuple[int, int] = PYTHON,
    ) -> None:
        self.env = env
        self.cpu = cpu
        self.switch_interval = switch_interval
        self.python = python  # CPython's version: some library paths depend on it
        self.busy = False  # someone holds it
        # Who waits to run, in order: the event that resumes each, and the
        # value it resumes with.
        self._ready: deque[tuple[simpy.Event, Any]] = deque()

    @property
    def waiting(self) -> int:
        """How many threads or tasks wait to run."""
        return len(self._ready)

    def take(self) -> Steps:
        """Wait for the turn to run Python (a generator: ``yield from``).

        Free: taken at once, with no SimPy event.  Busy: wait at the end of
        the line until a :meth:`drop` hands it over.
        """
        if not self.busy:
            self.busy = True
            return
        turn = self.env.event()
        self._ready.append((turn, None))
        yield turn

    def drop(self) -> None:
        """Stop running Python: the first in line runs next (it stays busy), else it is free."""
        if self._ready:
            event, value = self._ready.popleft()
            event.succeed(value)
        else:
            self.busy = False

    def wake(self, event: simpy.Event, value: Any = None) -> None:
        """End a parked wait (:meth:`parked`): its process joins the line *now*.

        What a released lock or ``Condition.notify`` does to a thread, and
        ``future.set_result`` to a task (its wake-up goes to the end of the
        loop's ``_ready`` at once): the woken one is in line before anything
        the waker does next, though it runs only when its turn comes.
        """
        if not self.busy:
            self.busy = True
            event.succeed(value)
        else:
            self._ready.append((event, value))

    def parked(self, event: simpy.Event) -> Generator[simpy.Event, Any, Any]:
        """Drop the interpreter until someone wakes ``event`` (:meth:`wake`); its value.

        The caller holds the interpreter before and after: a wake-up *is* the
        turn to run again, so there is no separate wait for it.
        """
        self.drop()
        return (yield event)

    def next_turn(self) -> Steps:
        """Let everyone already in line run first (``call_soon`` of a new task's first step)."""
        if self._ready:
            self.drop()
            yield from self.take()

    def compute(self, work: float) -> Steps:
        """Run ``work`` seconds of CPU while holding, with forced switches.

        Work longer than the switch interval is cut into intervals; after
        each, a thread that others wait for drops the interpreter and waits
        its turn again, as CPython's forced switch does.
        """
        if work <= 0:
            return
        interval = self.switch_interval
        while work > interval:
            yield self._run(interval)
            work -= interval
            if self._ready:
                self.drop()
                yield from self.take()
        yield self._run(work)

    def _run(self, work: float) -> simpy.Event:
        cpu = self.cpu
        return self.env.timeout(work) if cpu is None else cpu.run(work)

    def blocked(self, event: simpy.Event) -> Generator[simpy.Event, Any, Any]:
        """Wait for ``event`` without holding (I/O, a lock, a condition); its value.

        The caller holds the interpreter before and after: it drops it, waits,
        and waits again for its turn to run.
        """
        self.drop()
        try:
            value = yield event
        except Exception:
            # Hold again before the exception reaches the caller.  Not on
            # GeneratorExit: a generator being closed must not yield.
            yield from self.take()
            raise
        yield from self.take()
        return value

    def io(self, seconds: float) -> Steps:
        """Block on the network (or a sleep) for ``seconds``, then wait to run again."""
        if seconds <= 0:
            return
        self.drop()
        yield self.env.timeout(seconds)
        # take(), inlined: this is the simulator's hottest path.
        if not self.busy:
            self.busy = True
            return
        turn = self.env.event()
        self._ready.append((turn, None))
        yield turn

    def run_blocking(
        self, steps: Generator[simpy.Event, Any, Any]
    ) -> Generator[simpy.Event, Any, Any]:
        """Run a generator of waits (a connect) without holding; what it returns.

        If it raises (a refused connection), the caller still holds the
        interpreter when the exception reaches it.
        """
        self.drop()
        try:
            value = yield from steps
        except Exception:
            yield from self.take()
            raise
        yield from self.take()
        return value


class Unlocked(Interpreter):
    """No turn-taking at all: as if every request ran in a process of its own.

    What a pool is given when it is driven on its own (a test of its rules),
    and the model of free-threaded Python.  Waits still happen; nobody waits
    to *run*.
    """

    __slots__ = ()

    def take(self) -> Steps:
        return
        yield

    def drop(self) -> None:
        pass

    def io(self, seconds: float) -> Steps:
        if seconds > 0:
            yield self.env.timeout(seconds)

    def wake(self, event: simpy.Event, value: Any = None) -> None:
        event.succeed(value)
