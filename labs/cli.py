"""Command line: ``python -m labs run|compare|services ...``.

::

    python -m labs run SCENARIO.toml [--set KEY=VALUE ...] [--json]
    python -m labs compare SCENARIO.toml [--set KEY=VALUE ...] [--json]
    python -m labs validate [--only NAME] [--set KEY=VALUE ...] [--quick] [--json]
                            [--markdown] [--out FILE] [--strict]
    python -m labs services up [--replicas N] [--no-redis] [--max-connections N]
                               [--pgbouncer] [--prometheus] [--json]
    python -m labs services down [--json]
    python -m labs services status [--json]

As in ``python -m simlib``, bad input never produces a traceback: one line on
stderr naming what is wrong and what is allowed, exit status 2.  ``services
status`` exits 2 (with one line on stderr) when the services ``labs run`` would
use do not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from labs import validate
from labs.compare import render_compare, run_comparison
from labs.diagnose import diagnose, port_of
from labs.executor import LiveResult, run_live
from labs.services import ServiceError, Services, configure, discovery, services_for_scenario
from labs.services.common import signals_deferred, signals_raise
from labs.services.discovery import env_variables
from labs.topology import Topology
from simlib.cli import Parser, UsageError, add_scenario_arguments
from simlib.files import atomic_write_text
from simlib.metrics import Estimate
from simlib.report import table
from simlib.scenario import Scenario, ScenarioError, load_scenario
from simlib.simulation import check_supported


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m labs",
        description="Run scenarios on real Postgres and Redis; manage local servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    add_scenario_arguments(sub.add_parser("run", help="run one scenario on live services"))
    add_scenario_arguments(
        sub.add_parser("compare", help="simulate and run one scenario, side by side")
    )

    val = sub.add_parser(
        "validate", help="run the built-in fidelity suite: predicted vs measured, scored"
    )
    val.add_argument(
        "--only", action="append", default=[], metavar="NAME[,NAME]",
        help="run only these suite scenarios (by name)",
    )
    val.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one field in every suite scenario",
    )
    val.add_argument("--quick", action="store_true",
                     help="short windows: checks the machinery, not the fidelity")
    val.add_argument("--json", action="store_true", help="print one JSON document")
    val.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    val.add_argument("--out", metavar="JSON",
                     help="also write the JSON document here (atomically)")
    val.add_argument("--strict", action="store_true",
                     help="exit 1 when any goal is missed")

    services = sub.add_parser("services", help="start, stop or inspect local servers")
    ssub = services.add_subparsers(dest="action", required=True, parser_class=Parser)
    up = ssub.add_parser(
        "up", help="start Postgres (primary + replicas), Redis and PgBouncer, detached"
    )
    up.add_argument("--replicas", type=int, default=1, metavar="N", help="streaming replicas")
    up.add_argument("--no-redis", action="store_true", help="do not start Redis")
    up.add_argument(
        "--max-connections", type=int, default=100, metavar="N", help="Postgres max_connections"
    )
    up.add_argument("--pgbouncer", action="store_true",
                    help="also PgBouncer in front of the primary (its default settings; a "
                    "scenario's [pgbouncer] is applied per run)")
    up.add_argument("--prometheus", action="store_true",
                    help="also a Prometheus server on loopback (lesson 12; it scrapes the "
                    "targets written to its targets/ directory)")
    ssub.add_parser("down", help="stop what `services up` started and delete its files")
    ssub.add_parser("status", help="show which services `labs run` would use")
    for p in ssub.choices.values():
        p.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


# ---------------------------------------------------------------------------
# run / compare / validate
# ---------------------------------------------------------------------------

R = TypeVar("R")


def _services_info(scenario: Scenario, svc: Services) -> dict[str, object]:
    """Which services a run used, for its ``details["services"]``."""
    info: dict[str, object] = {
        "source": svc.source,
        "max_connections": (scenario.database.max_connections if svc.can_configure
                            else svc.max_connections()),
        "replicas": len(svc.replicas),
        "redis": svc.redis is not None,
    }
    if scenario.replicas is not None and not svc.can_configure:
        info["replica_delay"] = svc.replica_delay()
    if scenario.pgbouncer is not None:
        info["pgbouncer"] = svc.pgbouncer is not None
        port = port_of(svc.pgbouncer) if svc.pgbouncer is not None else None
        if port is not None:
            info["pgbouncer_port"] = port
    return info


def _live(scenario: Scenario, work: Callable[[Topology], R]) -> tuple[R, dict[str, object]]:
    """``work(topology)`` on the services the scenario needs, found as the contract says.

    Refused before any server starts when labs cannot run the scenario; where
    the services found cannot be made to match it, a note says how they differ.
    """
    check_supported(scenario)
    with services_for_scenario(scenario) as svc:
        note = configure(scenario, svc)
        if note:
            print(f"labs: note: {note}", file=sys.stderr)
        return work(svc.topology), _services_info(scenario, svc)


def _note_faults(scenario: Scenario, result: LiveResult, pgbouncer_port: str | None) -> None:
    """One line on stderr when the run failed requests: which fault, and what to change."""
    line = diagnose(scenario, result.metrics, result.details, pgbouncer_port)
    if line:
        print(f"labs: {scenario.name}: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, args.overrides)
    progress = not args.json and sys.stderr.isatty()
    result, info = _live(scenario, lambda t: run_live(scenario, t, progress=progress))
    result.details["services"] = info
    _note_faults(scenario, result, info.get("pgbouncer_port"))  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(result.to_json(), allow_nan=False))
    else:
        metrics = {name: Estimate(value, None) for name, value in result.metrics.items()}
        print(table(f"labs: {scenario.name} (pool {scenario.pool.kind})", metrics))
    return 0


def _compare(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, args.overrides)
    comparison, info = _live(scenario, lambda t: run_comparison(scenario, t))
    comparison.live.details["services"] = info
    _note_faults(scenario, comparison.live, info.get("pgbouncer_port"))  # type: ignore[arg-type]
    doc = comparison.document
    print(json.dumps(doc, allow_nan=False) if args.json else render_compare(doc))
    return 0


def check_writable(path: str, option: str) -> None:
    """Raise UsageError unless a file can be created at ``path`` (makes its directory)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        ok = target.parent.is_dir() and os.access(target.parent, os.W_OK | os.X_OK)
        ok = ok and not target.is_dir()
    except OSError:
        ok = False
    if not ok:
        raise UsageError(f"{option}: must be a file path in a writable directory, got {path}")


