"""Command line: ``python -m simlib run|sweep|advise SCENARIO.toml ...``.

Bad input never produces a traceback: it prints one line on stderr naming
what is wrong and what is allowed, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from simlib.files import atomic_write
from simlib.report import plot_run, table
from simlib.scenario import ScenarioError, load_scenario
from simlib.simulation import simulate


class UsageError(Exception):
    """A bad command line, reported in one line like a bad scenario."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """SCENARIO, ``--set`` and ``--json``: the contract's arguments, shared with labs."""
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. pool.pool_size=8 (value read as TOML)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def build_parser() -> Parser:
    parser = Parser(prog="python -m simlib", description="Simulate Python database access.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(p: argparse.ArgumentParser) -> None:
        add_scenario_arguments(p)
        p.add_argument(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="processes to use (default: all cores)",
        )

    run = sub.add_parser("run", help="simulate one scenario")
    common(run)
    run.add_argument("--plot", metavar="PNG", help="also write a figure of the latencies")

    sw = sub.add_parser("sweep", help="simulate every combination of a parameter grid")
    common(sw)
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=VALUES",
        help="e.g. pool.pool_size=1..20 or workload.rate=100,200,400",
    )
    sw.add_argument("--out", metavar="CSV", help="CSV file (default: results/<name>-sweep.csv)")
    sw.add_argument("--plot", metavar="PNG", help="figure (default: next to the CSV, .png)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")

    ad = sub.add_parser("advise", help="the smallest setting whose 95%% interval meets every SLO")
    common(ad)
    ad.add_argument("--vary", required=True, metavar="KEY=VALUES",
                    help="the one setting to size, e.g. pool.pool_size=1..50")
    ad.add_argument("--slo", action="append", default=[], required=True, metavar="METRIC<=X",
                    help="an objective, e.g. 'latency_p99_ms<=50' (repeat for more)")
    ad.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, args.overrides)
    result = simulate(scenario, workers=args.workers)
    if args.plot:
        plot_run(result.metrics, f"{scenario.name} (simlib)", args.plot)
    if args.json:
        print(json.dumps(result.to_json(), allow_nan=False))
    else:
        w = scenario.workload
        note = (
            f"{scenario.replications} replications, seed {scenario.seed}, "
            f"{w.duration:g} s measured after {w.warmup:g} s warm-up; ± is the 95% interval"
        )
        print(table(f"simlib: {scenario.name} (pool {scenario.pool.kind})", result.metrics, note))
        if args.plot:
            print(f"figure: {args.plot}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from simlib.sweep import parse_grid, plot_sweep, sweep  # pandas: only when sweeping

    scenario = load_scenario(args.scenario, args.overrides)
    grid: dict[str, list[Any]] = {}
    for spec in args.grid:
        key, values = parse_grid(spec)
        grid[key] = values
    out = Path(args.out or f"results/{scenario.name}-sweep.csv")
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    progress = not (args.no_progress or args.json) and sys.stderr.isatty()
    frame = sweep(scenario, grid, workers=args.workers, progress=progress)
    atomic_write(out, lambda f: frame.to_csv(f, index=False))
    plot_sweep(frame, list(grid), f"{scenario.name}: sweep", str(plot))
    if args.json:
        doc = {
            "executor": "simlib",
            "scenario": scenario.name,
            "grid": grid,
            "csv": str(out),
            "plot": str(plot),
            "points": json.loads(frame.to_json(orient="records")),
        }
        print(json.dumps(doc))
    else:
        cols = list(grid) + [
            "throughput_rps",
            "latency_mean_ms",
            "latency_p95_ms",
            "p_wait",
            "timeout_rate",
            "connections_mean",
        ]
        # With a cache or writes, their contract metrics too.
        cols += [c for c in ("cache_hit_ratio", "stale_read_ratio") if frame[c].notna().any()]
        print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print(f"csv: {out}\nplot: {plot}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from simlib.advise import advise, parse_objective, settings  # pandas: only here
    from simlib.sweep import parse_grid

    scenario = load_scenario(args.scenario, args.overrides)
    objectives = [parse_objective(text) for text in args.slo]
    try:
        key, values = parse_grid(args.vary)
    except ScenarioError as error:  # the grid's wording, under this option's name
        raise ScenarioError(error.field.replace("--grid", "--vary"), error.problem,
                            error.got) from None
    progress = not (args.no_progress or args.json) and sys.stderr.isatty()
    advice = advise(scenario, key, values, objectives, workers=args.workers, progress=progress)
    if args.json:
        print(json.dumps(advice.to_json(), allow_nan=False))
        return 0
    frame = advice.table
    cols = [key, *dict.fromkeys(o.metric for o in objectives), "meets_slo",
            "worst_case_connections"]
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    limit = scenario.database.max_connections
    flagged = [v for v, bad in zip(frame[key], frame["exceeds_max_connections"], strict=True)
               if bad]
    if advice.recommended is None:
        print(f"no value of {key} meets {', '.join(map(str, objectives))} with 95% confidence")
    else:
        print(f"recommended: {key} = {advice.recommended} (the smallest whose 95% interval "
              f"meets {', '.join(map(str, objectives))})")
        print("\n".join(settings(advice.scenario)))
    if flagged:
        print(f"warning: at {key} = {', '.join(map(str, flagged))} the worst case opens more "
              f"than max_connections = {limit} connections on Postgres")
    if "exceeds_max_client_conn" in frame:
        over = [v for v, bad in zip(frame[key], frame["exceeds_max_client_conn"], strict=True)
                if bad]
        if over:
            print(f"warning: at {key} = {', '.join(map(str, over))} the pools may open more "
                  "client connections than PgBouncer's max_client_conn")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise UsageError(f"--workers: must be an integer >= 1, got {args.workers}")
        commands = {"run": _run, "sweep": _sweep, "advise": _advise}
        return commands[args.command](args)
    except (ScenarioError, UsageError) as e:
        print(f"simlib: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simlib: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and no traceback.
        sys.stderr.close()
        return 0
