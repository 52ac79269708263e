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
measured``); ``timeout_rate``, ``error_rate``, ``overtaken_ratio`` and the
other shares (hit, stale and cold-start ratios) are judged by an absolute
difference.  A relative error means little when the measured value is a
handful of events or a fraction of a millisecond, so
``connections_opened_per_s`` also passes when the two differ by at most
:data:`CONNECTS_FLOOR` connections over the whole window, and
``checkout_p95_ms`` when they differ by at most :data:`CHECKOUT_FLOOR_MS`.

Why the goals differ: throughput is pinned by the arrival schedule (both
executors see the same Poisson arrivals), so only failures move it; means
average out noise; a p95 from one live run of a few thousand requests has a
sampling error of several percent on its own, a p99 more; connection churn
comes in bursts, so a single run's count is the noisiest.

**Every prediction is made in advance.**  The simulated scenario gets only
what was calibrated *before* its live run, at another operating point (an
idle server, light load): connect times, the round trip, the client's CPU
per request.  Nothing measured during the run goes into the score.

Every row also carries the evidence needed to explain a miss: the client's
CPU use and the host's (the load generator and a local server share the
machine's cores), the scheduler lag (requests the client started late), the
achieved arrival rate and the server's view of the connections.  For a
missed goal there are two more tests, reported as evidence and never
scored: is the measurement inside the range where one run falls with 95%
probability (then the miss is a single run's noise), and does a simulation
with the inputs *measured during the live run* meet the goal (then the
queueing model was right, and an input changed under load from what the
calibration saw).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labs.calibrate import Calibration, calibrate
from labs.compare import run_comparison
from labs.executor import LiveResult
from labs.host import busy_cores
from labs.json_out import finite, json_safe
from labs.services import Services, configure, services_for
from simlib.metrics import Estimate
from simlib.scenario import Scenario, ScenarioError, load_scenario

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
    Goal("latency_p99_ms", "rel", 0.25),
    Goal("checkout_p95_ms", "rel", 0.25),
    Goal("timeout_rate", "abs", 0.02),
    Goal("error_rate", "abs", 0.02),
    Goal("overtaken_ratio", "abs", 0.10),
    Goal("connections_opened_per_s", "rel", 0.25),
    # the keyed path's shares (scenarios with a [cache] / with writes):
    Goal("cache_hit_ratio", "abs", 0.03),
    Goal("stale_read_ratio", "abs", 0.03),
    # the many-process tiers (scenarios with a [fleet], [pgbouncer] / [serverless]):
    # Postgres's own count of the run's connections, and the share of cold starts.
    Goal("server_connections_max", "rel", 0.10),
    Goal("cold_start_rate", "abs", 0.03),
)

#: Goals judged by an absolute difference (shares), shown as such in the table.
ABSOLUTE = frozenset(g.metric for g in GOALS if g.kind == "abs")

#: connections_opened_per_s also passes when predicted and measured differ by
#: at most this many connections over the measured window.
CONNECTS_FLOOR = 2.0

#: checkout_p95_ms also passes when predicted and measured differ by at most
#: this many milliseconds: a request that does not wait has its connection in
#: a tenth of a millisecond or so, and a live run's timers and thread wake-ups
#: are not finer than that, so "0.05 vs 0.1 ms" is not a 100% miss.
CHECKOUT_FLOOR_MS = 0.25

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
    files = {load_scenario(p).name: p for p in suite_files()}
    wanted = [n for name in only for n in name.split(",") if n]
    for name in wanted:
        if name not in files:
            raise ScenarioError("--only", UNKNOWN.format(name=name, names=", ".join(files)))
    # Overrides reach only the scenarios run: a --set that one of the others
    # cannot take (workload.rate where a rate_schedule is) is no error then.
    scenarios = [load_scenario(p, list(overrides)) for name, p in files.items()
                 if not wanted or name in wanted]
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
        error: float | None = diff
        passed = abs(diff) <= goal.tolerance + 1e-9
    else:
        # no relative error against a measured 0 (None), unless both are 0
        error = diff / measured if measured else (0.0 if diff == 0 else None)
        passed = abs(diff) <= goal.tolerance * abs(measured)
        if goal.metric == "connections_opened_per_s":
            passed = passed or abs(diff) * duration <= CONNECTS_FLOOR
        if goal.metric == "checkout_p95_ms":
            passed = passed or abs(diff) <= CHECKOUT_FLOOR_MS
    return {"metric": goal.metric, "predicted": predicted, "measured": measured,
            "error": error, "passed": bool(passed)}


