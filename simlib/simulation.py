"""Running a scenario: one replication, then many, then confidence intervals.

A replication builds a fresh SimPy environment with the database server, the
pool and the workload (and, when the scenario has them, the cache and the
replicas, each replica with its own server and pool: :mod:`simlib.system`),
runs the warm-up and
the measured window, then lets the requests that arrived in the window
finish (the "drain"), because a request that arrived at the last instant
still counts.  Arrivals go on during
the drain so late requests see the same load as early ones.  A request still
unfinished when the drain limit passes counts as incomplete
(``incomplete_rate``): that only happens in overload without timeouts.

Replications are independent (their own random streams) and run in parallel
on all cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import simpy

from simlib.distributions import Constant
from simlib.metrics import Estimate, Recorder, summarise
from simlib.scenario import Scenario, ScenarioError
from simlib.streams import Streams
from simlib.system import build

#: How long after the window requests may still finish, as a share of the
#: window (and at least a minute): generous enough for any pool timeout in use.
DRAIN_FACTOR, DRAIN_MIN = 1.0, 60.0


def check_supported(scenario: Scenario) -> None:
    """Refuse what the *live* labs cannot reproduce: a replica lag that is not constant.

    The simulator draws a lag per commit from any distribution; a real
    standby gets one ``recovery_min_apply_delay``, so labs can only impose a
    constant lag.  Quietly imposing the mean instead would measure a
    different system than the one predicted, which is worse than no
    measurement.  ``labs`` calls this before starting any server;
    :func:`simulate` does not.  The message starts with the setting's name.
    """
    reps = scenario.replicas
    if reps is not None and not isinstance(reps.lag, Constant):
        raise ScenarioError(
            "replicas.lag",
            "labs can only impose a constant lag (Postgres recovery_min_apply_delay), got "
            f"{reps.lag.to_dict().get('dist')}; use lag = {{ dist = \"constant\", value = ... }}",
        )


def run_replication(scenario: Scenario, replication: int) -> dict[str, float]:
    """Simulate one replication; returns its value of every metric."""
    w = scenario.workload
    env = simpy.Environment()
    start, end = w.warmup, w.warmup + w.duration
    recorder = Recorder(env, start, end)
    workload = build(env, scenario, Streams(scenario.seed, replication), recorder)
    workload.start()
    env.run(until=end)
    if workload.pending:
        limit = env.timeout(max(DRAIN_MIN, DRAIN_FACTOR * w.duration))
        env.run(until=env.any_of([workload.drained, limit]))
    return recorder.results()


@dataclass(frozen=True)
class SimulationResult:
    """All replications of one scenario and their summary."""

    scenario: Scenario
    replications: tuple[dict[str, float], ...]
    metrics: dict[str, Estimate]

    def to_json(self) -> dict[str, object]:
        """The contract's JSON document."""
        return {
            "executor": "simlib",
            "scenario": self.scenario.name,
            "replications": len(self.replications),
            "seed": self.scenario.seed,
            "metrics": {name: est.to_json() for name, est in self.metrics.items()},
        }


def _run_one(args: tuple[Scenario, int]) -> dict[str, float]:
    return run_replication(*args)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_jobs(
    jobs: Sequence[tuple[Scenario, int]],
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, float]]:
    """Run (scenario, replication) jobs, in parallel when it helps; results in job order.

    ``progress`` is called once per finished job (a tqdm bar's ``update``).
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        return _collect(map(_run_one, jobs), progress)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as executor:
        return _collect(executor.map(_run_one, jobs), progress)


def _collect(
    results: Iterable[dict[str, float]], progress: Callable[[int], object] | None
) -> list[dict[str, float]]:
    collected = []
    for result in results:
        collected.append(result)
        if progress:
            progress(1)
    return collected


def simulate(scenario: Scenario, workers: int | None = None) -> SimulationResult:
    """Run every replication of ``scenario`` and summarise them."""
    jobs = [(scenario, r) for r in range(scenario.replications)]
    results = run_jobs(jobs, workers)
    return summarise_result(scenario, results)


def summarise_result(scenario: Scenario, results: Iterable[dict[str, float]]) -> SimulationResult:
    results = tuple(results)
    return SimulationResult(scenario, results, summarise(results))
