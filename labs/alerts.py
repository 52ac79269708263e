"""Alert thresholds from the model: how busy a pool may run before its p99 breaks the SLO.

An alert on a pool should fire before users notice, and not on every busy
minute.  The model answers where that line is: for the scenario's pool and
query, simlib predicts the p99 latency at a range of arrival rates; the
*utilisation* of each point is the time-average number of connections checked
out over the pool's size (``connections_busy_mean / pool.connection_limit()``,
what the exporter's ``dbpool_checked_out / dbpool_size`` measures live, see
:mod:`labs.monitoring`); the threshold is the utilisation at which the
predicted p99 crosses the SLO, linearly interpolated between the two sweep
points around the crossing.  The same crossing on the lower and upper ends of
each point's 95% interval gives the threshold's own interval.

:func:`alert_rule` renders it as a Prometheus alerting rule::

    avg_over_time(dbpool_checked_out[30s]) / dbpool_size > THRESHOLD   for: 5s

Averaged over a window because the instantaneous count of busy connections
jumps between 0 and the pool size many times a second, and utilisation is a
time average.

For an M/M/c queue (exponential service, FIFO waiting, no connect or reset
cost) the crossing has a closed form: the response time is the Erlang C wait
plus the service, so ``P(T > t) = (1 - C) e^{-μt} + C P(W' + S > t)`` with
``W' ~ Exp(cμ - λ)``; :meth:`simlib.theory.MMc.response_quantile` inverts it and
:func:`mmc_threshold` finds the λ where the p99 meets the SLO.  The tests hold
the simulated threshold against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from simlib import theory
from simlib.scenario import Scenario, ScenarioError
from simlib.sweep import sweep

__all__ = ["AlertThreshold", "CurvePoint", "alert_rule", "alert_threshold", "mmc_threshold"]


@dataclass(frozen=True)
class CurvePoint:
    """One rate of the sweep: utilisation and the predicted p99 with its 95% interval."""

    rate: float
    utilisation: float
    p99_ms: float
    p99_low_ms: float
    p99_high_ms: float


@dataclass(frozen=True)
class AlertThreshold:
    """Where the predicted p99 crosses the SLO (see the module doc)."""

    slo_p99_ms: float
    utilisation: float  # busy connections / pool size at the crossing
    utilisation_ci95: tuple[float, float]  # the same crossing on the interval's ends
    rate: float  # requests per second at the crossing (interpolated)
    pool_size: int  # the pool's limit the utilisation is relative to
    curve: tuple[CurvePoint, ...]

    def rule(self, **kw: str) -> str:
        """:func:`alert_rule` for this threshold."""
        return alert_rule(self.utilisation, **kw)


def _crossing(xs: Sequence[float], ys: Sequence[float], level: float) -> float | None:
    """The x at which the piecewise-linear y(x) first rises through ``level`` (None: never)."""
    for i in range(1, len(xs)):
        y0, y1 = ys[i - 1], ys[i]
        if y0 <= level < y1 or (math.isinf(y1) and y0 <= level):
            if math.isinf(y1) or y1 == y0:
                return xs[i - 1]
            return xs[i - 1] + (level - y0) * (xs[i] - xs[i - 1]) / (y1 - y0)
    return None


def _service_mean(s: Scenario) -> float:
    mean = getattr(s.query.service_time, "mean", None)
    if mean is None:
        mean = getattr(s.query.service_time, "value", None)
    if not isinstance(mean, int | float) or mean <= 0:
        raise ScenarioError("query.service_time", "alert_threshold needs a distribution with a "
                            "mean (constant, exponential, lognormal) to choose the rates, got "
                            f"{s.query.service_time!r}; pass rates= instead")
    return float(mean)


def _pool_limit(scenario: Scenario, slo_p99_ms: float) -> int:
    """The pool's connection limit, once the SLO and the workload are known to fit."""
    if not isinstance(slo_p99_ms, int | float) or not slo_p99_ms > 0 or math.isinf(slo_p99_ms):
        raise ScenarioError("slo_p99_ms", f"must be a number of milliseconds > 0, "
                            f"got {slo_p99_ms!r}")
    if scenario.workload.kind != "open":
        raise ScenarioError("workload.kind", "alert_threshold sweeps the arrival rate: must be "
                            f"'open', got {scenario.workload.kind!r}")
    limit = scenario.pool.connection_limit()
    if not limit:
        raise ScenarioError("pool", "alert_threshold: the pool must have a connection limit "
                            "(busy / pool size needs a size), got none")
    return int(limit)


def _sweep_rates(scenario: Scenario, limit: int, rates: Sequence[float] | None,
                 points: int) -> list[float]:
    """``rates`` checked, or ``points`` rates from 30% to 97% of ``limit / mean service``."""
    if rates is None:
        if points < 3:
            raise ScenarioError("points", f"must be >= 3, got {points}")
        capacity = limit / _service_mean(scenario)
        rates = [capacity * (0.3 + 0.67 * i / (points - 1)) for i in range(points)]
    rates = [float(r) for r in rates]
    if len(rates) < 2 or any(b <= a for a, b in zip(rates, rates[1:])) or rates[0] <= 0:
        raise ScenarioError("rates", f"must be at least two increasing rates > 0, got {rates}")
    return rates


