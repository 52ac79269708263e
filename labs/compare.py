"""``labs compare``: calibrate, predict with simlib, measure with labs, side by side.

``run_comparison(scenario, topology)`` does, in order:

1. :func:`labs.calibrate.calibrate` on the live server at ``dsn``: connect
   time (with a new backend's first query), round trip, query overhead;
2. :func:`labs.calibrate.calibrate_client`: a short light-load run of the
   scenario's own pool library, measuring what the client itself costs per
   request (``dispatch`` before a connection is in hand, ``hold`` while it is);
3. the *predicted* scenario: ``database.connect_time`` becomes
   ``empirical(calibrated connect samples)``, ``database.network_rtt``
   becomes ``rtt``, ``query.sleep_overhead`` the query overhead (for a
   CPU-bound query ``network_rtt`` keeps it), ``[client]`` gets the dispatch and
   hold samples, and for CPU-bound queries ``database.cores`` becomes this
   machine's core count (the live server runs here);
4. ``simulate`` the predicted scenario and ``run_live`` the original one;
5. returns a :class:`Comparison`: the calibrations, the predicted scenario,
   the simulation and the live result, as typed objects.  Its ``document`` is
   the contract's JSON ``{"simulated", "measured", "calibration"}`` plus
   ``"errors": {metric: {predicted, measured, abs_error, rel_error}}``
   (``abs_error = predicted - measured``, ``rel_error = abs_error / measured``,
   ``null`` where measured is 0 or either side is missing) and
   ``"single_run_range"``: per metric, where one run falls with 95%
   probability according to the simulation's replications (a live run is one
   run, with its own sampling noise, so this is the range to judge it by).

Everything the prediction uses is measured *before* the live run and at a
different operating point (idle server, light load), so the comparison
tests the model, not a fit to the run it predicts.

Where the query overhead goes: into the server's time of each sleeping
query (``[query] sleep_overhead``, added after ``pg_sleep``'s rounding), not
into the round trip and not into the service time.  A larger service-time mean
would widen the distribution's tail, which the real overhead does not do; and a
round trip is also paid by a pre-ping and by the reset (ROLLBACK) of a returned
connection, which do not sleep and so do not carry it.  (Folded into the round
trip, as before, it charged QueuePool's reset about 0.3 ms too much here, and
the client calibration's hold samples, clipped at zero after taking it off,
hid the error: near saturation the pool's predicted waits doubled.)
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from labs.calibrate import (
    PG_SLEEP_GRANULARITY,
    Calibration,
    ClientCalibration,
    calibrate,
    calibrate_cache,
    calibrate_client,
    calibrate_lag,
    calibrate_pgbouncer,
    charged_checkout,
    charged_round_trips,
    client_samples,
    live_query,
)
from labs.executor import LiveResult, run_live
from labs.json_out import finite
from labs.loadgen import Observer
from labs.topology import Topology
from simlib.metrics import prediction_interval
from simlib.scenario import Scenario
from simlib.simulation import SimulationResult, simulate
from simlib.workload import open_loop_threads


def _num(x: object) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def errors(
    simulated: dict[str, Any], measured: dict[str, Any]
) -> dict[str, dict[str, float | None]]:
    """Per metric present in both documents: predicted, measured and their errors."""
    sim = simulated.get("metrics", {})
    live = measured.get("metrics", {})
    out: dict[str, dict[str, float | None]] = {}
    for name in sim:
        if name not in live:
            continue
        p, m = _num(sim[name].get("value")), _num(live[name].get("value"))
        abs_error = None if p is None or m is None else p - m
        rel_error = None if abs_error is None or m == 0 else abs_error / m  # type: ignore[operator]
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


@dataclass(frozen=True)
class KeyedCalibration:
    """The tiers' inputs on these services: the cache's round trip, the replicas' lag,
    PgBouncer's login and hop."""

    cache: dict[str, float] | None = None  # calibrate_cache's medians
    lag_samples: list[float] = field(default_factory=list)
    pgbouncer: dict[str, object] | None = None  # calibrate_pgbouncer's

    @property
    def hit_time(self) -> float | None:
        return None if self.cache is None else self.cache["hit_time"]

    @property
    def lag(self) -> float | None:
        """The median commit-to-visible time on the first replica."""
        return sorted(self.lag_samples)[len(self.lag_samples) // 2] if self.lag_samples else None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.cache is not None:
            out.update(cache=self.cache, hit_time=self.hit_time)
        if self.lag_samples:
            out.update(lag_samples=self.lag_samples, lag=self.lag)
        if self.pgbouncer is not None:
            out.update(pgbouncer=self.pgbouncer)
        return out


def calibrate_keyed(scenario: Scenario, topology: Topology,
                    direct_rtt: float) -> KeyedCalibration:
    """The tiers' inputs: :func:`labs.calibrate.calibrate_cache`, ``calibrate_lag``
    and ``calibrate_pgbouncer``.

    ``lag`` is what the standby's ``recovery_min_apply_delay`` and its apply
    work make the commit-to-visible time, on the first replica.  PgBouncer's
    hop is its round trip less ``direct_rtt``, the one straight to Postgres.
    """
    cache = None
    if scenario.cache is not None and topology.cache is not None:
        cache = calibrate_cache(topology.cache.dsn)
    lags: list[float] = []
    if scenario.replicas is not None and topology.replicas:
        lags = calibrate_lag(topology.primary.dsn, topology.replicas[0].dsn)
    bouncer = topology.endpoint("pgbouncer")
    costs = None
    if scenario.pgbouncer is not None and bouncer is not None:
        costs = calibrate_pgbouncer(bouncer.dsn, direct_rtt)
    return KeyedCalibration(cache, lags, costs)


def predicted_scenario(
    scenario: Scenario,
    cal: Calibration,
    client: ClientCalibration | None = None,
    keyed: KeyedCalibration | None = None,
) -> Scenario:
    """``scenario`` with the machine-dependent inputs set from the calibrations.

    ``database.connect_time`` and ``database.network_rtt`` from ``cal``;
    ``client.dispatch`` and ``client.hold`` from ``client`` (empirical
    distributions of the samples), when given; ``cache.hit_time`` and the
    replicas' constant ``lag`` from ``keyed``.
    """
    return scenario.with_values(_applied(scenario, cal, client, keyed, as_values=True))


def _applied(scenario: Scenario, cal: Calibration, client: ClientCalibration | None,
             keyed: KeyedCalibration | None, *, as_values: bool) -> dict[str, object]:
    """What the prediction changes: as ``with_values`` values, or as the JSON's summary."""
    def samples(xs: list[float], label: str) -> object:
        return {"dist": "empirical", "samples": list(xs)} if as_values else f"empirical({label})"

    values: dict[str, object] = {
        "database.connect_time": samples(cal.server_connect_times,
                                         "connect_times minus the client's connect CPU"),
        "database.network_rtt": cal.round_trip(scenario),
    }
    if not scenario.query.cpu_bound:
        # The live query is pg_sleep, which sleeps whole milliseconds and
        # answers query_overhead later than that.
        values["query.sleep_granularity"] = PG_SLEEP_GRANULARITY
        values["query.sleep_overhead"] = cal.query_overhead
    ops = cal.operations
    if ops is not None:
        values.update({"client.ping": ops.ping, "client.reset": ops.reset,
                       "client.connect": ops.connect, "host.wakeup": ops.wakeup})
    if not as_values:
        values["note"] = ("query_overhead is the server's, once per sleeping query "
                          "(query.sleep_overhead), not in a reset's or a pre-ping's round trip; "
                          "a CPU-bound query's stays in network_rtt")
    if scenario.query.cpu_bound:
        # The live server burns its CPU-bound queries on this machine's cores
        # (calibration is loopback only), whatever the scenario says.
        values["database.cores"] = machine_cores()
    if keyed is not None and keyed.hit_time is not None and scenario.cache is not None:
        values["cache.hit_time"] = keyed.hit_time
    if keyed is not None and keyed.lag is not None and scenario.replicas is not None:
        lag = keyed.lag
        values["replicas.lag"] = {"dist": "constant", "value": lag} if as_values else lag
    bouncer = keyed.pgbouncer if keyed is not None and scenario.pgbouncer is not None else None
    if bouncer is not None:
        values["pgbouncer.connect_time"] = samples(
            bouncer["connect_times"], "logins at PgBouncer")  # type: ignore[arg-type]
        values["pgbouncer.network_rtt"] = bouncer["hop"]
    if client is not None:
        values["client.dispatch"] = samples(client.dispatch, "client dispatch samples")
        values["client.hold"] = samples(client.hold, "client hold samples")
        values["client.after"] = client.after
        values["client.fail"] = client.fail
        values["client.cpu_share"] = client.cpu_share
    # labs calibrates loopback servers only: the application's Python and
    # Postgres share this machine's cores.
    values["host.shared_cores"] = True
    return values


def machine_cores() -> int:
    """Cores a local server can use (the process's CPU affinity, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Comparison:
    """Everything one comparison produced, as typed objects; ``document`` is its JSON."""

    scenario: Scenario
    predicted: Scenario  # the calibrated scenario simlib ran
    calibration: Calibration
    client: ClientCalibration | None
    keyed: KeyedCalibration
    simulation: SimulationResult
    live: LiveResult

    def measured_inputs(self) -> tuple[dict[str, object], dict[str, float | None]]:
        """The machine inputs as they were *during* the live run, for a what-if.

        Returns ``(values for Scenario.with_values, summary)``: connect times the
        run's own connects took, and the client's dispatch and hold costs read
        from its records the same way :func:`labs.calibrate.calibrate_client`
        reads them from its light-load run (taking off the round trips simlib
        charges, from this comparison's calibration).  A new backend's first
        query is inside the run's hold times here, so the connect samples go
        without it.
        """
        live, scenario = self.live, self.predicted
        w = scenario.workload
        rtt = self.calibration.round_trip(scenario)
        ops = self.calibration.operations
        dispatch, hold = client_samples(live.records, w.warmup, w.warmup + w.duration,
                                        charged_round_trips(scenario.pool, rtt, ops),
                                        cached=scenario.cache is not None,
                                        checkout=charged_checkout(scenario.pool, rtt, ops),
                                        server_time=live_query(
                                            scenario, self.calibration.query_overhead).server_time,
                                        threads=open_loop_threads(scenario))
        summary = {"connect_ms": _mean_ms(live.connect_durations),
                   "dispatch_ms": _mean_ms(dispatch), "hold_ms": _mean_ms(hold)}
        bouncer = scenario.pgbouncer
        # Behind PgBouncer the application's connects are logins at PgBouncer,
        # and in transaction or statement mode the client's hold also has the
        # wait for a server inside it (PgBouncer assigns one at the first
        # statement): that wait is the model's to predict, so the what-if
        # keeps the calibrated hold and reports the run's net of the wait.
        multiplexed = bouncer is not None and bouncer.pool_mode != "session"
        if multiplexed and summary["hold_ms"] is not None:
            wait = finite(live.metrics.get("pgbouncer_wait_mean_ms"))
            summary["hold_ms"] = max(0.0, summary["hold_ms"] - (wait or 0.0))
        values: dict[str, object] = {}
        if live.connect_durations:
            key = "pgbouncer.connect_time" if bouncer is not None else "database.connect_time"
            values[key] = {"dist": "empirical", "samples": list(live.connect_durations)}
        if dispatch:
            values["client.dispatch"] = {"dist": "empirical", "samples": dispatch}
        if hold and not multiplexed:
            values["client.hold"] = {"dist": "empirical", "samples": hold}
        client = self.client
        if client is not None and client.cpu_per_request > 0 and dispatch and hold \
                and not multiplexed:
            # Under load these wall times include the wait for the GIL, which
            # the model adds itself: keep the CPU per request calibrated and
            # let the rest of the run's times be waiting.
            wall = statistics.fmean(dispatch) + statistics.fmean(hold)
            values["client.cpu_share"] = min(1.0, client.cpu_per_request / wall)
        return values, summary

    def calibrated_inputs(self) -> dict[str, float | None]:
        """The same summary for what the prediction used (calibrated before the run)."""
        client = self.client
        return {
            "connect_ms": statistics.fmean(self.calibration.connect_times) * 1e3,
            "dispatch_ms": statistics.fmean(client.dispatch) * 1e3 if client else None,
            "hold_ms": statistics.fmean(client.hold) * 1e3 if client else None,
        }

    def what_if(self) -> tuple[SimulationResult, dict[str, float | None]]:
        """simlib again with the inputs measured during the live run: ``(result, inputs)``."""
        values, inputs = self.measured_inputs()
        return simulate(self.predicted.with_values(values)), inputs

    @cached_property
    def document(self) -> dict[str, Any]:
        """The contract's JSON document, with errors and single-run ranges."""
        simulated = self.simulation.to_json()
        measured = self.live.to_json()
        cal = self.calibration.to_dict()
        keyed = self.keyed.to_dict()
        if keyed:
            cal["keyed"] = keyed
        if self.client is not None:
            cal["client"] = self.client.to_dict()
        cal["applied"] = _applied(self.scenario, self.calibration, self.client, self.keyed,
                                  as_values=False)
        return {
            "simulated": simulated,
            "measured": measured,
            "calibration": cal,
            "errors": errors(simulated, measured),
            "single_run_range": single_run_ranges(self.simulation),
        }

    def to_json(self) -> dict[str, Any]:
        return self.document


def _mean_ms(xs: list[float]) -> float | None:
    return statistics.fmean(xs) * 1e3 if xs else None


def run_comparison(
    scenario: Scenario,
    topology: Topology,
    *,
    samples: int = 50,
    progress: bool = False,
    calibration: Calibration | None = None,
    client_costs: bool = True,
    replications: int | None = None,
    observe: Observer | None = None,
) -> Comparison:
    """Calibrate on ``topology``, simulate the calibrated scenario, run it live.

    ``calibration`` reuses an earlier calibration of the same server (``labs
    validate`` calibrates once for its whole suite); ``client_costs=False``
    predicts a free client (no :func:`labs.calibrate.calibrate_client` run);
    ``replications``: simulate this many replications instead of the
    scenario's own (``labs validate`` uses more, for tighter ranges);
    ``observe``: handed to :func:`labs.executor.run_live` (a pool exporter
    watching the live run, lesson 12).
    """
    primary = topology.primary.dsn
    cal = calibration if calibration is not None else calibrate(primary, samples=samples)
    client = None
    if client_costs:
        client = calibrate_client(scenario, topology, cal.round_trip(scenario),
                                  query_overhead=cal.query_overhead,
                                  first_query_extra=cal.first_query_extra,
                                  operations=cal.operations)
    keyed = calibrate_keyed(scenario, topology, cal.round_trip(scenario))
    predicted = predicted_scenario(scenario, cal, client, keyed)
    if replications is not None:
        predicted = predicted.with_values({"replications": replications})
    simulation = simulate(predicted)
    live = run_live(scenario, topology, progress=progress, observe=observe)
    return Comparison(scenario, predicted, cal, client, keyed, simulation, live)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a == 0 or 0.01 <= a < 1e5:
        return f"{x:.3g}" if a < 10 else f"{x:.1f}"
    return f"{x:.2e}"


def render_compare(doc: dict[str, Any]) -> str:
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