def _validate(args: argparse.Namespace) -> int:
    scenarios = validate.load_suite(args.only, args.overrides, quick=args.quick)
    if args.out:
        check_writable(args.out, "--out")  # now, not after minutes of measuring
    doc = validate.validate(
        scenarios, on_row=None if args.json else validate.progress_line
    )
    text = json.dumps(doc, allow_nan=False)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.json:
        print(text)
    else:
        print(validate.render(doc, markdown=args.markdown))
    summary: dict[str, int] = doc["summary"]  # type: ignore[assignment]
    return 1 if args.strict and summary["goals_met"] < summary["goals"] else 0


# ---------------------------------------------------------------------------
# services up / down / status
# ---------------------------------------------------------------------------


def _print_status(doc: Mapping, as_json: bool) -> None:

    if as_json:
        print(json.dumps(doc))
        return
    heading = {
        "env": f"services: from the environment ({', '.join(env_variables())})",
        "services-up": f"services: started by `python -m labs services up` ({doc['state_file']})",
        "throwaway": "services: none configured; `labs run` starts throwaway local servers",
    }[doc["route"]]
    print(heading)
    servers = doc.get("servers") or []
    if not servers:
        return
    rows = [
        (s["role"], s["dsn"], "yes" if s["answers"] else "no", s.get("problem") or "")
        for s in servers
    ]
    w0 = max(len("role"), *(len(r[0]) for r in rows))
    w1 = max(len("dsn"), *(len(r[1]) for r in rows))
    print(f"{'role':<{w0}}  {'dsn':<{w1}}  answers")
    for role, dsn, ok, problem in rows:
        print(f"{role:<{w0}}  {dsn:<{w1}}  {ok}" + (f"  ({problem})" if problem else ""))


def _services_status(args: argparse.Namespace) -> int:

    doc = discovery.describe()
    _print_status(doc, args.json)
    if not doc["ok"]:
        print(f"labs: {doc['problems'][0]}", file=sys.stderr)
        return 2
    return 0


def _stop_recorded(state: Mapping) -> list[str]:
    """Stop the servers a state file of `services up` names; their DSNs and URLs."""

    cluster = discovery.LocalCluster.from_state(state)
    stopped = cluster.addresses()
    with signals_deferred():
        cluster.stop()
    return stopped


def _services_down(args: argparse.Namespace) -> int:

    state = discovery.read_state()
    stopped = _stop_recorded(state) if state is not None else []
    discovery.remove_state()
    if args.json:
        print(json.dumps({"stopped": stopped, "state_file": str(discovery.state_path())}))
    elif stopped:
        print("stopped: " + ", ".join(stopped))
    else:
        print("nothing to stop: `python -m labs services up` has not started anything")
    return 0


def _services_up(args: argparse.Namespace) -> int:

    if args.replicas < 0:
        raise UsageError(f"--replicas: must be an integer >= 0, got {args.replicas}")
    if args.max_connections < 1:
        raise UsageError(f"--max-connections: must be an integer >= 1, got {args.max_connections}")
    state = discovery.read_state()
    if state is not None:
        problems = discovery.state_problems(state)
        for flag, name in (("pgbouncer", "PgBouncer"), ("prometheus", "Prometheus")):
            if getattr(args, flag) and not problems and not state.get(flag):
                raise UsageError(
                    f"--{flag}: `labs services up` is already running without {name}; "
                    "run `python -m labs services down` first"
                )
        if not problems:
            doc = discovery.describe(env={})
            doc["already_running"] = True
            if not args.json:
                print("already running (stop with `python -m labs services down`)")
            _print_status(doc, args.json)
            return 0
        _stop_recorded(state)  # leftovers of an earlier `up`: clear them first
        discovery.remove_state()
    discovery.check_state_dir()  # before starting servers it could not record
    wants = {"replicas": args.replicas, "redis": not args.no_redis,
             "max_connections": args.max_connections, "pgbouncer": args.pgbouncer,
             "prometheus": args.prometheus}
    with signals_raise():
        cluster = discovery.LocalCluster.start(wants, detached=True)
        try:
            discovery.write_state(cluster)
        except BaseException:
            with signals_deferred():
                cluster.stop()
            raise
        cluster.detach()
    doc = discovery.describe(env={})
    doc["already_running"] = False
    _print_status(doc, args.json)
    if not args.json:
        if discovery.env_config() is not None:
            print(f"note: {'/'.join(discovery.env_variables())} are set and take precedence")
        print("stop with: python -m labs services down")
    return 0


def _services(args: argparse.Namespace) -> int:
    action = {"status": _services_status, "down": _services_down, "up": _services_up}
    return action[args.action](args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "services":
            return _services(args)
        if args.command == "validate":
            return _validate(args)
        return _run(args) if args.command == "run" else _compare(args)
    except (ScenarioError, UsageError, ServiceError) as e:
        print(f"labs: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labs: interrupted", file=sys.stderr)
        return 130
