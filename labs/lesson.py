"""What the course notebooks share: a lesson's servers, predict / measure / compare, checks,
tables, figures and sliders.

A lesson (``notebooks/NN-*.ipynb``) follows one pattern -- predict with simlib,
measure with labs, put the two side by side, explain -- and this module keeps
each of those steps to one line in a notebook cell, so the cells show the
idea rather than plumbing:

* :class:`Lab` starts the servers a lesson needs once (throwaway local ones,
  or those the ``LABS_*`` variables name, as every labs command finds them),
  runs scenarios live on them, and stops them at the end of the notebook
  (``lab.close()``, or at interpreter exit);
* :func:`predict` simulates; :meth:`Lab.measure` runs live; :meth:`Lab.compare`
  calibrates, predicts and runs (labs.compare); :meth:`Lab.compare_and_check`
  does that and checks the result, repeating a run that a busy machine spoilt;
  :func:`what_if` re-simulates with the inputs measured during a live run;
* :func:`side_by_side` is the table a lesson shows, and :func:`check`
  (:func:`at_least`, :func:`at_most` for one-sided claims) the assertion that
  makes a live cell fail nbval when the lab and the model disagree beyond the
  lesson's stated tolerance;
* :func:`plot_side_by_side`, :func:`plot_sweep` draw the figures;
* :func:`explore` wires ipywidgets sliders to a re-simulation and a redraw.

Scenarios are built from plain dicts (:func:`scenario`), so a notebook shows
every setting it uses in one place.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from labs import host
from labs.calibrate import Calibration, calibrate
from labs.compare import Comparison, run_comparison
from labs.executor import LiveResult, run_live
from labs.services import ServiceError, configure, configure_pgbouncer, services_for
from simlib.metrics import Estimate
from simlib.scenario import Scenario, parse_scenario
from simlib.simulation import SimulationResult, check_supported, simulate

__all__ = [
    "Lab",
    "at_least",
    "at_most",
    "check",
    "explore",
    "plot_side_by_side",
    "plot_sweep",
    "predict",
    "scenario",
    "side_by_side",
    "wait_for_quiet",
    "what_if",
]

#: Names shown in tables and figures instead of the metric keys.
LABELS = {
    "throughput_rps": "throughput (req/s)",
    "latency_mean_ms": "mean latency (ms)",
    "latency_p50_ms": "p50 latency (ms)",
    "latency_p95_ms": "p95 latency (ms)",
    "latency_p99_ms": "p99 latency (ms)",
    "checkout_mean_ms": "mean checkout (ms)",
    "checkout_p95_ms": "p95 checkout (ms)",
    "p_wait": "P(wait)",
    "timeout_rate": "timeout rate",
    "error_rate": "error rate",
    "connections_opened_per_s": "connections opened/s",
    "connections_mean": "connections (mean)",
    "cache_hit_ratio": "cache hit ratio",
    "stale_read_ratio": "stale read ratio",
    "db_queries_per_s": "database queries/s",
    "replica_read_share": "reads on replicas",
    "query_mean_ms": "query (ms)",
    "idle_in_transaction_mean": "sessions idle in transaction (mean)",
    "server_connections_max": "Postgres connections (max)",
    "server_connections_mean": "Postgres connections (mean)",
    "server_connections_opened_per_s": "Postgres connections opened/s",
    "server_refused_per_s": "refused by Postgres/s",
    "pgbouncer_wait_mean_ms": "wait in PgBouncer (ms)",
    "pgbouncer_xact_mean_ms": "transaction in PgBouncer (ms)",
    "cold_start_rate": "cold-start share",
    "throttle_rate": "throttled share",
    "environments_mean": "environments (mean)",
}

# Axis labels of the settings a sweep varies, and how one of their values reads in a legend.
SETTING_LABELS = {
    "pool.pool_size": ("pool_size (connections)", "pool_size {:g}"),
    "pool.max_overflow": ("max_overflow (connections)", "max_overflow {:g}"),
    "pool.pool_timeout": ("pool_timeout (s)", "pool_timeout {:g} s"),
    "workload.rate": ("request rate (req/s)", "{:g} req/s"),
    "fleet.instances": ("instances", "{:g} instances"),
    "pgbouncer.default_pool_size": ("PgBouncer default_pool_size", "default_pool_size {:g}"),
    "cache.ttl": ("cache TTL (s)", "TTL {:g} s"),
}


def setting_label(name: str, value: Any = None) -> str:
    """A swept setting for an axis (``value`` None) or one of its values for a legend."""
    short = name.rsplit(".", 1)[-1]
    axis, legend = SETTING_LABELS.get(name, (short, short + " {:g}"))
    if value is None:
        return axis
    try:
        return legend.format(float(value))
    except (TypeError, ValueError):
        return legend.replace("{:g}", "{}").format(value)


def scenario(data: Mapping[str, Any], **sections: Mapping[str, Any]) -> Scenario:
    """A validated scenario from a dict (the TOML file's structure), with sections merged in.

    ``scenario(base, pool={"pool_size": 8})`` updates ``base["pool"]`` with
    ``pool_size = 8``; other sections are copied as they are.
    """
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v
                              for k, v in data.items()}
    for name, values in sections.items():
        if values is None:
            merged.pop(name, None)
        elif isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **values}
        else:
            merged[name] = dict(values)
    return parse_scenario(merged)


def predict(s: Scenario, workers: int | None = None) -> SimulationResult:
    """simlib's prediction: every replication of ``s``, with 95% intervals."""
    return simulate(s, workers=workers)


#: Scheduler lag p99 above this (ms): the load generator fell behind its schedule.
LAG_LIMIT_MS = 50.0


class Lab:
    """The servers of one lesson: started on first use, stopped by :meth:`close`.

    ``Lab(replicas=1, redis=True)`` asks for a streaming replica and a Redis
    too; ``Lab(pgbouncer=True)`` for a PgBouncer in front of the primary
    (each scenario's ``[pgbouncer]`` reaches it through its admin console);
    ``Lab(prometheus=True)`` for a Prometheus server that scrapes a pool
    exporter (``labs.services.local_prometheus(lab.svc)``, :mod:`labs.monitoring`).
    Servers come from where every labs command finds them (the ``LABS_*``
    variables, ``python -m labs services up``, else throwaway local servers
    started now); ``source`` says which.
    """

    def __init__(
        self,
        *,
        replicas: int = 0,
        redis: bool = False,
        max_connections: int = 100,
        replica_delay: float = 0.0,
        pgbouncer: bool = False,
        prometheus: bool = False,
    ) -> None:
        self._stack = contextlib.ExitStack()
        extra: dict[str, object] = {"pgbouncer": True} if pgbouncer else {}
        if prometheus:
            extra["prometheus"] = True
        self.svc = self._stack.enter_context(
            services_for(replicas=replicas, redis=redis, max_connections=max_connections,
                         replica_delay=replica_delay, **extra)
        )
        self._calibration: Calibration | None = None

    @property
    def source(self) -> str:
        return self.svc.source

    def _ready(self, s: Scenario) -> None:
        """Refuse what labs cannot run, configure the servers, wait for a quiet machine."""
        check_supported(s)
        configure(s, self.svc)
        wait_for_quiet()

    def measure(self, s: Scenario, **kw: Any) -> LiveResult:
        """Run ``s`` live once (labs.executor.run_live), on a quiet machine."""
        self._ready(s)
        return _off_the_loop(lambda: run_live(s, self.svc.topology, **kw))

    def compare(self, s: Scenario, **kw: Any) -> Comparison:
        """Calibrate (the server once per Lab), predict and run ``s`` (labs.compare).

        Like :meth:`measure`, it first waits for the machine to be quiet.
        """
        self._ready(s)
        if self._calibration is None:
            self._calibration = calibrate(self.svc.topology.primary.dsn)
        calibration = self._calibration
        return _off_the_loop(lambda: run_comparison(
            s, self.svc.topology, calibration=calibration, **kw))

    def compare_and_check(
        self,
        s: Scenario,
        checks: Callable[[Any], list[str]] | Mapping[str, Mapping[str, float]],
        *,
        attempts: int = 4,
        lag_limit_ms: float = LAG_LIMIT_MS,
        **kw,
    ) -> tuple[Any, list[str]]:
        """:meth:`compare` ``s`` and check the result; ``(comparison, verdicts)``.

        ``checks`` is either a function of the comparison returning verdict
        lines (raising AssertionError on a miss, as :func:`check` does), or a
        mapping ``{metric: {"rel": r}}`` / ``{"abs": a}`` checking the
        measured value against the prediction.

        The lab shares two cores with everything else on the machine.  Every
        run waits for the machine to be quiet first (:func:`wait_for_quiet`),
        and a run whose load generator fell behind its schedule (scheduler lag
        p99 above ``lag_limit_ms``: it measured the client, not the pool) or
        whose checks missed is run again, up to ``attempts`` runs; the last
        miss is raised, so a lab that really disagrees still fails the cell.
        """
        if isinstance(checks, Mapping):
            checks = _tolerance_checks(checks)
        attempt = 0
        while True:
            attempt += 1
            cmp = self.compare(s, **kw)
            lag = cmp.live.metrics["scheduler_lag_p99_ms"]
            try:
                if lag > lag_limit_ms:
                    raise AssertionError(
                        f"the load generator fell behind its schedule (scheduler lag p99 "
                        f"{lag:.0f} ms), so this run measured the client, not the pool")
                return cmp, checks(cmp)
            except AssertionError as miss:
                if attempt == attempts:
                    raise
                busy = cmp.live.details["cpu"]["host_busy_cores"]
                busy_note = f"host busy {busy:.1f} cores" if busy is not None else "host busy ?"
                print(f"run {attempt} missed ({busy_note}): {miss}; running it again")
                for e in cmp.live.details.get("errors_top", [])[:2]:
                    print(f"  {e['count']} x {e['error'][:120]}")
                time.sleep(3 * attempt)  # let a neighbour's burst pass

    def pgbouncer(self, **settings: object) -> str:
        """The Lab's PgBouncer, given ``settings`` (``[pgbouncer]`` names); its DSN.

        For trying PgBouncer by hand (``psycopg2.connect(lab.pgbouncer(pool_mode=
        "transaction", default_pool_size=1))``).  ServiceError, in one line,
        when the Lab has no PgBouncer (``Lab(pgbouncer=True)``).
        """
        dsn = self.svc.pgbouncer
        if dsn is None:
            raise ServiceError("pgbouncer: this Lab has none; make it with Lab(pgbouncer=True)")
        config = parse_scenario({"name": "lab-pgbouncer", "pgbouncer": dict(settings)}).pgbouncer
        assert config is not None
        configure_pgbouncer(config, self.svc)
        return dsn

    def close(self) -> None:
        """Stop the servers this Lab started (safe to call twice)."""
        self._stack.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_quiet(
    cores: float = 0.5, patience: float = 120.0, quiet_for: float = 1.0
) -> float | None:
    """Wait (up to ``patience`` s) until the machine uses less than ``cores`` CPU cores.

    A live run measures latencies of a few milliseconds on a two-core machine
    it shares with its own Postgres; another program's burst (a test suite, a
    compiler, a second notebook) shows up as scheduler lag and prediction
    error.  Between runs the notebook itself is idle, so whatever /proc/stat
    shows busy is someone else.  Returns the last reading (None without
    /proc); after ``patience`` seconds the run goes ahead anyway, and its own
    checks decide.
    """
    deadline = time.monotonic() + patience
    busy = host.busy_cores(quiet_for)
    waited = False
    while busy is not None and busy > cores and time.monotonic() < deadline:
        if not waited:
            print(f"(the machine is busy: {busy:.1f} cores in use; waiting for it to calm down)")
            waited = True
        busy = host.busy_cores(quiet_for)
    return busy


def what_if(comparison: Any) -> tuple[SimulationResult, dict]:
    """simlib again, with the inputs measured *during* a live run: ``(result, inputs)``.

    The prediction of a comparison uses connect times and client costs
    calibrated before the run; this one uses the connect times, dispatch and
    hold costs the run's own requests showed (:meth:`labs.compare.Comparison.measured_inputs`).
    Where the two predictions differ, the machine changed under the run; where
    this one agrees with the measurement, the model's queueing is right.
    ``inputs`` has the means: ``connect_ms``, ``dispatch_ms``, ``hold_ms``.
    """
    return comparison.what_if()


def _tolerance_checks(tolerances: Mapping[str, Mapping[str, float]]) -> Callable[[Any], list[str]]:
    def checks(cmp: Any) -> list[str]:
        return [check(name, cmp.live.metrics[name], cmp.simulation.metrics[name].value, **tol)
                for name, tol in tolerances.items()]
    return checks


def _off_the_loop(call: Callable[[], Any]) -> Any:
    """``call()``, on a worker thread when this thread already runs an event loop.

    A Jupyter kernel runs its cells inside an asyncio loop, and the asyncpg
    executor starts a loop of its own (``asyncio.Runner``), which asyncio
    refuses inside a running one.  A worker thread has no loop, so the run
    goes there and the cell waits for it.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labs-lesson") as pool:
        return pool.submit(call).result()


# ---------------------------------------------------------------------------
# Tables and checks
# ---------------------------------------------------------------------------


def _estimates(result: Any) -> dict[str, Estimate]:
    """Metric estimates from a SimulationResult, a LiveResult, or a contract JSON document."""
    if isinstance(result, SimulationResult):
        return dict(result.metrics)
    metrics = getattr(result, "metrics", None)
    if isinstance(metrics, Mapping):  # LiveResult: plain floats
        return {k: Estimate(float(v), None) for k, v in metrics.items()}
    if isinstance(result, Mapping) and "metrics" in result:
        out = {}
        for k, m in result["metrics"].items():
            v = m.get("value")
            ci = m.get("ci95")
            out[k] = Estimate(math.nan if v is None else float(v),
                              None if ci is None or None in ci else (ci[0], ci[1]))
        return out
    raise TypeError(f"no metrics in {type(result).__name__}")


def _comparison_parts(predicted: Any, measured: Any) -> tuple[Any, Any]:
    # A labs.compare.Comparison carries both.
    if measured is None and hasattr(predicted, "simulation") and hasattr(predicted, "live"):
        return predicted.simulation, predicted.live
    return predicted, measured


def side_by_side(
    predicted: Any,
    measured: Any = None,
    metrics: Sequence[str] = ("throughput_rps", "latency_mean_ms", "latency_p95_ms"),
    digits: int = 3,
) -> pd.DataFrame:
    """Predicted (with its 95% interval) beside measured, and the error, one row per metric.

    ``predicted``: a SimulationResult (or a labs Comparison, then ``measured``
    is left out); ``measured``: a LiveResult or a JSON document.  Errors are
    predicted minus measured, as ``labs compare`` and ``labs validate`` give
    them: relative to the measurement for times and rates, absolute for
    shares (ratios, rates of failures), as the lessons' tolerances are.
    """
    predicted, measured = _comparison_parts(predicted, measured)
    p, m = _estimates(predicted), _estimates(measured)
    rows = []
    for name in metrics:
        est = p.get(name, Estimate(math.nan, None))
        value = m.get(name, Estimate(math.nan, None)).value
        low, high = est.ci95 if est.ci95 is not None else (math.nan, math.nan)
        share = _is_share(name)
        if share:
            error = est.value - value
        else:
            error = (est.value - value) / value if value else math.nan
        rows.append({
            "metric": LABELS.get(name, name),
            "predicted": round(est.value, digits),
            "95% low": round(low, digits),
            "95% high": round(high, digits),
            "measured": round(value, digits),
            "error": (f"{error:+.3f}" if share else f"{error:+.0%}")
            if math.isfinite(error) else "-",
        })
    return pd.DataFrame(rows).set_index("metric")


def _is_share(name: str) -> bool:
    return name in {"p_wait", "timeout_rate", "error_rate", "cache_hit_ratio",
                    "stale_read_ratio", "replica_read_share", "incomplete_rate",
                    "cache_coalesced_ratio", "cold_start_rate", "throttle_rate"}


def check(
    name: str,
    measured: float,
    predicted: float,
    *,
    rel: float | None = None,
    abs: float | None = None,  # noqa: A002 - reads as the tolerance it is
) -> str:
    """Assert ``measured`` is within the tolerance of ``predicted``; return a one-line verdict.

    ``rel``: relative to the prediction; ``abs``: absolute (for shares).  A
    live cell calls this so that a lab that no longer agrees with the model
    fails the notebook's test, with a message saying by how much.
    """
    if (rel is None) == (abs is None):
        raise ValueError("check: give exactly one of rel= or abs=")
    diff = measured - predicted
    # Said in words ("above"/"below" the prediction), not as a signed error:
    # side_by_side's error column is predicted minus measured, as labs reports it.
    side = "above" if diff > 0 else "below"
    if rel is not None:
        ok = math.isfinite(diff) and builtins.abs(diff) <= rel * builtins.abs(predicted)
        how = (f"{builtins.abs(diff / predicted):.1%} {side}" if predicted
               else f"{builtins.abs(diff):g} {side}")
        bound = f"±{rel:.0%}"
    else:
        assert abs is not None
        ok = math.isfinite(diff) and builtins.abs(diff) <= abs
        how = f"{builtins.abs(diff):.3f} {side}"
        bound = f"±{abs:g}"
    relation = (f"{how} the prediction" if diff else "equal to the prediction") \
        if math.isfinite(diff) else "not comparable with the prediction"
    verdict = (f"{LABELS.get(name, name)}: measured {measured:.4g}, predicted {predicted:.4g}: "
               f"{relation} (tolerance {bound})")
    if not ok:
        raise AssertionError("lab and model disagree: " + verdict)
    return "ok: " + verdict


def at_least(name: str, measured: float, floor: float) -> str:
    """Assert ``measured >= floor`` (a one-sided claim); return a one-line verdict."""
    verdict = f"{LABELS.get(name, name)}: measured {measured:.4g}, at least {floor:.4g}"
    if not measured >= floor:
        raise AssertionError("lab and model disagree: " + verdict)
    return "ok: " + verdict


def at_most(name: str, measured: float, ceiling: float) -> str:
    """Assert ``measured <= ceiling`` (a one-sided claim); return a one-line verdict."""
    verdict = f"{LABELS.get(name, name)}: measured {measured:.4g}, at most {ceiling:.4g}"
    if not measured <= ceiling:
        raise AssertionError("lab and model disagree: " + verdict)
    return "ok: " + verdict


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def plot_side_by_side(
    predicted: Any,
    measured: Any = None,
    metrics: Sequence[str] = ("latency_mean_ms", "latency_p95_ms"),
    title: str = "",
    ax=None,
):
    """Bars: predicted (with its 95% interval as an error bar) beside measured, per metric."""
    import matplotlib.pyplot as plt
    import numpy as np

    predicted, measured = _comparison_parts(predicted, measured)
    p, m = _estimates(predicted), _estimates(measured)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.2))
    x = np.arange(len(metrics))
    pv = [p[n].value if n in p else math.nan for n in metrics]
    def half(n: str, side: int) -> float:
        ci = p[n].ci95 if n in p else None
        return 0.0 if ci is None else abs(ci[side] - p[n].value)

    err = [[half(n, 0) for n in metrics], [half(n, 1) for n in metrics]]
    mv = [m[n].value if n in m else math.nan for n in metrics]
    ax.bar(x - 0.2, pv, 0.4, yerr=err, capsize=3, label="predicted (simlib)", color="#4C72B0")
    ax.bar(x + 0.2, mv, 0.4, label="measured (labs)", color="#DD8452")
    ax.set_xticks(x, [LABELS.get(n, n) for n in metrics], rotation=15, ha="right")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax


def plot_sweep(
    table: pd.DataFrame,
    x: str,
    metric: str,
    *,
    by: str | None = None,
    ax=None,
    label: str | None = None,
    **plot_kw,
):
    """A metric against one swept setting, with its 95% band (one line per ``by`` value).

    The band is the replications' t-interval of the mean, which knows nothing of
    a metric's range: a share near 0 (a timeout rate of 0.002 from 3
    replications) gets a band reaching below 0.  It is clipped to the values
    the metric can take, [0, 1] for a share and [0, ∞) for the rest.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.4))
    groups = [(None, table)] if by is None else list(table.groupby(by))
    top = 1.0 if _is_share(metric) else None
    for key, part in groups:
        part = part.sort_values(x)
        if label is not None:
            name = label
        elif by is None:
            name = LABELS.get(metric, metric)
        else:
            name = setting_label(by, key)
        line, = ax.plot(part[x], part[metric], marker="o", label=name, **plot_kw)
        low, high = f"{metric}_low", f"{metric}_high"
        if low in part and high in part:
            ax.fill_between(part[x], part[low].clip(lower=0.0),
                            part[high].clip(lower=0.0, upper=top),
                            alpha=0.2, color=line.get_color())
    ax.set_xlabel(setting_label(x))
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.legend(frameon=False)
    ax.figure.tight_layout()
    return ax