def _predicted(metrics: dict[str, Estimate], name: str) -> float | None:
    est = metrics.get(name)
    return None if est is None else finite(est.value)


def evidence(live: LiveResult) -> dict[str, object]:
    """What a miss is explained with: client/host CPU, scheduler lag, the server's view."""
    details, server, m = live.details, live.server, live.metrics
    cpu = details.get("cpu", {})
    return {
        "offered_rps": finite(m.get("offered_rps")),
        "achieved_rate_rps": finite(m.get("achieved_rate_rps")),
        "scheduler_lag_mean_ms": finite(m.get("scheduler_lag_mean_ms")),
        "scheduler_lag_p99_ms": finite(m.get("scheduler_lag_p99_ms")),
        "client_cores": cpu.get("client_cores"),
        "host_busy_cores": cpu.get("host_busy_cores"),
        "host_cores": cpu.get("host_cores"),
        "server_connections_peak": server.get("connections_peak_window"),
        "server_active_mean": server.get("active_mean_window"),
        "refusals": server.get("refusals"),
        "threads": details.get("threads"),
        "overtaken_share": (details.get("overtaken") or {}).get("share"),
    }


def _checks(predicted: dict[str, Estimate], live: LiveResult, duration: float,
            ranges: dict[str, list[float] | None] | None = None) -> list[dict[str, object]]:
    checks = []
    for g in GOALS:
        c = score(g, _predicted(predicted, g.metric), finite(live.metrics.get(g.metric)),
                  duration)
        rng = (ranges or {}).get(g.metric)
        if rng is not None and c["measured"] is not None:
            c["single_run_range"] = rng
            c["in_single_run_range"] = bool(rng[0] <= c["measured"] <= rng[1])  # type: ignore[operator]
        checks.append(c)
    return checks


def validate_one(scenario: Scenario, svc: Services, cal: Calibration,
                 replications: int = REPLICATIONS) -> dict[str, object]:
    """Compare one scenario on ``svc`` with calibration ``cal``; score it against GOALS.

    When a goal is missed, the scenario is simulated once more with the
    inputs measured *during* the live run (:meth:`Comparison.measured_inputs`):
    if that what-if meets the goal, the queueing model was right and the miss
    came from an input that changed under load (the evidence is in ``inputs``).
    """
    note = configure(scenario, svc)
    t0 = time.perf_counter()
    comparison = run_comparison(scenario, svc.topology, calibration=cal,
                                replications=replications)
    doc = comparison.document
    duration = scenario.workload.duration
    checks = _checks(comparison.simulation.metrics, comparison.live, duration,
                     doc["single_run_range"])
    inputs: dict[str, object] = {"calibrated": comparison.calibrated_inputs()}
    what_if = None
    if any(c["passed"] is False for c in checks):
        again, inputs["during_run"] = comparison.what_if()
        what_if = {
            "inputs": ("connect_time, client.dispatch and client.hold measured in the live run "
                       "(behind PgBouncer in transaction or statement mode the calibrated "
                       "hold: the run's has PgBouncer's wait in it)"),
            "checks": _checks(again.metrics, comparison.live, duration),
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
        "evidence": evidence(comparison.live),
        "note": note,
        "seconds": time.perf_counter() - t0,
        "compare": doc,
    }


