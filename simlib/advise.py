"""Sizing: the smallest setting whose 95% interval meets every service-level objective.

``python -m simlib advise SCENARIO.toml --vary pool.pool_size=1..50 --slo
'latency_p99_ms<=50' --slo 'timeout_rate<=0.001'`` sweeps one setting (any
dotted key: a pool's size, PgBouncer's ``default_pool_size`` for a fleet,
``fleet.instances``) with the sweep machinery (:mod:`simlib.sweep`: every
replication of every value, on all cores, with a progress bar), then picks
the smallest value that meets every objective *with confidence*: for
``METRIC<=X`` the upper end of the metric's 95% interval must be at most X,
for ``METRIC>=X`` its lower end at least X.  A point estimate that only
happens to fall on the right side does not count.  A metric that is NaN
(no request completed) fails.

It then says how to set it in the scenario's library (the pool kind's
``call``, :class:`~simlib.pools.base.PoolKind`), and flags every value whose
worst case opens more connections than Postgres's ``max_connections``
(:func:`worst_case_connections`): a setting that meets its objectives in the
model can still take the server down when every process fills its pool at
once.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from simlib.metrics import METRICS
from simlib.pools import pool_kind
from simlib.scenario import Scenario, ScenarioError
from simlib.sweep import sweep

_SLO = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}


@dataclass(frozen=True, slots=True)
class Objective:
    """One service-level objective: ``metric op bound``, e.g. ``latency_p99_ms <= 50``."""

    metric: str
    op: str
    bound: float

    @property
    def upper(self) -> bool:
        """A ceiling (``<=``, ``<``): the interval's upper end must meet it."""
        return self.op.startswith("<")

    def met(self, value: float, low: float, high: float) -> bool:
        """Met with confidence: the interval's far end (the value without one) meets it."""
        edge = high if self.upper else low
        if math.isnan(edge):
            edge = value
        return not math.isnan(edge) and _OPS[self.op](edge, self.bound)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_objective(text: str) -> Objective:
    """``"latency_p99_ms<=50"`` -> Objective; one line on anything else."""
    match = _SLO.match(text) if isinstance(text, str) else None
    if match is None:
        raise ScenarioError("--slo", "must be METRIC<=NUMBER or METRIC>=NUMBER, such as "
                            "latency_p99_ms<=50", text)
    metric, op, bound = match.groups()
    if metric not in METRICS:
        raise ScenarioError("--slo", f"unknown metric {metric!r} (allowed: "
                            f"{', '.join(METRICS)})")
    try:
        value = float(bound)
    except ValueError:
        raise ScenarioError("--slo", f"the bound of {metric} must be a number", bound) from None
    if math.isnan(value):
        raise ScenarioError("--slo", f"the bound of {metric} must be a number", bound)
    return Objective(metric, op, value)


def worst_case_connections(scenario: Scenario) -> float:
    """The most connections Postgres may have to hold at once under this scenario (inf: no bound).

    PgBouncer in front: its server limit.  Serverless: one per environment,
    up to ``concurrency_limit`` (more, over time, as reclaimed environments
    leave theirs behind).  Otherwise every process's pool at its limit:
    ``instances x`` the pool's ``connection_limit()``.
    """
    if scenario.pgbouncer is not None:
        return float(scenario.pgbouncer.server_limit())
    if scenario.serverless is not None:
        return float(scenario.serverless.concurrency_limit)
    limit = scenario.pool.connection_limit()
    instances = 1 if scenario.fleet is None else scenario.fleet.instances
    return math.inf if limit is None else float(instances * limit)


def worst_case_clients(scenario: Scenario) -> float:
    """With PgBouncer: the client connections the applications' pools may open (inf: no bound).

    Past PgBouncer's ``max_client_conn`` the rest are refused at login.
    """
    limit = scenario.pool.connection_limit()
    instances = 1 if scenario.fleet is None else scenario.fleet.instances
    if scenario.serverless is not None:
        return float(scenario.serverless.concurrency_limit)
    return math.inf if limit is None else float(instances * limit)


