"""Is a live cell's tolerance safe?  Run its cells again and again in one kernel.

The developers' rule: a live assertion in a lesson must hold in 20 of 20
consecutive runs on this machine before its tolerance is committed.  Running
the whole notebook twenty times would take most of an hour and re-run cells
that measure nothing; this runs a lesson's *set-up* cells once (imports,
scenarios, the ``Lab`` that starts the throwaway servers) and then its *live*
cells ``--runs`` times, in order, in the same kernel, exactly as nbval would
execute them (nbclient, the notebook's own directory).

Usage::

    python bench/repeat_cells.py notebooks/03-overflow-timeouts.ipynb \\
        --setup 1,4,6,10 --repeat 16 --runs 20

Cells are numbered from 0 as the notebook lists them (markdown included).
Each run's text output is kept, so the figures behind a tolerance (the
``ok:`` lines of :func:`labs.lesson.check`) can be read afterwards.  Results
go to ``bench/results/repeat-<notebook>.json`` (atomically): per run whether
every repeated cell passed, its seconds and its printed lines.  A cell that
fails does not stop the series (the point is to count); the kernel is
restarted and the set-up run again before the next run, since a failed cell
can leave the lab half-way.  Exit status 1 if any run failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simlib.files import atomic_write_text  # noqa: E402


def _cells(text: str, count: int, flag: str) -> list[int]:
    try:
        cells = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"repeat_cells: {flag} takes cell numbers such as 1,4,6; got {text!r}") from None
    bad = [c for c in cells if not 0 <= c < count]
    if bad:
        raise ValueError(f"repeat_cells: {flag} {bad}: the notebook has cells 0..{count - 1}")
    return cells


def _last_line(exc: CellExecutionError, limit: int) -> str:
    """The line of a cell's error that says what went wrong (its last), shortened."""
    return str(exc).strip().splitlines()[-1][:limit]


def _text(outputs: list) -> list[str]:
    lines: list[str] = []
    for out in outputs:
        if out.get("output_type") == "stream":
            lines += "".join(out.get("text", "")).splitlines()
        elif out.get("output_type") == "error":
            lines.append(f"{out.get('ename')}: {out.get('evalue')}"[:500])
    return lines


class SetupFailed(Exception):
    """A set-up cell raised: the runs would measure nothing."""


class Session:
    """One kernel with the notebook's set-up cells executed in it."""

    def __init__(self, nb: nbformat.NotebookNode, path: Path, setup: list[int],
                 timeout: float) -> None:
        self.nb = nb
        self.client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
        self._kernel: Any = self.client.setup_kernel()
        self._kernel.__enter__()
        for index in setup:
            try:
                self.run(index)
            except CellExecutionError as exc:
                self.close()
                raise SetupFailed(f"repeat_cells: set-up cell {index} failed: "
                                  f"{_last_line(exc, 300)}") from None

    def run(self, index: int) -> list[str]:
        cell = copy.deepcopy(self.nb.cells[index])
        self.client.execute_cell(cell, index)
        return _text(cell.get("outputs", []))

    def close(self) -> None:
        if self._kernel is not None:  # once: a failed set-up closes it early
            kernel, self._kernel = self._kernel, None
            kernel.__exit__(None, None, None)


def _write(out: Path, argv: list[str] | None, path: Path, setup: list[int],
           repeat: list[int], runs: list[dict]) -> None:
    """Write the series so far (atomically)."""
    doc = {
        "command": "python bench/repeat_cells.py " + " ".join(argv or sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notebook": path.name, "setup": setup, "repeat": repeat,
        "passed": sum(r["passed"] for r in runs), "runs": runs,
    }
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("--setup", required=True, help="cells run once first, e.g. 1,4,6,10")
    ap.add_argument("--repeat", required=True, help="cells run --runs times, e.g. 16,24")
    ap.add_argument("--runs", type=int, default=20, help="how many times (20)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per cell (900)")
    ap.add_argument("--out", help="result file (bench/results/repeat-<notebook>.json)")
    args = ap.parse_args(argv)
    path = Path(args.notebook)
    if not path.is_file() or path.suffix != ".ipynb":
        print(f"repeat_cells: {args.notebook!r} is not a notebook file (.ipynb)", file=sys.stderr)
        return 2
    if args.runs < 1:
        print(f"repeat_cells: --runs must be at least 1, got {args.runs}", file=sys.stderr)
        return 2
    nb = nbformat.read(path, as_version=4)
    try:
        setup = _cells(args.setup, len(nb.cells), "--setup")
        repeat = _cells(args.repeat, len(nb.cells), "--repeat")
    except ValueError as bad:
        print(bad, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "bench/results" / f"repeat-{path.stem}.json"

    runs = []
    try:
        session = Session(nb, path, setup, args.timeout)
    except SetupFailed as failed:
        print(failed, file=sys.stderr)
        return 1
    try:
        for n in range(1, args.runs + 1):
            start, lines, error = time.perf_counter(), [], None
            try:
                for index in repeat:
                    lines += session.run(index)
            except CellExecutionError as exc:
                error = _last_line(exc, 500)
            runs.append({"run": n, "passed": error is None, "error": error,
                         "seconds": round(time.perf_counter() - start, 1),
                         "load_after": round(os.getloadavg()[0], 2), "output": lines})
            print(f"run {n:2d}: {'ok' if error is None else 'FAILED: ' + error}  "
                  f"({runs[-1]['seconds']} s)", flush=True)
            # after every run, so that a long series can be read as it goes
            _write(out, argv, path, setup, repeat, runs)
            if error is not None and n < args.runs:
                session.close()
                try:
                    session = Session(nb, path, setup, args.timeout)
                except SetupFailed as failed:
                    print(failed, file=sys.stderr)
                    break
    finally:
        session.close()
    passed = sum(r["passed"] for r in runs)  # the file has them already, written after each run
    print(f"{passed} of {len(runs)} runs passed")
    return 0 if passed == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
