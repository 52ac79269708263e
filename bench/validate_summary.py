"""Summarise consecutive ``labs validate`` runs: goals met per run, per metric, and the errors.

    python bench/validate_summary.py RUN.json [RUN.json ...]

Reads the JSON documents ``labs validate --out`` wrote and prints Markdown:

* one line per run: goals met of goals, with the calibration it ran with;
* per metric: goals met over all runs, and the distribution of the error
  (predicted minus measured: relative for the relative goals, absolute for
  the absolute ones) as its median, its 90th percentile of the absolute
  error, and the goal's tolerance;
* the goals missed in every run (what a model change has to explain).

A goal that passed through a floor (``labs validate``'s ``CONNECTS_FLOOR``
and ``CHECKOUT_FLOOR_MS``) counts as met, as ``labs validate`` counts it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


class InputError(Exception):
    """A file that is not a ``labs validate`` document."""


def _load(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("executor") != "labs-validate":
        raise InputError(f"{path} is not a `labs validate --json` document")
    return doc


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(docs: list[dict[str, Any]], names: list[str]) -> str:
    kinds = {g["metric"]: (g["kind"], g["tolerance"]) for g in docs[0]["goals"]}
    lines = ["| run | goals met | share | rtt ms | query overhead ms | host busy before |",
             "|---|---|---|---|---|---|"]
    met: dict[str, list[bool]] = defaultdict(list)
    errors: dict[str, list[float]] = defaultdict(list)
    missed: dict[tuple[str, str], int] = defaultdict(int)
    for name, doc in zip(names, docs, strict=True):
        s, cal = doc["summary"], doc["calibration"]
        lines.append(f"| {name} | {s['goals_met']} / {s['goals']} | "
                     f"{s['goals_met'] / s['goals']:.1%} | {cal['rtt'] * 1e3:.3f} | "
                     f"{cal['query_overhead'] * 1e3:.3f} | "
                     f"{doc.get('host_busy_cores_before') or 0:.2f} cores |")
        for row in doc["rows"]:
            for c in row["checks"]:
                if c.get("passed") is None:
                    continue  # not a goal of this scenario
                metric = c["metric"]
                met[metric].append(bool(c["passed"]))
                if not c["passed"]:
                    missed[(row["scenario"], metric)] += 1
                p, m = c.get("predicted"), c.get("measured")
                if p is None or m is None:
                    continue
                kind = kinds.get(metric, ("rel", 0.0))[0]
                if kind == "abs":
                    errors[metric].append(p - m)
                elif m:
                    errors[metric].append((p - m) / m)
    total = sum(sum(v) for v in met.values())
    count = sum(len(v) for v in met.values())
    lines += ["", f"All runs: **{total} of {count} goals ({total / count:.1%})**.", "",
              "| metric | goal | met | median error | 90% of errors within |",
              "|---|---|---|---|---|"]
    for metric, (kind, tol) in kinds.items():
        if metric not in met:
            continue
        errs = errors.get(metric, [])
        unit = "" if kind == "abs" else "%"
        scale = 1.0 if kind == "abs" else 100.0
        goal = f"{tol:g} abs" if kind == "abs" else f"{tol:.0%}"
        med = f"{statistics.median(errs) * scale:+.3g}{unit}" if errs else "-"
        p90 = f"{_quantile([abs(e) for e in errs], 0.9) * scale:.3g}{unit}" if errs else "-"
        lines.append(f"| {metric} | {goal} | {sum(met[metric])} / {len(met[metric])} | "
                     f"{med} | {p90} |")
    always = sorted(k for k, n in missed.items() if n == len(docs))
    lines += ["", "Missed in every run: " + (", ".join(f"{s} {m}" for s, m in always) or "none")
              + "."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python bench/validate_summary.py RUN.json [RUN.json ...]", file=sys.stderr)
        return 2
    try:
        docs = [_load(p) for p in argv]
    except InputError as e:
        print(f"validate_summary: {e}", file=sys.stderr)
        return 2
    print(summary(docs, [Path(p).stem for p in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
