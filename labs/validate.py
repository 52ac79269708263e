"""``labs validate``: how well simlib predicts live runs, scenario by scenario.

The built-in suite (``labs/suite/*.toml``, one regime per file: light load,
near saturation, overload with timeouts, overflow churn, no pool, psycopg2
exhaustion, CPU-bound queries with too many connections, asyncpg, ...) is run
through :func:`labs.compare.run_comparison` on one set of services: the
server is calibrated once, the client's costs once per scenario (they depend
on the library), then every scenario is simulated (:data:`REPLICATIONS`
replications) and run live.  Each comparison is scored against the fidelity
goals below.

A goal on a rate or a time is relative (``|predicted - measured| <= tol x
measured``); ``timeout_rate`` is a share, so its goal is absolute.  A relative
error means little when the measured value is a handful of events, so
``connections_opened_per_s`` also passes when the two differ by at most
:data:`CONNECTS_FLOOR` connections over the whole window (a pool that opens
one connection in the window and a prediction of none differ by "100%").

Why the goals differ: throughput is pinned by the arrival schedule (both
executors see the same Poisson arrivals), so only failures move it; means
average out noise, a p95 from one live run of a few thousand requests has a
sampling error of several percent on its own; connection churn comes in
bursts, so a single run's count is the noisiest of the five.

Every row also carries the evidence needed to explain a miss: the client's
CPU use and the host's (the load generator and a local server share the
machine's cores), the scheduler lag (requests the client started late), the
achieved arrival rate, the server's view of the connections, and how often a
waiting request was overtaken (the real pool was not FIFO).  For a missed
goal there are two more tests: is the measurement inside the range where one
run falls with 95% probability (then the miss is a single run's noise), and
does a simulation with the inputs *measured during the live run* meet the
goal (then the model is right, and an input -- connect time, the client's
costs -- changed under load from what the calibration saw).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labs.calibrate import calibrate, charged_checkout, charged_round_trips, client_samples
from labs.compare import Comparison, run_comparison
from labs.services.discovery import requirements
from simlib.scenario import Scenario, ScenarioError, load_scenario
from simlib.simulation import simulate

SUITE_DIR = Path(__file__).parent / "suite"

#: The problem reported for a --only that names no suite scenario.
UNKNOWN = "no suite scenario named {name!r}; the suite has: {names}"


@dataclass(frozen=True)
class Goal:
    """One fidelity goal: ``metric`` predicted within ``tolerance`` of measured."""

    metric: str
    kind: str  # "rel" | "abs"
    tolerance: float

    def describe(self) -> str:
        return (f"within {self.tolerance:.0%}" if self.kind == "rel"
                else f"within {self.tolerance:g} absolute")


GOALS: tuple[Goal, ...] = (
    Goal("throughput_rps", "rel", 0.05),
    Goal("latency_mean_ms", "rel", 0.15),
    Goal("latency_p95_ms", "rel", 0.20),
    Goal("timeout_rate", "abs", 0.04),
    Goal("connections_opened_per_s", "rel", 0.25),
    # the keyed path's shares (scenarios with a [cache] / with writes):
    Goal("cache_hit_ratio", "abs", 0.03),
    Goal("stale_read_ratio", "abs", 0.03),
)

#: Goals judged by an absolute difference (shares), shown as such in the table.
ABSOLUTE = frozenset(g.metric for g in GOALS if g.kind == "abs")

#: connections_opened_per_s also passes when predicted and measured differ by
#: at most this many connections over the measured window.
CONNECTS_FLOOR = 2.0

#: Replications simulated per prediction: more than a scenario's usual 5, so
#: the single-run range that judges a live run is itself well estimated.
REPLICATIONS = 20

#: Shortened windows for ``--quick`` (a smoke test of the machinery, not of fidelity).
QUICK = {"workload.duration": 2.0, "workload.warmup": 0.5}


def suite_files() -> list[Path]:
    return sorted(SUITE_DIR.glob("*.toml"))


def load_suite(
    only: Iterable[str] = (),
    overrides: Sequence[str] = (),
    quick: bool = False,
) -> list[Scenario]:
    """The suite's scenarios (all, or those named in ``only``), with ``--set`` overrides."""
    scenarios = [load_scenario(p, list(overrides)) for p in suite_files()]
    wanted = [n for name in only for n in name.split(",") if n]
    if wanted:
        names = [s.name for s in scenarios]
        for name in wanted:
            if name not in names:
                raise ScenarioError("--only", UNKNOWN.format(name=name, names=", ".join(names)))
        scenarios = [s for s in scenarios if s.name in wanted]
    if quick:
        scenarios = [s.with_values(QUICK) for s in scenarios]
    return scenarios


