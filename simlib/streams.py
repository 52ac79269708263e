"""Seeded random streams: one independent stream per source of randomness.

Every random quantity in a simulation (inter-arrival times, service times,
connect times, think times, key choices, ...) is drawn from its own stream.
Each stream is seeded from three numbers only: the scenario's ``seed``, the
replication index, and a fixed index for the stream's name.  That gives:

* determinism: the same scenario and seed always produce the same numbers;
* independent replications: replication ``r`` uses ``SeedSequence(seed,
  spawn_key=(r, ...))``, which NumPy guarantees to be independent of the others;
* common random numbers across a sweep: changing ``pool_size`` does not change
  the arrival times a replication sees, so the comparison between two pool
  sizes is not blurred by different luck in the arrivals.

Numbers are drawn from NumPy in batches and handed out one at a time, because a
single NumPy call costs about as much as a thousand draws from a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from simlib.distributions import Distribution

#: Fixed stream indices.  Append new names at the end; never reorder, or old
#: results stop reproducing.
STREAM_NAMES: tuple[str, ...] = (
    "arrivals",
    "service",
    "connect",
    "think",
    "keys",
    "writes",
    "pool",
    "lag",
    "cache",
    "routing",
    "dispatch",
    "hold",
    "clients",
    "leaks",
    "leak_time",
    "gil",
    "instances",
    "pgbouncer",
    "pgbouncer_connect",
    "cold_start",
)

_BATCH = 4096


def generator(seed: int, replication: int, name: str) -> np.random.Generator:
    """A NumPy generator for stream ``name`` of replication ``replication``."""
    index = STREAM_NAMES.index(name)
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(replication, index)))
    )


class Sampler:
    """Draws one float at a time from a batch-generated sequence.

    ``draw(rng, n)`` must return ``n`` draws as a NumPy array.  Calling the
    sampler returns the next value; a new batch is drawn when one runs out.
    """

    __slots__ = ("_rng", "_draw", "_it")

    def __init__(
        self, rng: np.random.Generator, draw: Callable[[np.random.Generator, int], np.ndarray]
    ) -> None:
        self._rng = rng
        self._draw = draw
        self._it: Iterator[float] = iter(())

    def __call__(self) -> float:
        value = next(self._it, None)
        if value is None:
            # tolist() turns NumPy scalars into Python floats once per batch,
            # which keeps the arithmetic in the hot path on plain floats.
            self._it = iter(self._draw(self._rng, _BATCH).tolist())
            value = next(self._it)
        return value


class Streams:
    """All streams of one replication."""

    def __init__(self, seed: int, replication: int) -> None:
        self.seed = seed
        self.replication = replication

    def rng(self, name: str) -> np.random.Generator:
        return generator(self.seed, self.replication, name)

    def distribution(self, name: str, dist: Distribution) -> Sampler:
        """A sampler for ``dist`` on stream ``name``."""
        return Sampler(self.rng(name), dist.sample)

    def exponential(self, name: str, mean: float) -> Sampler:
        return Sampler(self.rng(name), lambda rng, n: rng.exponential(mean, n))

    def uniform(self, name: str) -> Sampler:
        """Uniform draws on [0, 1)."""
        return Sampler(self.rng(name), lambda rng, n: rng.random(n))

    def choice(self, name: str, probabilities: np.ndarray) -> Sampler:
        """Indices 0..len-1 drawn with the given probabilities (as floats)."""
        cdf = np.cumsum(probabilities)
        cdf /= cdf[-1]

        def draw(rng: np.random.Generator, n: int) -> np.ndarray:
            # Inverse-CDF lookup: one searchsorted per batch, exact for any
            # popularity vector, and much faster than rng.choice with p=.
            return np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)

        return Sampler(self.rng(name), draw)
