"""Parameter sweeps: one scenario, a grid of overrides, every combination.

``sweep(scenario, {"pool.pool_size": [1, 2, 4], "workload.rate": [100, 200]})``
runs every combination with all of the scenario's replications, spread over
all cores, and returns a pandas DataFrame with one row per point: the grid
values, then for every metric its value and its 95% interval
(``<metric>``, ``<metric>_low``, ``<metric>_high``).  The command line writes
the same table as CSV, plus a plot.

Grid values on the command line: ``KEY=1..20`` (integers 1 to 20),
``KEY=0.5..2..0.5`` (start, stop, step; stop included), ``KEY=100,200,400``
(a list), or a single value.  Each value is read as TOML, as with ``--set``.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from simlib.metrics import METRICS, Estimate, summarise
from simlib.scenario import Scenario, ScenarioError
from simlib.simulation import run_jobs

NAN_ESTIMATE = Estimate(math.nan, None)

MAX_POINTS = 10_000


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_grid(spec: str) -> tuple[str, list[Any]]:
    """``"pool.pool_size=1..4"`` -> ``("pool.pool_size", [1, 2, 3, 4])``."""
    key, sep, values = spec.partition("=")
    key, values = key.strip(), values.strip()
    if not sep or not key or not values:
        raise ScenarioError(
            "--grid",
            f"must be KEY=VALUES with VALUES like 1..20, 0.5..2..0.5 or 100,200,400, got {spec!r}",
        )
    if ".." in values:
        parts = [_value(p) for p in values.split("..")]
        numeric = all(isinstance(p, int | float) and not isinstance(p, bool) for p in parts)
        if len(parts) not in (2, 3) or not numeric:
            raise ScenarioError(
                f"--grid {key}",
                f"a range must be START..STOP or START..STOP..STEP of numbers, got {values!r}",
            )
        start, stop = parts[0], parts[1]
        step = parts[2] if len(parts) == 3 else 1
        if step <= 0 or stop < start:
            raise ScenarioError(
                f"--grid {key}", f"a range needs STOP >= START and STEP > 0, got {values!r}"
            )
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_POINTS:
            raise ScenarioError(f"--grid {key}", f"at most {MAX_POINTS} values, got {count}")
        if all(isinstance(p, int) for p in (start, stop, step)):
            return key, list(range(start, stop + 1, step))
        return key, [round(start + i * step, 12) for i in range(count)]
    return key, [_value(v.strip()) for v in values.split(",") if v.strip()]


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def sweep(
    scenario: Scenario,
    grid: Mapping[str, Sequence[Any]],
    workers: int | None = None,
    progress: bool | Callable[[int], Any] = False,
) -> pd.DataFrame:
    """Run every grid point; one row per point with every metric and its interval."""
    combos = points(grid)
    if len(combos) > MAX_POINTS:
        raise ScenarioError("--grid", f"at most {MAX_POINTS} points in all, got {len(combos)}")
    scenarios = [scenario.with_values(combo) for combo in combos]  # validates every point first
    jobs = [(s, r) for s in scenarios for r in range(s.replications)]
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"sweep {scenario.name}", unit="run")
        progress = bar.update
    try:
        results = run_jobs(jobs, workers, progress or None)
    finally:
        if bar is not None:
            bar.close()
    rows = []
    i = 0
    for combo, s in zip(combos, scenarios, strict=True):
        estimates = summarise(results[i : i + s.replications])
        i += s.replications
        row: dict[str, Any] = dict(combo)
        for name in METRICS:
            # A metric that does not apply (no cache...) is NaN in every column.
            est = estimates.get(name, NAN_ESTIMATE)
            row[name] = est.value
            row[f"{name}_low"] = est.ci95[0] if est.ci95 else math.nan
            row[f"{name}_high"] = est.ci95[1] if est.ci95 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


PLOTTED = (
    ("throughput_rps", "throughput (req/s)"),
    ("latency_p95_ms", "latency p95 (ms)"),
    ("latency_mean_ms", "latency mean (ms)"),
    ("timeout_rate", "timeout rate"),
    ("p_wait", "P(wait)"),
    ("connections_mean", "open connections (mean)"),
)


def plot_sweep(table: pd.DataFrame, grid_keys: Sequence[str], title: str, path: str) -> None:
    """Key metrics against the first grid key, one line per value of the second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simlib.files import atomic_savefig

    x = grid_keys[0]
    series_key = grid_keys[1] if len(grid_keys) > 1 else None
    others = list(grid_keys[2:])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    groups: Iterable[tuple[object, pd.DataFrame]] = (
        table.groupby(series_key, sort=False) if series_key else [(None, table)]
    )
    for value, group in groups:
        if others:  # more than two grid keys: plot the first value of the rest
            first = group.iloc[0]
            for k in others:
                group = group[group[k] == first[k]]
        label = f"{series_key}={value}" if series_key else None
        for ax, (metric, ylabel) in zip(axes.flat, PLOTTED, strict=True):
            ax.plot(group[x], group[metric], marker="o", ms=3, label=label)
            ax.fill_between(group[x], group[f"{metric}_low"], group[f"{metric}_high"], alpha=0.2)
            ax.set_xlabel(x)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    if series_key:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(title + ("" if not others else f" (at the first value of {', '.join(others)})"))
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