def score(goal: Goal, predicted: float | None, measured: float | None,
          duration: float) -> dict[str, object]:
    """Does one comparison meet ``goal``?  Returns the error and the verdict."""
    if predicted is None or measured is None:
        return {"metric": goal.metric, "predicted": predicted, "measured": measured,
                "error": None, "passed": None}
    diff = predicted - measured
    if goal.kind == "abs":
        # the float noise of a share computed two ways (0.03 vs 0.0300000001)
        error, passed = diff, abs(diff) <= goal.tolerance + 1e-9
    else:
        # no relative error against a measured 0 (None), unless both are 0
        error = diff / measured if measured else (0.0 if diff == 0 else None)
        passed = abs(diff) <= goal.tolerance * abs(measured)
        if goal.metric == "connections_opened_per_s":
            passed = passed or abs(diff) * duration <= CONNECTS_FLOOR
    return {"metric": goal.metric, "predicted": predicted, "measured": measured,
            "error": error, "passed": bool(passed)}


def _value(doc: dict, name: str) -> float | None:
    m = doc.get("metrics", {}).get(name)
    v = None if m is None else m.get("value")
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def evidence(measured: dict) -> dict[str, object]:
    """What a miss is explained with: client/host CPU, scheduler lag, the server's view."""
    details = measured.get("details", {})
    cpu = details.get("cpu", {})
    server = measured.get("server", {})
    return {
        "offered_rps": _value(measured, "offered_rps"),
        "achieved_rate_rps": _value(measured, "achieved_rate_rps"),
        "scheduler_lag_mean_ms": _value(measured, "scheduler_lag_mean_ms"),
        "scheduler_lag_p99_ms": _value(measured, "scheduler_lag_p99_ms"),
        "client_cores": cpu.get("client_cores"),
        "host_busy_cores": cpu.get("host_busy_cores"),
        "host_cores": cpu.get("host_cores"),
        "server_connections_peak": server.get("connections_peak_window"),
        "server_active_mean": server.get("active_mean_window"),
        "refusals": server.get("refusals"),
        "threads": details.get("threads"),
        "overtaken_share": (details.get("overtaken") or {}).get("share"),
    }


def _mean_ms(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) * 1e3 if xs else None


def measured_inputs(comparison: Comparison) -> tuple[dict[str, object], dict]:
    """The machine inputs as they were *during* the live run, for the what-if.

    Returns ``(values for Scenario.with_values, summary)``: connect times the
    run's own connects took, and the client's dispatch and hold costs read
    from its records the same way :func:`labs.calibrate.calibrate_client`
    reads them from its light-load run (taking off the round trips simlib
    charges, from the comparison's own calibration).  A new backend's first
    query is inside the run's hold times here, so the connect samples go
    without it.
    """
    live = comparison.live
    scenario = comparison.predicted
    w = scenario.workload
    cal = comparison.document["calibration"]
    rtt = cal["rtt"] + cal["query_overhead"]
    dispatch, hold = client_samples(live.records, w.warmup, w.warmup + w.duration,
                                    charged_round_trips(scenario.pool, rtt),
                                    cached=scenario.cache is not None,
                                    checkout=charged_checkout(scenario.pool, rtt))
    values: dict[str, object] = {}
    summary: dict[str, float | None] = {
        "connect_ms": _mean_ms(live.connect_durations),
        "dispatch_ms": _mean_ms(dispatch),
        "hold_ms": _mean_ms(hold),
    }
    if live.connect_durations:
        values["database.connect_time"] = {"dist": "empirical",
                                           "samples": list(live.connect_durations)}
    if dispatch:
        values["client.dispatch"] = {"dist": "empirical", "samples": dispatch}
    if hold:
        values["client.hold"] = {"dist": "empirical", "samples": hold}
    return values, summary


def calibrated_inputs(doc: dict) -> dict[str, float | None]:
    """The same summary for what the prediction used (calibrated before the run)."""
    cal = doc["calibration"]
    client = cal.get("client") or {}
    return {
        "connect_ms": statistics.fmean(cal["connect_times"]) * 1e3,
        "dispatch_ms": client["dispatch"]["mean"] * 1e3 if client else None,
        "hold_ms": client["hold"]["mean"] * 1e3 if client else None,
    }


def _checks(doc_sim: dict, doc_live: dict, duration: float,
            ranges: dict | None = None) -> list[dict[str, object]]:
    checks = []
    for g in GOALS:
        c = score(g, _value(doc_sim, g.metric), _value(doc_live, g.metric), duration)
        rng = (ranges or {}).get(g.metric)
        if rng is not None and c["measured"] is not None:
            c["single_run_range"] = rng
            c["in_single_run_range"] = bool(rng[0] <= c["measured"] <= rng[1])
        checks.append(c)
    return checks


