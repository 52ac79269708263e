"""The GIL's hand-off, against the rules of CPython's ``Python/ceval_gil.c``.

``drop_gil`` unlocks the GIL and signals one waiter; the signalled thread
must first be run by the OS before it can lock it, and a thread that asks
meanwhile (``take_gil`` finding it unlocked) takes it at once.  A forced
switch (``FORCE_SWITCHING``) is different: the holder blocks until another
thread has taken it.  An event loop hands over to the next ready callback.
"""

from __future__ import annotations

import math

import simpy

from simlib.interpreter import Interpreter


def _order(wakeup: float, returns_at: float) -> list[tuple[str, float]]:
    """A holds the GIL and blocks at t=1; B waits from t=0.5; C's I/O ends at ``returns_at``."""
    env = simpy.Environment()
    gil = Interpreter(env, switch_interval=math.inf, wakeup=wakeup)
    got: list[tuple[str, float]] = []

    def a():
        yield from gil.take()
        got.append(("A", env.now))
        yield env.timeout(1.0)
        yield from gil.io(10.0)  # drops the GIL at t=1

    def b():
        yield env.timeout(0.5)
        yield from gil.take()
        got.append(("B", env.now))
        yield env.timeout(0.1)
        gil.drop()

    def c():
        yield from gil.take()
        yield from gil.io(returns_at)  # drops at t=0 (A waits), back at returns_at
        got.append(("C", env.now))
        yield env.timeout(0.1)
        gil.drop()

    for p in (c, a, b):
        env.process(p())
    env.run(until=5.0)
    return got


def test_a_thread_back_from_io_takes_the_gil_before_the_signalled_waiter():
    # A drops at 1.0 and signals B, who runs 2 ms later; C's socket returns
    # at 1.001, finds the GIL free and takes it: B waits again, at the back.
    order = _order(wakeup=0.002, returns_at=1.001)
    assert [name for name, _ in order] == ["A", "C", "B"]
    assert order[1][1] == 1.001
    assert math.isclose(order[2][1], 1.101 + 0.002)  # signalled again when C drops, then woken


def test_the_signalled_waiter_takes_the_gil_when_nobody_asks_in_between():
    order = _order(wakeup=0.002, returns_at=1.5)
    assert [name for name, _ in order] == ["A", "B", "C"]
    assert math.isclose(order[1][1], 1.002)


def test_an_event_loop_hands_over_in_order():
    # wakeup 0: the next ready task runs at once, nobody can get in between.
    order = _order(wakeup=0.0, returns_at=1.0)
    assert [name for name, _ in order] == ["A", "B", "C"]
    assert order[1][1] == 1.0


def test_a_forced_switch_hands_the_gil_to_the_waiter():
    # B asks at 1 ms while A holds the GIL; A then computes 20 ms.  One switch
    # interval after B began waiting (at 6 ms) A must let B run, wake-up delay
    # or not, and cannot take it back first; when B blocks at 7 ms, A is the
    # one waiting: signalled, it runs again 2 ms later and finishes at 25 ms.
    env = simpy.Environment()
    gil = Interpreter(env, switch_interval=0.005, wakeup=0.002)
    got: list[tuple[str, float]] = []

    def a():
        yield from gil.take()
        yield env.timeout(0.002)
        yield from gil.compute(0.020)
        got.append(("A done", env.now))
        gil.drop()

    def b():
        yield env.timeout(0.001)
        yield from gil.take()
        got.append(("B", env.now))
        yield env.timeout(0.001)
        gil.drop()

    env.process(a())
    env.process(b())
    env.run()
    assert got[0][0] == "B" and math.isclose(got[0][1], 0.006)
    assert got[1][0] == "A done" and math.isclose(got[1][1], 0.025)