def _curve(scenario: Scenario, rates: list[float], limit: int,
           workers: int | None) -> tuple[CurvePoint, ...]:
    """simlib at every rate: utilisation and the p99 with its interval."""
    table = sweep(scenario, {"workload.rate": rates}, workers=workers)
    return tuple(
        CurvePoint(float(row["workload.rate"]), float(row["connections_busy_mean"]) / limit,
                   float(row["latency_p99_ms"]), float(row["latency_p99_ms_low"]),
                   float(row["latency_p99_ms_high"]))
        for _, row in table.iterrows()
    )


def alert_threshold(
    scenario: Scenario,
    slo_p99_ms: float,
    rates: Sequence[float] | None = None,
    *,
    points: int = 10,
    workers: int | None = None,
) -> AlertThreshold:
    """The utilisation at which simlib's p99 for ``scenario`` crosses ``slo_p99_ms``.

    ``rates``: the arrival rates to sweep (increasing); default ``points``
    rates from 30% to 97% of the pool's capacity ``limit / mean service
    time``.  ``scenario`` must be an open workload whose pool has a limit.
    ScenarioError (one line) when the SLO is met at every rate, or broken at
    the lowest.
    """
    limit = _pool_limit(scenario, slo_p99_ms)
    rates = _sweep_rates(scenario, limit, rates, points)
    curve = _curve(scenario, rates, limit, workers)
    us = [p.utilisation for p in curve]
    if curve[0].p99_ms > slo_p99_ms:
        raise ScenarioError("slo_p99_ms", f"the predicted p99 is {curve[0].p99_ms:.1f} ms "
                            f"already at {rates[0]:g} req/s (utilisation {us[0]:.2f}): must be "
                            f"above it, got {slo_p99_ms:g} ms; lower the rates")
    mid = _crossing(us, [p.p99_ms for p in curve], slo_p99_ms)
    if mid is None:
        raise ScenarioError("slo_p99_ms", f"the predicted p99 stays under {slo_p99_ms:g} ms up "
                            f"to {rates[-1]:g} req/s (utilisation {us[-1]:.2f}): must be "
                            "crossed within the rates; sweep higher rates")
    # the upper end of the p99 interval crosses first: the threshold's lower end
    low = _crossing(us, [p.p99_high_ms for p in curve], slo_p99_ms)
    high = _crossing(us, [p.p99_low_ms for p in curve], slo_p99_ms)
    rate = _crossing([p.rate for p in curve], [p.p99_ms for p in curve], slo_p99_ms)
    return AlertThreshold(
        slo_p99_ms=float(slo_p99_ms),
        utilisation=mid,
        utilisation_ci95=(us[0] if low is None else low, us[-1] if high is None else high),
        rate=float(rate if rate is not None else math.nan),
        pool_size=limit,
        curve=curve,
    )


def alert_rule(
    threshold: float,
    *,
    name: str = "DbPoolSaturated",
    window: str = "30s",
    for_: str = "5s",
    group: str = "dbpool",
    severity: str = "warning",
) -> str:
    """A Prometheus rule file with one alert: busy / size averaged over ``window`` above
    ``threshold`` for ``for_`` (``threshold`` a utilisation in (0, 1])."""
    if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"threshold: must be a utilisation in (0, 1], got {threshold!r}")
    for label, value in (("name", name), ("group", group)):
        if not value.replace("_", "").isalnum():
            raise ValueError(f"{label}: must be letters, digits and _, got {value!r}")
    for label, value in (("window", window), ("for_", for_)):
        if not (value[:-1].isdigit() and value[-1] in "smh"):
            raise ValueError(f"{label}: must be a duration such as 30s, got {value!r}")
    expr = (f"avg_over_time(dbpool_checked_out[{window}]) / dbpool_size > {threshold:.4g}")
    return (
        "groups:\n"
        f"  - name: {group}\n"
        "    rules:\n"
        f"      - alert: {name}\n"
        f"        expr: {expr}\n"
        f"        for: {for_}\n"
        "        labels:\n"
        f"          severity: {severity}\n"
        "        annotations:\n"
        "          summary: 'pool {{ $labels.pool }} is {{ $value | humanizePercentage }} busy'\n"
        f"          description: 'above {threshold:.0%} busy the model predicts the p99 "
        "breaks the SLO'\n"
    )


# ---------------------------------------------------------------------------
# The closed form for M/M/c
# ---------------------------------------------------------------------------


def mmc_threshold(slo_seconds: float, service_rate: float, c: int, p: float = 0.99) -> float:
    """The utilisation ρ = λ/(cμ) at which the M/M/c ``p`` quantile of T equals the SLO."""
    if theory.mmc(1e-9, service_rate, c).response_quantile(p) >= slo_seconds:
        raise ValueError(f"slo: the {p:g} quantile of the service alone exceeds {slo_seconds} s")
    lo, hi = 0.0, c * service_rate * (1 - 1e-9)
    for _ in range(200):
        mid = (lo + hi) / 2
        if theory.mmc(mid, service_rate, c).response_quantile(p) < slo_seconds:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2 / (c * service_rate)