# ---------------------------------------------------------------------------
# Sliders
# ---------------------------------------------------------------------------


def explore(
    build: Callable[..., Scenario],
    metrics: Sequence[str],
    *,
    replications: int = 3,
    **sliders,
):
    """Sliders for ``build``'s keyword arguments; each change re-simulates and redraws.

    ``build(**values)`` returns the scenario for the sliders' values;
    ``sliders`` are ipywidgets (``IntSlider``, ``FloatSlider``, ...).  The
    simulation uses ``replications`` replications, few enough to redraw in
    about a second; the figure shows the metrics with their 95% intervals.
    Returns the widget: the cell that ends with it displays it.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def redraw(**values):
        s = build(**values).with_values({"replications": replications})
        result = simulate(s, workers=1)
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8),
                                 squeeze=False)
        for ax, name in zip(axes[0], metrics, strict=True):
            est = result.metrics.get(name, Estimate(math.nan, None))
            lo, hi = est.ci95 if est.ci95 else (est.value, est.value)
            ax.bar([0], [est.value], yerr=[[est.value - lo], [hi - est.value]], capsize=4,
                   color="#4C72B0")
            ax.set_xticks([])
            ax.set_title(f"{LABELS.get(name, name)}\n{est.value:.3g}", fontsize=9)
        fig.tight_layout()
        plt.show()

    out = widgets.interactive_output(redraw, dict(sliders))
    return widgets.VBox([widgets.HBox(list(sliders.values())), out])
