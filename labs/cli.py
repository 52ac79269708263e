"""Command line: ``python -m labs run|compare|services ...``.

::

    python -m labs run SCENARIO.toml [--set KEY=VALUE ...] [--json]
    python -m labs compare SCENARIO.toml [--set KEY=VALUE ...] [--json]
    python -m labs validate [--only NAME] [--set KEY=VALUE ...] [--quick] [--json]
                            [--markdown] [--out FILE] [--strict]
    python -m labs services up [--replicas N] [--no-redis] [--max-connections N] [--json]
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
import math
import os
import sys
from collections.abc import Mapping, Sequence

from labs.services import ServiceError
from simlib.cli import Parser, UsageError, add_scenario_arguments
from simlib.scenario import ScenarioError, load_scenario
from simlib.simulation import check_supported

NOT_YET = "the live executor is not available yet"


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
    up = ssub.add_parser("up", help="start Postgres (primary + replicas) and Redis, detached")
    up.add_argument("--replicas", type=int, default=1, metavar="N", help="streaming replicas")
    up.add_argument("--no-redis", action="store_true", help="do not start Redis")
    up.add_argument(
        "--max-connections", type=int, default=100, metavar="N", help="Postgres max_connections"
    )
    ssub.add_parser("down", help="stop what `services up` started and delete its files")
    ssub.add_parser("status", help="show which services `labs run` would use")
    for p in ssub.choices.values():
        p.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


# ---------------------------------------------------------------------------
# run / compare: the executor is imported only when needed
# ---------------------------------------------------------------------------


def _executor(name: str):
    try:
        import labs.executor as executor
    except ModuleNotFoundError as e:
        if e.name in ("labs.executor", "labs"):
            raise UsageError(NOT_YET) from None
        raise
    function = getattr(executor, name, None)
    if function is None:
        raise UsageError(NOT_YET)
    return executor, function


def _document(result: object) -> dict:
    if isinstance(result, Mapping):
        return dict(result)
    to_json = getattr(result, "to_json", None)
    if callable(to_json):
        return to_json()
    raise TypeError(f"labs.executor returned {type(result).__name__}, not a JSON document")


def _estimates(metrics: Mapping[str, Mapping]) -> dict:
    from simlib.metrics import Estimate

    out = {}
    for name, m in metrics.items():
        value = m.get("value")
        ci = m.get("ci95")
        out[name] = Estimate(
            math.nan if value is None else float(value),
            None if ci is None or None in ci else (float(ci[0]), float(ci[1])),
        )
    return out


def _with_services(scenario, function, **kw):
    """Call ``function(scenario, primary_dsn, **kw)`` with the services it needs.

    Services are found as the contract says (environment, ``services up``,
    else throwaway servers stopped afterwards).  Which ones were used goes
    into the result's ``details["services"]`` when the result has details.
    """
    from labs.services import services_for_scenario

    with services_for_scenario(scenario) as svc:
        result = function(scenario, svc.primary, admin_dsn=svc.primary_admin,
                          replicas=svc.replicas, redis_url=svc.redis, **kw)
        wanted = scenario.database.max_connections
        actual = wanted if svc.can_configure else svc.max_connections()
        info = {
            "source": svc.source,
            "max_connections": actual,
            "replicas": len(svc.replicas),
            "redis": svc.redis is not None,
        }
        if actual != wanted:
            print(
                f"labs: note: the server's max_connections is {actual}, the scenario says "
                f"{wanted}; services from {svc.source} cannot be reconfigured",
                file=sys.stderr,
            )
        if scenario.replicas is not None and not svc.can_configure:
            from labs.services.discovery import requirements

            lag = requirements(scenario)["replica_delay"]
            delay = svc.replica_delay()
            info["replica_delay"] = delay
            if abs(delay - lag) > 1e-3:
                print(
                    f"labs: note: the replicas apply commits {delay:g} s late, the scenario's "
                    f"lag is {lag:g} s; services from {svc.source} cannot be reconfigured",
                    file=sys.stderr,
                )
        details = getattr(result, "details", None)
        if isinstance(details, dict):
            details["services"] = info
        return result


def _run(args: argparse.Namespace) -> int:
    executor, run_live = _executor("run_live")
    scenario = load_scenario(args.scenario, args.overrides)
    check_supported(scenario)  # refuse before starting any server
    result = _with_services(scenario, run_live, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(_document(result), allow_nan=False))
        return 0
    render = getattr(executor, "render_run", None)
    if callable(render):
        print(render(result))
    else:
        from simlib.report import table

        doc = _document(result)
        print(table(f"labs: {scenario.name} (pool {scenario.pool.kind})",
                    _estimates(doc.get("metrics", {}))))
    return 0


def check_writable(path: str, option: str) -> None:
    """Raise UsageError unless a file can be created at ``path`` (makes its directory)."""
    from pathlib import Path

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
    from labs import validate
    from simlib.files import atomic_write_text

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
    summary = doc["summary"]
    return 1 if args.strict and summary["goals_met"] < summary["goals"] else 0


def _compare(args: argparse.Namespace) -> int:
    executor, compare = _executor("compare")
    scenario = load_scenario(args.scenario, args.overrides)
    check_supported(scenario)
    result = _with_services(scenario, compare)
    if args.json:
        print(json.dumps(_document(result), allow_nan=False))
        return 0
    render = getattr(executor, "render_compare", None)
    if callable(render):
        print(render(result))
        return 0
    from simlib.report import format_estimate

    doc = _document(result)
    sim = _estimates(doc.get("simulated", {}).get("metrics", {}))
    live = _estimates(doc.get("measured", {}).get("metrics", {}))
    names = [n for n in sim if n in live] + [n for n in live if n not in sim]
    rows = [(n, format_estimate(sim[n]) if n in sim else "-",
             format_estimate(live[n])) for n in names]
    w = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in
         enumerate(("metric", "simulated", "measured"))]
    print(f"labs compare: {scenario.name}")
    print(f"{'metric':<{w[0]}}  {'simulated':>{w[1]}}  {'measured':>{w[2]}}")
    print("-" * (sum(w) + 4))
    for n, s, m in rows:
        print(f"{n:<{w[0]}}  {s:>{w[1]}}  {m:>{w[2]}}")
    return 0


# ---------------------------------------------------------------------------
# services up / down / status
# ---------------------------------------------------------------------------


def _print_status(doc: Mapping, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc))
        return
    heading = {
        "env": "services: from the environment (LABS_PG_PRIMARY, LABS_PG_REPLICAS, LABS_REDIS)",
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


def _services(args: argparse.Namespace) -> int:
    from labs.services import discovery
    from labs.services.common import signals_deferred, signals_raise

    if args.action == "status":
        doc = discovery.describe()
        _print_status(doc, args.json)
        if not doc["ok"]:
            print(f"labs: {doc['problems'][0]}", file=sys.stderr)
            return 2
        return 0

    if args.action == "down":
        state = discovery.read_state()
        stopped = []
        if state is not None:
            cluster = discovery.LocalCluster.from_state(state)
            with signals_deferred():
                cluster.stop()
            stopped = [s["dsn"] for s in [state.get("primary"), *(state.get("replicas") or [])]
                       if s] + ([state["redis"]["url"]] if state.get("redis") else [])
        discovery.remove_state()
        if args.json:
            print(json.dumps({"stopped": stopped, "state_file": str(discovery.state_path())}))
        elif stopped:
            print("stopped: " + ", ".join(stopped))
        else:
            print("nothing to stop: `python -m labs services up` has not started anything")
        return 0

    # up
    if args.replicas < 0:
        raise UsageError(f"--replicas: must be an integer >= 0, got {args.replicas}")
    if args.max_connections < 1:
        raise UsageError(f"--max-connections: must be an integer >= 1, got {args.max_connections}")
    state = discovery.read_state()
    if state is not None:
        if not discovery.state_problems(state):
            doc = discovery.describe(env={})
            doc["already_running"] = True
            if not args.json:
                print("already running (stop with `python -m labs services down`)")
            _print_status(doc, args.json)
            return 0
        with signals_deferred():  # leftovers of an earlier `up`: clear them first
            discovery.LocalCluster.from_state(state).stop()
        discovery.remove_state()
    discovery.check_state_dir()  # before starting servers it could not record
    with signals_raise():
        cluster = discovery.LocalCluster.start(
            replicas=args.replicas,
            redis=not args.no_redis,
            max_connections=args.max_connections,
            detached=True,
        )
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
            print("note: LABS_PG_PRIMARY/LABS_PG_REPLICAS/LABS_REDIS are set and take precedence")
        print("stop with: python -m labs services down")
    return 0


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
