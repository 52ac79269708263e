"""``labs compare``: calibrate, predict with simlib, measure with labs, side by side.

``compare(scenario, dsn)`` does, in order:

1. :func:`labs.calibrate.calibrate` on the live server at ``dsn``;
2. the *predicted* scenario: ``database.connect_time`` becomes
   ``empirical(calibrated connect samples)`` and ``database.network_rtt``
   becomes ``rtt + query_overhead``;
3. ``simulate`` the predicted scenario and ``run_live`` the original one;
4. returns the contract document ``{"simulated", "measured", "calibration"}``
   plus ``"errors": {metric: {predicted, measured, abs_error, rel_error}}``
   (``abs_error = predicted - measured``, ``rel_error = abs_error / measured``,
   ``null`` where measured is 0 or either side is missing).

Why the query overhead goes into the round trip rather than the service time:
simlib pays ``network_rtt`` exactly once per query (``rtt + service_time`` in
one step, see simlib/workload.py), so adding the overhead there shifts every
query by it without changing the *shape* of the scenario's service-time
distribution (an exponential with a larger mean would also widen its tail,
which the real overhead does not do).  The price: the same rtt is also paid
by a pre-ping and by the reset (ROLLBACK) of a returned connection, which
then also carry the overhead; with loopback numbers (tens of microseconds)
that bias is small and is reported under ``calibration.applied``.
"""

from __future__ import annotations

import math

from labs.calibrate import calibrate
from simlib.scenario import Scenario
from simlib.simulation import simulate


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


def predicted_scenario(scenario: Scenario, cal) -> Scenario:
    """``scenario`` with the machine-dependent database inputs set from ``cal``."""
    return scenario.with_values({
        "database.connect_time": {"dist": "empirical", "samples": list(cal.connect_times)},
        "database.network_rtt": cal.rtt + cal.query_overhead,
    })


def compare(scenario: Scenario, dsn: str, *, samples: int = 50, progress: bool = False) -> dict:
    """Calibrate at ``dsn``, simulate the calibrated scenario, run it live: one document."""
    from labs.executor import run_live

    cal = calibrate(dsn, samples=samples)
    predicted = predicted_scenario(scenario, cal)
    simulated = simulate(predicted).to_json()
    measured = run_live(scenario, dsn, progress=progress).to_json()
    calibration = cal.to_dict()
    calibration["applied"] = {
        "database.connect_time": "empirical(connect_times)",
        "database.network_rtt": cal.rtt + cal.query_overhead,
        "note": "query_overhead is folded into network_rtt (paid once per query; "
                "pre-ping and reset round trips carry it too)",
    }
    return {
        "simulated": simulated,
        "measured": measured,
        "calibration": calibration,
        "errors": errors(simulated, measured),
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