def validate_one(scenario: Scenario, svc, cal, replications: int = REPLICATIONS) -> dict:
    """Compare one scenario on ``svc`` with calibration ``cal``; score it against GOALS.

    When a goal is missed, the scenario is simulated once more with the
    inputs measured *during* the live run (:func:`measured_inputs`): if that
    what-if meets the goal, the queueing model was right and the miss came
    from an input that changed under load (the evidence is in ``inputs``).
    """
    note = None
    wanted = scenario.database.max_connections
    if svc.can_configure:
        svc.set_max_connections(wanted)
    elif svc.max_connections() != wanted:
        note = (f"server allows {svc.max_connections()} connections, the scenario "
                f"{wanted}; services from {svc.source} cannot be reconfigured")
    if scenario.replicas is not None:
        delay = requirements(scenario)["replica_delay"]
        if svc.can_configure:
            svc.set_replica_delay(delay)
        elif abs(svc.replica_delay() - delay) > 1e-3:
            note = ((note + "; ") if note else "") + (
                f"replicas apply with a {svc.replica_delay():g} s delay, the scenario's lag "
                f"is {delay:g} s; services from {svc.source} cannot be reconfigured")
    t0 = time.perf_counter()
    comparison = run_comparison(scenario, svc.primary, calibration=cal,
                                admin_dsn=svc.primary_admin, replications=replications,
                                replicas=svc.replicas, redis_url=svc.redis)
    doc = comparison.document
    duration = scenario.workload.duration
    checks = _checks(doc["simulated"], doc["measured"], duration, doc["single_run_range"])
    inputs = {"calibrated": calibrated_inputs(doc)}
    what_if = None
    if any(c["passed"] is False for c in checks):
        values, inputs["during_run"] = measured_inputs(comparison)
        again = simulate(comparison.predicted.with_values(values)).to_json()
        what_if = {
            "inputs": "connect_time, client.dispatch and client.hold measured in the live run",
            "checks": _checks(again, doc["measured"], duration),
        }
    return {
        "scenario": scenario.name,
        "pool_kind": scenario.pool.kind,
        "workload": scenario.workload.kind,
        "checks": checks,
        "passed": sum(1 for c in checks if c["passed"]),
        "goals": sum(1 for c in checks if c["passed"] is not None),
        "inputs": inputs,
        "what_if_measured_inputs": what_if,
        "evidence": evidence(doc["measured"]),
        "note": note,
        "seconds": time.perf_counter() - t0,
        "compare": doc,
    }


