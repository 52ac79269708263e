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

import math
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import simpy

from simlib.database import ProcessorSharing

#: What :meth:`Interpreter.take` and :meth:`Interpreter.compute` yield to SimPy.
Steps = Generator[simpy.Event, Any, None]

#: CPython's default ``sys.getswitchinterval()``, seconds.
SWITCH_INTERVAL = 0.005



class Interpreter:
    """The GIL of one process (or its event loop): who runs Python now, who waits.

    ``cpu``: the cores its Python runs on when they are shared (None: a core
    of its own, at full speed).  ``switch_interval``: how long a thread may
    hold on while another waits (``inf`` for an event loop, which never
    preempts).  ``wakeup``: how long a thread
    parked on a lock or a condition takes to run once woken (the OS
    scheduling it); 0 for tasks, whose wake-up is a callback on the loop.
    """

    __slots__ = ("env", "cpu", "switch_interval", "wakeup", "pick", "busy", "_ready",
                 "_waiting_since")

    def __init__(
        self,
        env: simpy.Environment,
        cpu: ProcessorSharing | None = None,
        switch_interval: float = SWITCH_INTERVAL,
        wakeup: float = 0.0,
        pick: Callable[[], float] | None = None,
    ) -> None:
        self.env = env
        self.cpu = cpu
        self.switch_interval = switch_interval
        self.wakeup = wakeup  # a parked thread's wake-up by the OS, seconds
        # Who runs next when the holder drops it: None, the first in line (an
        # event loop's ready queue); else a uniform draw picks among those
        # waiting (threads: the OS decides which one gets the GIL).
        self.pick = pick
        self.busy = False  # someone holds it
        # Who waits to run, in order: the event that resumes each, and the
        # value it resumes with.
        self._ready: deque[tuple[simpy.Event, Any]] = deque()
        # Since when someone has waited without the holder changing: after
        # switch_interval of that, the holder is made to drop it.
        self._waiting_since = 0.0

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
        yield self._join(self.env.event(), None)

    def _join(self, event: simpy.Event, value: Any) -> simpy.Event:
        if not self._ready:
            self._waiting_since = self.env.now
        self._ready.append((event, value))
        return event

    def drop(self) -> None:
        """Stop running Python: wake the first in line, else it is free.

        An event loop (``wakeup`` 0) runs the next ready callback at once.  A
        thread's GIL follows ``Python/ceval_gil.c``: ``drop_gil`` unlocks it
        and signals one waiter, who must first be run by the OS (``wakeup``)
        before it can lock it.  Meanwhile the GIL is free, and a thread that
        asks for it then (one whose socket or sleep just returned) takes it
        at once; the signalled one then finds it taken and waits again, at
        the back.  That is how a busy process's threads overtake each other.
        """
        ready = self._ready
        if ready:
            event, value = self._next()
            # A switch: whoever still waits starts a new interval.
            self._waiting_since = self.env.now
            if self.wakeup > 0:
                self.busy = False
                timer = self.env.timeout(self.wakeup)
                timer.callbacks.append(lambda _t: self._woken(event, value))
            else:
                event.succeed(value)
        else:
            self.busy = False

    def _next(self) -> tuple[simpy.Event, Any]:
        ready = self._ready
        if self.pick is None or len(ready) == 1:
            return ready.popleft()
        i = int(self.pick() * len(ready))
        chosen = ready[i]
        del ready[i]
        return chosen

    def _hand_over(self) -> None:
        """A forced switch: the holder waits until the first in line has the GIL.

        ``FORCE_SWITCHING`` in ``drop_gil``: the thread made to drop it
        blocks until another thread took it, so it cannot take it back; the
        one waiting longest gets it (it asked for the drop).
        """
        event, value = self._next()
        self._waiting_since = self.env.now
        event.succeed(value)

    def wake(self, event: simpy.Event, value: Any = None) -> None:
        """End a parked wait (:meth:`parked`): its process joins the line *now*.

        What a released lock or ``Condition.notify`` does to a thread, and
        ``future.set_result`` to a task (its wake-up goes to the end of the
        loop's ``_ready`` at once): the woken one is in line before anything
        the waker does next, though it runs only when its turn comes.
        """
        if self.wakeup > 0:
            # A thread: the OS must first run it (a futex wake), and only
            # then can it ask for the GIL.  Whoever runs meanwhile goes first.
            timer = self.env.timeout(self.wakeup)
            timer.callbacks.append(lambda _t: self._woken(event, value))
        else:
            self._woken(event, value)

    def _woken(self, event: simpy.Event, value: Any) -> None:
        if not self.busy:
            self.busy = True
            event.succeed(value)
        else:
            self._join(event, value)

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

    def work(self, seconds: float, cpu_share: float) -> Steps:
        """``seconds`` of the client's own time: the waiting part first, then the CPU part.

        The waiting part (a thread's wake-up by the OS, a wait the model does
        not list) holds neither the interpreter nor a core.
        """
        wait = seconds * (1.0 - cpu_share)
        if wait > 0:
            yield from self.io(wait)
        yield from self.compute(seconds - wait)

    def compute(self, work: float) -> Steps:
        """Run ``work`` seconds of CPU while holding, with forced switches.

        CPython's rule (``Python/ceval_gil.c``): a thread that has waited
        ``switch_interval`` for the GIL without anyone else taking it asks
        for it, and the holder drops it at its next check and waits its turn
        again.  So the holder may run at most until an interval after the
        first waiter joined, however its work is split into calls.  (A waiter
        that joins while a step runs is seen when the step ends; without
        waiters, steps are one interval long, so that is at most an interval
        late.)  An event loop (``inf``) never preempts.
        """
        interval = self.switch_interval
        env = self.env
        while work > 0:
            if self._ready and interval != math.inf:
                budget = self._waiting_since + interval - env.now
                if budget <= 0:
                    self._hand_over()
                    yield from self.take()
                    continue
                step = min(work, budget)
            else:
                step = min(work, interval)
            yield self._run(step)
            work -= step

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
        yield self._join(self.env.event(), None)

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
