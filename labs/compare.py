"""``labs compare``: calibrate, predict with simlib, measure with labs, side by side.

``compare(scenario, dsn)`` does, in order:

1. :func:`labs.calibrate.calibrate` on the live server at ``dsn``: connect
   time (with a new backend's first query), round trip, query overhead;
2. :func:`labs.calibrate.calibrate_client`: a short light-load run of the
   scenario's own pool library, measuring what the client itself costs per
   request (``dispatch`` before a connection is in hand, ``hold`` while it is);
3. the *predicted* scenario: ``database.connect_time`` becomes
   ``empirical(calibrated connect samples)``, ``database.network_rtt``
   becomes ``rtt + query_overhead``, ``[client]`` gets the dispatch and
   hold samples, and for CPU-bound queries ``database.cores`` becomes this
   machine's core count (the live server runs here);
4. ``simulate`` the predicted scenario and ``run_live`` the original one;
5. returns the contract document ``{"simulated", "measured", "calibration"}``
   plus ``"errors": {metric: {predicted, measured, abs_error, rel_error}}``
   (``abs_error = predicted - measured``, ``rel_error = abs_error / measured``,
   ``null`` where measured is 0 or either side is missing) and
   ``"single_run_range"``: per metric, where one run falls with 95%
   probability according to the simulation's replications (a live run is one
   run, with its own sampling noise, so this is the range to judge it by).

Everything the prediction uses is measured *before* the live run and at a
different operating point (idle server, light load), so the comparison
tests the model, not a fit to the run it predicts.

Why the query overhead goes into the round trip rather than the service time:
simlib pays ``network_rtt`` exactly once per query (``rtt + service_time`` in
one step, see simlib/workload.py), so adding the overhead there shifts every
query by it without changing the *shape* of the scenario's service-time
distribution (an exponential with a larger mean would also widen its tail,
which the real overhead does not do).  The price: the same rtt is also paid
by a pre-ping and by the reset (ROLLBACK) of a returned connection, which
then also carry the overhead; the client calibration subtracts exactly what
simlib charges, so the total per request stays right.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from labs.calibrate import Calibration, ClientCalibration, calibrate, calibrate_client
from simlib.metrics import prediction_interval
from simlib.scenario import Scenario
from simlib.simulation import SimulationResult, simulate


def _num(x: object) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def errors(simulated: dict, measured: dict) -> dict[str, dict[str, float | None]]:
    """Per metric present in both documents: predicted, measured and their errors."""
    sim = simulated.get("metrics", {})
    live = measured.get("metrics", {})
    out: dict[str, dict[str, float | None]] = {}
    for name in sim:
        if name not in live:
            continue
        p, m = _num(sim[name].get("value")), _num(live[name].get("value"))
        abs_error = None if p is None or m is None else p - m
        rel_error = None if abs_error is None or m == 0 else abs_error / m
        out[name] = {"predicted": p, "measured": m, "abs_error": abs_error,
                     "rel_error": rel_error}
    return out


def single_run_ranges(result: SimulationResult) -> dict[str, list[float] | None]:
    """Per metric: the 95% range of one run, from the simulation's replications."""
    out: dict[str, list[float] | None] = {}
    for name in result.metrics:
        pi = prediction_interval([r[name] for r in result.replications if name in r])
        out[name] = None if pi is None or not all(map(math.isfinite, pi)) else list(pi)
    return out


def predicted_scenario(
    scenario: Scenario,
    cal: Calibration,
    client: ClientCalibration | None = None,
    keyed: dict | None = None,
) -> Scenario:
    """``scenario`` with the machine-dependent inputs set from the calibrations.

    ``database.connect_time`` and ``database.network_rtt`` from ``cal``;
    ``client.dispatch`` and ``client.hold`` from ``client`` (empirical
    distributions of the samples), when given; ``cache.hit_time`` and the
    replicas' constant ``lag`` from ``keyed`` (:func:`calibrate_keyed`).
    """
    values: dict[str, object] = {
        "database.connect_time": {"dist": "empirical", "samples": list(cal.connect_times)},
        "database.network_rtt": cal.rtt + cal.query_overhead,
    }
    if client is not None:
        values["client.dispatch"] = {"dist": "empirical", "samples": list(client.dispatch)}
        values["client.hold"] = {"dist": "empirical", "samples": list(client.hold)}
    if keyed:
        if keyed.get("hit_time") is not None and scenario.cache is not None:
            values["cache.hit_time"] = keyed["hit_time"]
        if keyed.get("lag") is not None and scenario.replicas is not None:
            values["replicas.lag"] = {"dist": "constant", "value": keyed["lag"]}
    if scenario.query.cpu_bound:
        # The live server burns its CPU-bound queries on this machine's cores
        # (calibration is loopback only), whatever the scenario says.
        values["database.cores"] = machine_cores()
    return scenario.with_values(values)