#: Warn when more than this many cores are busy before the suite starts: the
#: load generator and a local server share the machine, so other work on it
#: slows both and shows up as prediction error.
BUSY_WARNING = 0.3


def _warn_if_busy() -> float | None:
    before = busy_cores()
    if before is not None and before > BUSY_WARNING:
        print(f"labs validate: warning: the machine is already busy ({before:.2f} cores "
              "in use before the suite); live figures will include that contention",
              file=sys.stderr, flush=True)
    return before


def validate(
    scenarios: Sequence[Scenario],
    *,
    samples: int = 50,
    on_row: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, object]:
    """Run the suite on one set of services; the document ``labs validate --json`` prints."""
    limits = [s.database.max_connections for s in scenarios]
    replicas = max((s.replicas.count for s in scenarios if s.replicas is not None), default=0)
    redis = any(s.cache is not None for s in scenarios)
    # One PgBouncer for the suite, started with the first [pgbouncer]'s settings;
    # each scenario's own reach it through the admin console (configure).
    bouncer = next((s.pgbouncer for s in scenarios if s.pgbouncer is not None), None)
    extra: dict[str, object] = {} if bouncer is None else {"pgbouncer": bouncer}
    rows: list[dict[str, object]] = []
    with services_for(max_connections=max(limits) if limits else 100, replicas=replicas,
                      redis=redis, **extra) as svc:
        before = _warn_if_busy()  # once the services answer, so a fault is still the only line
        if svc.can_configure:
            # calibrate at the first scenario's limit: connect time does not
            # depend on it, and the first scenario then needs no restart
            svc.set_max_connections(limits[0])
        cal = calibrate(svc.topology.primary.dsn, samples=samples)
        for scenario in scenarios:
            row = validate_one(scenario, svc, cal)
            rows.append(row)
            if on_row is not None:
                on_row(row)
        source = svc.source
    cal_doc = cal.to_dict()
    del cal_doc["connect_times"]  # kept once per row in compare.calibration
    return json_safe({  # type: ignore[return-value]
        "executor": "labs-validate",
        "goals": [{"metric": g.metric, "kind": g.kind, "tolerance": g.tolerance} for g in GOALS],
        "connects_floor": CONNECTS_FLOOR,
        "checkout_floor_ms": CHECKOUT_FLOOR_MS,
        "services": source,
        "host_busy_cores_before": before,
        "calibration": cal_doc,
        "rows": rows,
        "summary": {"scenarios": len(rows), "goals_met": sum(r["passed"] for r in rows),  # type: ignore[misc]
                    "goals": sum(r["goals"] for r in rows)},  # type: ignore[misc]
    })


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

_SHORT = {
    "throughput_rps": "throughput",
    "latency_mean_ms": "mean ms",
    "latency_p95_ms": "p95 ms",
    "latency_p99_ms": "p99 ms",
    "checkout_p95_ms": "checkout p95",
    "timeout_rate": "timeouts",
    "error_rate": "errors",
    "overtaken_ratio": "overtaken",
    "connections_opened_per_s": "opened/s",
    "cache_hit_ratio": "hit ratio",
    "stale_read_ratio": "stale",
    "server_connections_max": "server conns",
    "cold_start_rate": "cold starts",
}


#: How the table shows a number: the first row whose bound its size reaches
#: (smaller ones, and NaN, in scientific notation).
_FORMATS = ((100.0, ".0f"), (10.0, ".1f"), (1.0, ".2f"), (0.01, ".3f"))


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    spec = next((spec for bound, spec in _FORMATS if abs(x) >= bound), ".1e")
    return format(x, spec)


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
    heads += ["client cores", "lag p99 ms"]
    rows = []
    for r in doc["rows"]:
        ev = r["evidence"]
        rows.append([r["scenario"], r["pool_kind"]] + [_cell(c) for c in r["checks"]] + [
            _num(ev.get("client_cores")), _num(ev.get("scheduler_lag_p99_ms"))])
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
