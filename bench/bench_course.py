"""How long the course takes: every lesson notebook executed top to bottom, one after another.

Each notebook runs in a fresh Python kernel (nbclient, as nbval and
``jupyter nbconvert --execute`` do), in order, on the servers it starts itself,
and the wall-clock time of each is recorded with the machine's load around it
(the live cells share two cores with everything else, so a busy machine makes
the course slower and its runs wait for quiet).

Usage::

    python bench/bench_course.py                       # time the course; outputs thrown away
    python bench/bench_course.py --inplace             # ... and commit-ready: write the
                                                       #     executed notebooks back
    python bench/bench_course.py --only 02 --only 03   # some lessons

Results go to ``bench/results/course.json`` (atomically): per notebook the
seconds, the code cells and the load average before and after; the total;
and whether every notebook ran without error.  With ``--inplace`` each
notebook file is replaced (atomically) by its executed version, widget state
included, so JupyterLab shows the sliders' last drawing when it opens it.
Exit status 1 if a notebook failed (its error is printed; the file is left as
it was).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simlib.files import atomic_write_text  # noqa: E402


def run_one(path: Path, *, timeout: float, inplace: bool) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1][:300]
    seconds = time.perf_counter() - start
    if error is None and inplace:
        atomic_write_text(path, nbformat.writes(nb) + "\n")
    return {
        "notebook": path.name,
        "seconds": round(seconds, 1),
        "code_cells": sum(c.cell_type == "code" for c in nb.cells),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "error": error,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="run only notebooks whose name starts with this (repeatable)")
    ap.add_argument("--inplace", action="store_true",
                    help="write the executed notebooks back (for committing)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per cell (600)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/course.json"))
    args = ap.parse_args(argv)

    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
        if not paths:
            print(f"bench_course: no notebook starts with {args.only}; "
                  f"there are {[p.name[:2] for p in sorted((ROOT / 'notebooks').glob('*.ipynb'))]}",
                  file=sys.stderr)
            return 2
    rows = []
    for path in paths:
        row = run_one(path, timeout=args.timeout, inplace=args.inplace)
        rows.append(row)
        status = "ok" if row["error"] is None else f"FAILED: {row['error']}"
        print(f"{row['notebook']:<34} {row['seconds']:7.1f} s  load {row['load_before']:.2f}"
              f" -> {row['load_after']:.2f}  {status}", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':<34} {total:7.1f} s ({total / 60:.1f} min)")
    doc = {
        "command": "python bench/bench_course.py " + " ".join(argv or sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "notebooks": rows,
        "total_seconds": round(total, 1),
        "all_ok": all(r["error"] is None for r in rows),
    }
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    return 0 if doc["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