def machine_cores() -> int:
    """Cores a local server can use (the process's CPU affinity, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Comparison:
    """Everything one comparison produced; ``document`` is what ``--json`` prints."""

    document: dict
    predicted: Scenario  # the calibrated scenario simlib ran
    simulation: SimulationResult
    live: object  # labs.executor.LiveResult (records included)


def run_comparison(
    scenario: Scenario,
    dsn: str,
    *,
    samples: int = 50,
    progress: bool = False,
    calibration: Calibration | None = None,
    admin_dsn: str | None = None,
    client_costs: bool = True,
    replications: int | None = None,
    replicas: Sequence[str] = (),
    redis_url: str | None = None,
) -> Comparison:
    """:func:`compare`, keeping the simulation and the live result (with its records).

    ``replications``: simulate this many replications instead of the
    scenario's own (``labs validate`` uses more, for tighter ranges).
    """
    from labs.executor import run_live

    cal = calibration if calibration is not None else calibrate(dsn, samples=samples)
    client = None
    if client_costs:
        client = calibrate_client(scenario, dsn, cal.rtt + cal.query_overhead,
                                  admin_dsn=admin_dsn, first_query_extra=cal.first_query_extra)
    keyed = calibrate_keyed(scenario, dsn, replicas, redis_url)
    predicted = predicted_scenario(scenario, cal, client, keyed)
    if replications is not None:
        predicted = predicted.with_values({"replications": replications})
    simulation = simulate(predicted)
    simulated = simulation.to_json()
    live = run_live(scenario, dsn, progress=progress, admin_dsn=admin_dsn,
                    replicas=replicas, redis_url=redis_url)
    measured = live.to_json()
    applied = calibration_applied(cal)
    if scenario.query.cpu_bound:
        applied["database.cores"] = predicted.database.cores
    doc_cal = cal.to_dict()
    if keyed:
        doc_cal["keyed"] = keyed
        if keyed.get("hit_time") is not None and scenario.cache is not None:
            applied["cache.hit_time"] = keyed["hit_time"]
        if keyed.get("lag") is not None and scenario.replicas is not None:
            applied["replicas.lag"] = keyed["lag"]
    if client is not None:
        doc_cal["client"] = client.to_dict()
        applied["client.dispatch"] = "empirical(client dispatch samples)"
        applied["client.hold"] = "empirical(client hold samples)"
    doc_cal["applied"] = applied
    document = {
        "simulated": simulated,
        "measured": measured,
        "calibration": doc_cal,
        "errors": errors(simulated, measured),
        "single_run_range": single_run_ranges(simulation),
    }
    return Comparison(document, predicted, simulation, live)


def calibrate_keyed(scenario: Scenario, dsn: str, replicas: Sequence[str],
                    redis_url: str | None) -> dict:
    """The keyed path's inputs on these services: the cache's round trip, the lag.

    ``hit_time``: median redis-py call (:func:`labs.calibrate.calibrate_cache`);
    ``lag``: median commit-to-visible time on the first replica
    (:func:`labs.calibrate.calibrate_lag`), which is what the standby's
    ``recovery_min_apply_delay`` and its apply work make it.
    """
    from labs.calibrate import calibrate_cache, calibrate_lag

    out: dict = {}
    if scenario.cache is not None and redis_url:
        cache = calibrate_cache(redis_url)
        out["cache"] = cache
        out["hit_time"] = cache["hit_time"]
    if scenario.replicas is not None and replicas:
        lags = calibrate_lag(dsn, replicas[0])
        out["lag_samples"] = lags
        out["lag"] = sorted(lags)[len(lags) // 2]
    return out


def compare(scenario: Scenario, dsn: str, **kw) -> dict:
    """Calibrate at ``dsn``, simulate the calibrated scenario, run it live: one document.

    Keywords as :func:`run_comparison`: ``calibration`` reuses an earlier
    calibration of the same server (``labs validate`` calibrates once for its
    whole suite); ``client_costs=False`` predicts a free client (no
    :func:`labs.calibrate.calibrate_client` run).
    """
    return run_comparison(scenario, dsn, **kw).document


def calibration_applied(cal: Calibration) -> dict[str, object]:
    """What ``predicted_scenario`` changed, for the JSON document."""
    return {
        "database.connect_time": "empirical(connect_times)",
        "database.network_rtt": cal.rtt + cal.query_overhead,
        "note": "query_overhead is folded into network_rtt (paid once per query; "
                "pre-ping and reset round trips carry it too)",
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a == 0 or 0.01 <= a < 1e5:
        return f"{x:.3g}" if a < 10 else f"{x:.1f}"
    return f"{x:.2e}"


def render_compare(doc: dict) -> str:
    """A readable table: metric | predicted (±ci) | measured | error."""
    sim = doc.get("simulated", {}).get("metrics", {})
    errs = doc.get("errors") or errors(doc.get("simulated", {}), doc.get("measured", {}))
    rows = []
    for name, e in errs.items():
        ci = sim.get(name, {}).get("ci95")
        pred = _fmt(e["predicted"])
        if ci and None not in ci and e["predicted"] is not None:
            pred += f" ±{_fmt((ci[1] - ci[0]) / 2)}"
        if e["rel_error"] is not None:
            err = f"{e['rel_error'] * 100:+.1f}%"
        elif e["abs_error"] is not None:
            err = f"{_fmt(e['abs_error'])} abs"
        else:
            err = "-"
        rows.append((name, pred, _fmt(e["measured"]), err))
    head = ("metric", "predicted (±ci)", "measured", "error")
    w = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(4)]
    cal = doc.get("calibration", {})
    name = doc.get("simulated", {}).get("scenario") or doc.get("measured", {}).get("scenario")
    lines = [f"labs compare: {name}"]
    if cal:
        lines.append(
            f"calibration: connect median {cal.get('connect_time_median', 0) * 1e3:.2f} ms "
            f"({cal.get('samples')} samples), rtt {cal.get('rtt', 0) * 1e3:.3f} ms, "
            f"query overhead {cal.get('query_overhead', 0) * 1e3:.3f} ms"
        )
    lines.append("  ".join(h.ljust(w[0]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)))
    lines.append("-" * (sum(w) + 6))
    for r in rows:
        lines.append("  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    return "\n".join(lines)