#: Warn when more than this many cores are busy before the suite starts: the
#: load generator and a local server share the machine, so other work on it
#: slows both and shows up as prediction error.
BUSY_WARNING = 0.3


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores busy on the host over ``seconds`` (None where /proc/stat is missing)."""
    from labs.executor import host_busy_seconds

    a = host_busy_seconds()
    time.sleep(seconds)
    b = host_busy_seconds()
    return None if a is None or b is None else (b - a) / seconds


def validate(
    scenarios: Sequence[Scenario],
    *,
    samples: int = 50,
    on_row: Callable[[dict], None] | None = None,
) -> dict[str, object]:
    """Run the suite on one set of services; the document ``labs validate --json`` prints."""
    from labs.executor import json_safe
    from labs.services import services_for

    limits = [s.database.max_connections for s in scenarios]
    replicas = max((s.replicas.count for s in scenarios if s.replicas is not None), default=0)
    redis = any(s.cache is not None for s in scenarios)
    rows: list[dict] = []
    with services_for(max_connections=max(limits) if limits else 100, replicas=replicas,
                      redis=redis) as svc:
        # measured once the services answer, so a fault is still the only line
        before = busy_cores()
        if before is not None and before > BUSY_WARNING:
            print(f"labs validate: warning: the machine is already busy ({before:.2f} cores "
                  "in use before the suite); live figures will include that contention",
                  file=sys.stderr, flush=True)
        if svc.can_configure:
            # calibrate at the first scenario's limit: connect time does not
            # depend on it, and the first scenario then needs no restart
            svc.set_max_connections(limits[0])
        cal = calibrate(svc.primary, samples=samples)
        for scenario in scenarios:
            row = validate_one(scenario, svc, cal)
            rows.append(row)
            if on_row is not None:
                on_row(row)
        source = svc.source
    met = sum(r["passed"] for r in rows)
    total = sum(r["goals"] for r in rows)
    cal_doc = cal.to_dict()
    del cal_doc["connect_times"]  # kept once per row in compare.calibration
    return json_safe({
        "executor": "labs-validate",
        "goals": [{"metric": g.metric, "kind": g.kind, "tolerance": g.tolerance} for g in GOALS],
        "connects_floor": CONNECTS_FLOOR,
        "services": source,
        "host_busy_cores_before": before,
        "calibration": cal_doc,
        "rows": rows,
        "summary": {"scenarios": len(rows), "goals_met": met, "goals": total},
    })


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

_SHORT = {
    "throughput_rps": "throughput",
    "latency_mean_ms": "mean ms",
    "latency_p95_ms": "p95 ms",
    "timeout_rate": "timeouts",
    "connections_opened_per_s": "opened/s",
    "cache_hit_ratio": "hit ratio",
    "stale_read_ratio": "stale",
}


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.3f}" if a < 1 else f"{x:.2f}"
    return f"{x:.1e}"


def _cell(check: dict) -> str:
    """``predicted / measured (error) mark`` for one goal."""
    p, m, e = check["predicted"], check["measured"], check["error"]
    if check["passed"] is None:
        return "-"
    if check["metric"] in ABSOLUTE:
        err = f"{e:+.3f}"
    elif e is None:
        err = "n/a"
    else:
        err = f"{e * 100:+.0f}%"
    mark = "ok" if check["passed"] else "MISS"
    return f"{_num(p)} / {_num(m)} ({err}) {mark}"


def render(doc: dict, markdown: bool = False) -> str:
    """The validation table: one row per scenario, one column per goal."""
    heads = ["scenario", "pool"] + [_SHORT[g["metric"]] for g in doc["goals"]]
    heads += ["client cores", "lag p99 ms", "overtaken"]
    rows = []
    for r in doc["rows"]:
        ev = r["evidence"]
        rows.append([r["scenario"], r["pool_kind"]] + [_cell(c) for c in r["checks"]] + [
            _num(ev.get("client_cores")), _num(ev.get("scheduler_lag_p99_ms")),
            "-" if ev.get("overtaken_share") is None else f"{ev['overtaken_share']:.0%}"])
    s = doc["summary"]
    cal = doc["calibration"]
    busy = doc.get("host_busy_cores_before")
    foot = (f"{s['goals_met']} of {s['goals']} goals met over {s['scenarios']} scenarios "
            f"(cells: predicted / measured (error)); calibration: connect "
            f"{cal['connect_time_median'] * 1e3:.2f} ms, rtt {cal['rtt'] * 1e3:.3f} ms, "
            f"query overhead {cal['query_overhead'] * 1e3:.3f} ms"
            + (f"; host busy before: {busy:.2f} cores" if busy is not None else ""))
    if markdown:
        out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out + ["", foot])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"note: {r['scenario']}: {r['note']}" for r in doc["rows"] if r.get("note")]
    notes += [line for r in doc["rows"] for line in explain(r)]
    return "\n".join(out + notes + [foot])


def explain(row: dict) -> list[str]:
    """One line per missed goal: noise or model, and what the what-if says."""
    lines = []
    what_if = {c["metric"]: c for c in (row.get("what_if_measured_inputs") or {}).get("checks", [])}
    inputs = row.get("inputs", {})
    for c in row["checks"]:
        if c["passed"] is not False:
            continue
        name = _SHORT[c["metric"]]
        text = f"{row['scenario']}: {name} missed"
        rng = c.get("single_run_range")
        if rng is not None:
            inside = "inside" if c.get("in_single_run_range") else "outside"
            text += f"; measured {_num(c['measured'])} is {inside} one run's 95% range " \
                    f"[{_num(rng[0])}, {_num(rng[1])}]"
        w = what_if.get(c["metric"])
        if w is not None and w["passed"] is not None:
            text += f"; with inputs measured in the run: {_cell(w)}"
        lines.append(text)
    if lines and "during_run" in inputs:
        before, during = inputs["calibrated"], inputs["during_run"]
        parts = [f"{k[:-3]} {_num(before.get(k))} -> {_num(during.get(k))} ms"
                 for k in ("connect_ms", "dispatch_ms", "hold_ms")
                 if before.get(k) is not None and during.get(k) is not None]
        lines.append(f"{row['scenario']}: inputs calibrated -> during the run: " + ", ".join(parts))
    return lines


def progress_line(row: dict) -> None:
    missed = [_SHORT[c["metric"]] for c in row["checks"] if c["passed"] is False]
    print(f"labs validate: {row['scenario']}: {row['passed']}/{row['goals']} goals"
          + (f" (missed: {', '.join(missed)})" if missed else "")
          + f" in {row['seconds']:.0f} s" + _client_note(row), file=sys.stderr, flush=True)


def _client_note(row: dict) -> str:
    client = row["compare"].get("calibration", {}).get("client")
    if not client:
        return ""
    return (f"; client dispatch {client['dispatch']['mean'] * 1e3:.3f} ms, "
            f"hold {client['hold']['mean'] * 1e3:.3f} ms")