@dataclass(frozen=True)
class Advice:
    """What :func:`advise` found: the recommendation, and the table behind it."""

    key: str
    objectives: tuple[Objective, ...]
    recommended: Any | None  # the smallest value meeting every objective; None: none does
    table: pd.DataFrame  # one row per value: the metrics, their intervals, the flags
    scenario: Scenario  # with the recommended value set (or the original, if none)

    def to_json(self) -> dict[str, object]:
        """The contract's document: ``{"recommended": {KEY: VALUE} or null, "table": [...]}``."""
        rows = []
        for record in self.table.to_dict(orient="records"):
            row: dict[str, object] = {self.key: _plain(record[self.key])}
            for metric in dict.fromkeys(o.metric for o in self.objectives):
                low, high = record[f"{metric}_low"], record[f"{metric}_high"]
                row[metric] = {
                    "value": _clean(record[metric]),
                    "ci95": None if math.isnan(low) else [_clean(low), _clean(high)],
                }
            row["meets_slo"] = bool(record["meets_slo"])
            row["worst_case_connections"] = _clean(record["worst_case_connections"])
            row["exceeds_max_connections"] = bool(record["exceeds_max_connections"])
            if "exceeds_max_client_conn" in record:
                row["exceeds_max_client_conn"] = bool(record["exceeds_max_client_conn"])
            rows.append(row)
        return {
            "recommended": None if self.recommended is None
            else {self.key: _plain(self.recommended)},
            "slo": [str(o) for o in self.objectives],
            "max_connections": self.scenario.database.max_connections,
            "table": rows,
        }


def advise(
    scenario: Scenario,
    key: str,
    values: Sequence[Any],
    objectives: Sequence[Objective],
    workers: int | None = None,
    progress: bool | Callable[[int], Any] = False,
) -> Advice:
    """Sweep ``key`` over ``values`` (smallest first) and pick the smallest that meets all."""
    if not objectives:
        raise ScenarioError("--slo", "give at least one objective, such as latency_p99_ms<=50")
    if not values:
        raise ScenarioError("--vary", "needs at least one value")
    ordered = sorted(values)
    table = sweep(scenario, {key: ordered}, workers=workers, progress=progress)
    meets = [all(o.met(row[o.metric], row[f"{o.metric}_low"], row[f"{o.metric}_high"])
                 for o in objectives) for row in table.to_dict(orient="records")]
    worst = [worst_case_connections(scenario.with_values({key: v})) for v in ordered]
    table["meets_slo"] = meets
    table["worst_case_connections"] = worst
    table["exceeds_max_connections"] = [w > scenario.database.max_connections for w in worst]
    if scenario.pgbouncer is not None:
        clients = [worst_case_clients(scenario.with_values({key: v})) for v in ordered]
        table["exceeds_max_client_conn"] = [
            c > scenario.with_values({key: v}).pgbouncer.max_client_conn  # type: ignore[union-attr]
            for c, v in zip(clients, ordered, strict=True)]
    recommended = next((v for v, ok in zip(ordered, meets, strict=True) if ok), None)
    chosen = scenario if recommended is None else scenario.with_values({key: recommended})
    return Advice(key, tuple(objectives), recommended, table, chosen)


def settings(scenario: Scenario) -> list[str]:
    """How to configure the scenario's library (and PgBouncer, a fleet) as it stands."""
    pool = scenario.pool
    kind = pool_kind(pool.kind)
    defaults = _defaults(type(pool))
    args = ", ".join(f"{k}={_code(v)}" for k, v in pool.to_dict().items()
                     if k != "kind" and defaults.get(k, object()) != v)
    lines = []
    if scenario.serverless is not None:
        s = scenario.serverless
        lines.append(f"# serverless: one connection per environment ({s.connection}), "
                     f"concurrency_limit = {s.concurrency_limit}")
    else:
        lines.append(kind.call.format(args=args or "# the library's defaults"))
    if scenario.fleet is not None:
        lines.append(f"# in each of the {scenario.fleet.instances} instances "
                     "(processes, Gunicorn workers)")
    if scenario.pgbouncer is not None:
        lines.append("# pgbouncer.ini, [pgbouncer] section:")
        config = scenario.pgbouncer.to_dict()
        for name in ("network_rtt", "connect_time"):  # the model's, not PgBouncer's
            config.pop(name, None)
        lines += [f"{k} = {_ini(v)}" for k, v in config.items()]
    return lines


def _defaults(config: type) -> Mapping[str, object]:
    try:
        defaults: Mapping[str, object] = config().to_dict()
        return defaults
    except TypeError:  # a kind with required parameters: show them all
        return {}


def _code(value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return 'float("inf")' if value > 0 else '-float("inf")'
    return repr(value)


def _ini(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _clean(x: object) -> float | None:
    value = float(x)  # type: ignore[arg-type]
    return None if math.isnan(value) else value


def _plain(value: object) -> object:
    """A NumPy scalar from the table as a plain Python number, for JSON."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
