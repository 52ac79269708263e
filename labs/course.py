"""The course's two versions: student notebooks made from the solution notebooks.

The lessons in ``notebooks/`` are the one source.  They are the instructors'
versions, committed executed, and nbval runs them.  Each exercise's answer is
marked with nbgrader's solution markers: ``### BEGIN SOLUTION`` and ``### END
SOLUTION`` around the answer lines of a code cell, and ``<!-- BEGIN SOLUTION
-->`` and ``<!-- END SOLUTION -->`` around a model answer in a markdown cell.
The HTML comment does not show when the solution notebook is rendered.

:func:`student_version` makes the learner's notebook from one source with
nbgrader's own ``ClearSolutions`` preprocessor.  It is the one nbgrader's
``generate_assignment`` runs.  A code answer becomes ``raise
NotImplementedError()`` under a ``# YOUR CODE HERE`` line, so a learner who runs
the notebook stops at the first exercise they have not answered.  A written
answer becomes *Your answer here.*  The hints around the markers stay.  So do
the check cells, which compare the learner's answer with theory, a simulation
with other settings or a live run, never with a copy of the solution.

Two rules keep the solutions out of the learner's copy.

- Every output from the first exercise on is cleared: a check's printed line,
  an answer cell's value, or a measurement made after a prediction would give
  the answer away.  Outputs before it stay, so a learner sees the lesson's
  opening before running anything, and the cells before it are the same in
  both versions.
- :func:`leaks` lists every solution line that is still in a student notebook,
  in a source or an output.  ``tests/test_student_versions.py`` requires that
  list to be empty, and requires the committed student notebooks to be exactly
  what this module makes.

Each lesson's first exercise asks for a prediction before the lesson's own
simulation and live run, so a learner who runs the notebook from the top stops
early, at the first answer still missing.

Regenerate both versions after editing a lesson::

    .venv/bin/python bench/bench_course.py --inplace --only NN   # the solutions, executed
    .venv/bin/python -m labs.course                               # notebooks/student/
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
STUDENT = NOTEBOOKS / "student"
BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "*Your answer here.*"


class MarkerError(ValueError):
    """A solution notebook whose markers break the rules above, in one line."""


def lessons(directory: Path = NOTEBOOKS) -> list[Path]:
    """The solution notebooks, in course order."""
    return sorted(directory.glob("[0-9][0-9]-*.ipynb"))


def first_exercise(nb: Any) -> int:
    """The index of the first cell with a solution region."""
    for i, cell in enumerate(nb.cells):
        if any(True for _ in solution_regions(cell.source)):
            return int(i)
    raise MarkerError("no exercise has a solution marked with BEGIN/END SOLUTION")


def solution_regions(source: str) -> Iterator[list[str]]:
    """The lines inside each solution region of one cell's source."""
    region: list[str] | None = None
    for line in source.split("\n"):
        if BEGIN in line:
            if region is not None:
                raise MarkerError("a BEGIN SOLUTION inside another solution region")
            region = []
        elif END in line:
            if region is None:
                raise MarkerError("an END SOLUTION without its BEGIN SOLUTION")
            yield region
            region = None
        elif region is not None:
            region.append(line)
    if region is not None:
        raise MarkerError("a BEGIN SOLUTION without its END SOLUTION")


def check_markers(nb: Any) -> int:
    """The number of solution regions, after checking that each is whole and not empty."""
    count = 0
    for i, cell in enumerate(nb.cells):
        try:
            regions = list(solution_regions(cell.source))
        except MarkerError as e:
            raise MarkerError(f"cell {i}: {e}") from None
        if any(not any(line.strip() for line in r) for r in regions):
            raise MarkerError(f"cell {i} has an empty solution region")
        count += len(regions)
    return count


def student_version(nb: Any) -> Any:
    """The learner's copy of a solution notebook (a new object; ``nb`` is unchanged)."""
    from nbgrader.preprocessors import ClearSolutions

    if check_markers(nb) == 0:
        raise MarkerError("no exercise has a solution marked with BEGIN/END SOLUTION")
    student = copy.deepcopy(nb)
    # enforce_metadata=False: the lessons are not nbgrader assignments with a
    # grading database, so their cells carry no nbgrader cell ids.
    clear = ClearSolutions(code_stub={"python": CODE_STUB}, text_stub=TEXT_STUB,
                           begin_solution_delimeter=BEGIN, end_solution_delimeter=END,
                           enforce_metadata=False)
    start = first_exercise(nb)
    student, _ = clear.preprocess(student, {})
    for cell in student.cells[start:]:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return student


def leaks(solution: Any, student: Any) -> list[str]:
    """Every line of a solution region that is still in ``student``.

    A line counts when it has at least four letters or digits in it (a lone
    bracket is not a solution) and is in no line of the lesson outside its
    solution regions: a solution may end with the same ``)`` or dictionary
    as the lesson's own code.  Sources and outputs both count, and
    so does a marker.
    """
    found: list[str] = []
    text = _all_text(student)
    if BEGIN in text or END in text:
        found.append("a BEGIN/END SOLUTION marker")
    shared = "\n".join(line for cell in solution.cells for line in _outside(cell.source))
    for cell in solution.cells:
        for region in solution_regions(cell.source):
            for line in region:
                probe = line.strip()
                if (sum(ch.isalnum() for ch in probe) >= 4 and probe not in shared
                        and probe in text):
                    found.append(probe)
    return found


def _outside(source: str) -> Iterator[str]:
    """The lines of a cell's source outside its solution regions."""
    inside = False
    for line in source.split("\n"):
        if BEGIN in line:
            inside = True
        elif END in line:
            inside = False
        elif not inside:
            yield line


def _all_text(nb: Any) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(str(out.get("text", "")))
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def write_atomically(nb: Any, path: Path) -> None:
    """``nb`` to ``path``, through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(nb))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render(nb: Any) -> str:
    """The notebook as nbformat writes it (JSON, one space indent, sorted keys)."""
    return str(nbformat.writes(nb)) + "\n"


def build(sources: Sequence[Path], out: Path = STUDENT, check: bool = False) -> list[str]:
    """Make (or, with ``check``, compare) every student version; the problems found."""
    problems: list[str] = []
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        try:
            student = student_version(nb)
        except MarkerError as e:
            problems.append(f"{path.name}: {e}")
            continue
        target = out / path.name
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != render(student):
                problems.append(f"{target.relative_to(out.parent)} is out of date: "
                                "regenerate it with python -m labs.course")
        else:
            write_atomically(student, target)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labs.course",
        description="Make the student notebooks (notebooks/student/) from the solutions.")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="solution notebooks (default: every lesson in notebooks/)")
    parser.add_argument("--check", action="store_true",
                        help="only compare with the committed student notebooks")
    args = parser.parse_args(argv)
    sources = args.notebooks or lessons()
    for path in sources:
        if not path.is_file():
            print(f"labs.course: {path}: no such notebook", file=sys.stderr)
            return 2
    problems = build(sources, check=args.check)
    for line in problems:
        print(f"labs.course: {line}", file=sys.stderr)
    if not problems and not args.check:
        print(f"{len(sources)} student notebooks in {STUDENT.relative_to(NOTEBOOKS.parent)}/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
