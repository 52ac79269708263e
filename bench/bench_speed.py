"""Speed of the simulator: the full pool model against a bare SimPy M/M/c loop.

Goal (from the issue): simulating the plain pool scenario (M/M/c through the
``sqlalchemy`` pool kind) takes at most 2x the time of a bare SimPy M/M/c loop
over the same requests, measured in the same run.

What is compared
----------------
* **model**: ``simlib.simulation.run_replication(scenario, 0)``, the whole
  thing: streams, database server, pool, workload, recorder, drain and the
  final metrics.
* **bare**: the textbook SimPy M/M/c program.  ``simpy.Resource(env, c)``, an
  arrival process that spawns one customer process per request, and a
  customer that does ``with res.request() as req: yield req; yield
  env.timeout(service)`` and appends its latency (arrival to finish) to a list.

Both simulate *the same requests*.  The bare loop draws its inter-arrival and
service times from NumPy in batches of 4096 turned into Python floats with
``.tolist()`` (as simlib's ``Sampler`` does), from the very generators simlib
uses (``simlib.streams.generator(seed, replication, "arrivals"/"service")``),
and draws each service time when the request gets its server, as the model
does.  For the plain scenario the two therefore produce the same latencies,
which the benchmark checks (the ``same`` column).  The bare loop also does
what the model must do to be comparable: it records latencies only for
requests arriving in the measured window, keeps a pending count, lets the
window's requests finish after it ends (the same drain rule as the model),
then computes mean and percentiles of the latencies.

Requests counted per run are the arrivals in ``[0, warmup + duration)``
(warm-up included), found by replaying the arrival stream outside the timed
region; "simulated requests per second" is that number over the median wall
time.

Timing: ``time.perf_counter`` around one whole run (the headline numbers),
and ``time.process_time`` beside it (the ``cpu`` column, steadier on a busy
machine); the garbage collector is left at its defaults (enabled) for both.
Model and bare runs alternate, and which of the two goes first alternates
too, after one short untimed warm-up run of each.

The "realistic" row runs the model with the library defaults (overflow,
timeout, reset on return, round trip, connect time) against the same bare
M/M/c loop (``c = pool_size``): it shows what the extra realism costs, it is
not the same queue.

Usage::

    python bench/bench_speed.py                # full: 5 pairs per row
    python bench/bench_speed.py --quick        # smaller runs, 3 pairs
    python bench/bench_speed.py --repeat 7 --json-out bench/results/speed.json
    python bench/bench_speed.py --profile      # also cProfile one model run per row
    python bench/bench_speed.py --check        # exit 1 if the plain row misses 2x
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import hashlib
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import simpy  # noqa: E402

from simlib.scenario import parse_scenario  # noqa: E402
from simlib.simulation import DRAIN_FACTOR, DRAIN_MIN, run_replication  # noqa: E402
from simlib.streams import generator  # noqa: E402

GOAL_RATIO = 2.0
BATCH = 4096  # same batch size as simlib.streams
SEED, REPLICATION = 1, 0
PLAIN, REALISTIC = "plain", "realistic"


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def scenario_dict(
    row: str, rate: float, service: float, servers: int, duration: float, warmup: float
) -> dict[str, Any]:
    """The scenario of one row, in the dict form ``parse_scenario`` takes."""
    workload = {"kind": "open", "rate": rate, "duration": duration, "warmup": warmup}
    query = {"service_time": {"dist": "exponential", "mean": service}}
    if row == PLAIN:  # M/M/c: nothing takes time but the query
        pool = {
            "kind": "sqlalchemy",
            "pool_size": servers,
            "max_overflow": 0,
            "pool_timeout": float("inf"),
            "reset_on_return": False,
        }
        database = {"connect_time": 0.0, "network_rtt": 0.0}
    elif row == REALISTIC:  # the library's and the simulator's defaults
        pool = {
            "kind": "sqlalchemy",
            "pool_size": servers,
            "max_overflow": 10,
            "pool_timeout": 30.0,
            "reset_on_return": True,
        }
        database = {"connect_time": 0.004, "network_rtt": 0.0001}
    else:
        raise ValueError(row)
    return {
        "name": f"bench-{row}",
        "seed": SEED,
        "replications": 1,
        "workload": workload,
        "query": query,
        "pool": pool,
        "database": database,
    }


# ---------------------------------------------------------------------------
# The bare SimPy M/M/c loop
# ---------------------------------------------------------------------------


def _batched(rng: np.random.Generator, mean: float) -> Callable[[], float]:
    """Exponential draws, one Python float at a time, from NumPy batches."""

    def values() -> Iterator[float]:
        while True:
            yield from rng.exponential(mean, BATCH).tolist()

    return values().__next__


def run_bare(
    rate: float, service: float, servers: int, duration: float, warmup: float
) -> dict[str, float]:
    """A bare SimPy M/M/c simulation over the same requests as the model."""
    env = simpy.Environment()
    res = simpy.Resource(env, servers)
    start, end = warmup, warmup + duration
    gap = _batched(generator(SEED, REPLICATION, "arrivals"), 1.0 / rate)
    draw_service = _batched(generator(SEED, REPLICATION, "service"), service)
    latencies: list[float] = []
    pending = 0
    drained = env.event()
    timeout, process = env.timeout, env.process

    def customer():
        nonlocal pending
        arrival = env.now
        measured = start <= arrival < end
        if measured:
            pending += 1
        with res.request() as req:
            yield req
            yield timeout(draw_service())
        if measured:
            now = env.now
            latencies.append(now - arrival)
            pending -= 1
            if pending == 0 and now >= end and not drained.triggered:
                drained.succeed()

    def arrivals():
        while True:
            yield timeout(gap())
            process(customer())

    process(arrivals())
    env.run(until=end)
    if pending:
        limit = env.timeout(max(DRAIN_MIN, DRAIN_FACTOR * duration))
        env.run(until=env.any_of([drained, limit]))
    lat = np.asarray(latencies) * 1000.0
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (math.nan,) * 3
    return {
        "completed": float(lat.size),
        "latency_mean_ms": float(lat.mean()) if lat.size else math.nan,
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
    }


def count_arrivals(rate: float, start: float, end: float) -> tuple[int, int]:
    """(arrivals in [0, end), arrivals in [start, end)), replaying the arrival stream.

    Runs outside the timed region.  Adds the gaps one after another from 0.0,
    as SimPy advances ``env.now``, so the boundaries match the simulation's.
    """
    rng = generator(SEED, REPLICATION, "arrivals")
    t, total, window = 0.0, 0, 0
    while t < end:
        times = np.cumsum(np.concatenate(([t], rng.exponential(1.0 / rate, BATCH))))[1:]
        inside = times[times < end]
        total += inside.size
        window += int(np.count_nonzero(inside >= start))
        t = float(times[-1])
    return total, window


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench_row(
    row: str,
    rate: float,
    service: float,
    servers: int,
    duration: float,
    warmup: float,
    repeat: int,
    verbose: bool = True,
) -> dict[str, Any]:
    """Alternate model and bare runs ``repeat`` times each; medians and ratio."""
    scenario = parse_scenario(scenario_dict(row, rate, service, servers, duration, warmup))

    def model() -> dict[str, float]:
        return run_replication(scenario, REPLICATION)

    def bare() -> dict[str, float]:
        return run_bare(rate, service, servers, duration, warmup)

    # Untimed warm-up of both (imports, allocator, caches) on a short run.
    short = parse_scenario(scenario_dict(row, rate, service, servers, 1.0, 0.5))
    run_replication(short, REPLICATION)
    run_bare(rate, service, servers, 1.0, 0.5)

    model_times: list[float] = []
    bare_times: list[float] = []
    model_cpu: list[float] = []
    bare_cpu: list[float] = []
    model_out: dict[str, float] = {}
    bare_out: dict[str, float] = {}
    for i in range(repeat):
        order = ("model", "bare") if i % 2 == 0 else ("bare", "model")
        for which in order:
            if which == "model":
                t, c, model_out = timed(model)
                model_times.append(t)
                model_cpu.append(c)
            else:
                t, c, bare_out = timed(bare)
                bare_times.append(t)
                bare_cpu.append(c)
        if verbose:
            print(
                f"  {row:<9} pair {i + 1}/{repeat}: model {model_times[-1]:.3f} s, "
                f"bare {bare_times[-1]:.3f} s",
                file=sys.stderr,
                flush=True,
            )

    total, window = count_arrivals(rate, warmup, warmup + duration)
    model_med = statistics.median(model_times)
    bare_med = statistics.median(bare_times)
    paired = [m / b for m, b in zip(model_times, bare_times)]
    # Same requests: the model's window arrivals equal the replayed count, and
    # (plain row) its latencies equal the bare loop's.
    model_window = round(model_out["offered_rps"] * duration)
    same_latency = math.isclose(
        model_out["latency_mean_ms"], bare_out["latency_mean_ms"], rel_tol=1e-9
    ) and math.isclose(model_out["latency_p99_ms"], bare_out["latency_p99_ms"], rel_tol=1e-9)
    return {
        "row": row,
        "scenario": scenario.to_dict(),
        "bare": {"servers": servers, "rate": rate, "service_mean": service},
        "simulated_seconds": warmup + duration,
        "requests": total,
        "requests_in_window": window,
        "model_window_arrivals": model_window,
        "repeat": repeat,
        "model_s": model_times,
        "bare_s": bare_times,
        "model_median_s": model_med,
        "bare_median_s": bare_med,
        "model_rps": total / model_med,
        "bare_rps": total / bare_med,
        "ratio": model_med / bare_med,
        "ratio_paired_median": statistics.median(paired),
        "model_cpu_s": model_cpu,
        "bare_cpu_s": bare_cpu,
        "cpu_ratio": statistics.median(model_cpu) / statistics.median(bare_cpu),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": model_med / bare_med <= GOAL_RATIO,
        "same_latencies": same_latency,
        "model_latency_mean_ms": model_out["latency_mean_ms"],
        "bare_latency_mean_ms": bare_out["latency_mean_ms"],
        "model_latency_p99_ms": model_out["latency_p99_ms"],
        "bare_latency_p99_ms": bare_out["latency_p99_ms"],
        "model_throughput_rps": model_out["throughput_rps"],
    }


def _profile(label: str, fn: Callable[[], Any], top: int, keys: tuple[str, ...]) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    for key in keys:
        out.write(f"\n=== {label}: top {top} by {key} ===\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def profile_model(
    row: str, rate: float, service: float, servers: int, duration: float, warmup: float, top: int
) -> str:
    """cProfile one model run; the top entries by cumulative and by own time."""
    scenario = parse_scenario(scenario_dict(row, rate, service, servers, duration, warmup))
    return _profile(
        f"model profile, row {row}",
        lambda: run_replication(scenario, REPLICATION),
        top,
        ("cumulative", "tottime"),
    )


def profile_bare(
    rate: float, service: float, servers: int, duration: float, warmup: float, top: int
) -> str:
    """cProfile one bare run (by own time), to set beside the model's profile."""
    return _profile(
        "bare M/M/c loop profile",
        lambda: run_bare(rate, service, servers, duration, warmup),
        top,
        ("tottime",),
    )


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def simlib_digest() -> str:
    """SHA-256 of simlib's sources: which version of the model was timed."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "simlib").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def machine_info() -> dict[str, Any]:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": load,
        "simpy": simpy.__version__,
        "numpy": np.__version__,
        "gc_enabled": gc.isenabled(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'row':<10} {'requests':>9} {'model s':>8} {'bare s':>8} "
        f"{'model req/s':>12} {'bare req/s':>11} {'ratio':>6} {'cpu':>5} {'goal':>5} {'same':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        goal = ("ok" if r["meets_goal"] else "MISS") if r["row"] == PLAIN else "-"
        same = "yes" if r["same_latencies"] else "no"
        lines.append(
            f"{r['row']:<10} {r['requests']:>9} {r['model_median_s']:>8.3f} "
            f"{r['bare_median_s']:>8.3f} {r['model_rps']:>12,.0f} {r['bare_rps']:>11,.0f} "
            f"{r['ratio']:>6.2f} {r['cpu_ratio']:>5.2f} {goal:>5} {same:>5}"
        )
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def _clean(value: Any) -> Any:
    """Non-finite floats (pool_timeout = inf) as strings, so the JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (20 s simulated), 3 pairs")
    p.add_argument("--repeat", type=int, help="model/bare pairs per row (default 5, quick 3)")
    p.add_argument("--rows", default="plain,realistic", help="comma list of plain,realistic")
    p.add_argument("--rate", type=float, default=2000.0, help="arrivals per second")
    p.add_argument("--service", type=float, default=0.0015, help="mean service time, s")
    p.add_argument("--servers", type=int, default=4, help="c = pool_size")
    p.add_argument("--duration", type=float, help="measured seconds (default 100, quick 20)")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds")
    p.add_argument(
        "--json-out",
        type=Path,
        help="where to write results (default bench/results/speed.json, "
        "or speed-quick.json with --quick)",
    )
    p.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    p.add_argument("--profile", action="store_true", help="cProfile one model run per row")
    p.add_argument("--profile-top", type=int, default=25, help="entries shown per profile")
    p.add_argument("--check", action="store_true", help="exit 1 if the plain row misses 2x")
    args = p.parse_args(argv)

    repeat = args.repeat or (3 if args.quick else 5)
    duration = args.duration or (20.0 if args.quick else 100.0)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in (PLAIN, REALISTIC):
            p.error(f"unknown row {r!r}")
    if repeat < 1:
        p.error("--repeat must be >= 1")

    print(
        f"rate {args.rate:g}/s, service mean {args.service * 1000:g} ms, c = {args.servers}, "
        f"rho = {args.rate * args.service / args.servers:.2f}, "
        f"{args.warmup:g} + {duration:g} s simulated, {repeat} pairs per row, gc enabled",
        flush=True,
    )
    started = dt.datetime.now(dt.UTC)
    results = [
        bench_row(r, args.rate, args.service, args.servers, duration, args.warmup, repeat)
        for r in rows
    ]
    print(table(results))
    print(
        "model/bare ratio of median wall times; goal: plain row <= "
        f"{GOAL_RATIO:g}x; cpu = the same ratio in process CPU time; "
        "same = identical latency mean and p99"
    )

    if args.profile:
        for r in rows:
            text = profile_model(
                r, args.rate, args.service, args.servers, duration, args.warmup, args.profile_top
            )
            print(text)
        text = profile_bare(
            args.rate, args.service, args.servers, duration, args.warmup, args.profile_top
        )
        print(text)

    if not args.no_json:
        default = "speed-quick.json" if args.quick else "speed.json"
        path = args.json_out or ROOT / "bench" / "results" / default
        doc = {
            "benchmark": "bench_speed",
            "date": started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "quick": args.quick,
            "timer": "time.perf_counter (wall) and time.process_time (cpu), whole run, gc enabled",
            "bare_rng": "numpy batches of 4096 via .tolist(), simlib's own stream seeds",
            "machine": machine_info(),
            "simlib_sha256": simlib_digest(),
            "rows": _clean(results),
        }
        write_json_atomic(Path(path), doc)
        print(f"wrote {path}", file=sys.stderr)

    if args.check and any(r["row"] == PLAIN and not r["meets_goal"] for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
