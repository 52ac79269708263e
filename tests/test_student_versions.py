"""The student versions of the lessons: made from the solutions, with no solution in them.

``labs.course`` makes ``notebooks/student/`` from the lessons in ``notebooks/``
with nbgrader's ``ClearSolutions``.  These tests hold the three promises of
that split.  The committed student notebooks are exactly what the generator
makes from the committed solutions.  No line of a solution region is left in
them, in a source or an output, and the leak check does catch one that is.
And a learner who runs a student notebook from the top gets no error before
the first exercise they have not answered, where the stub raises
``NotImplementedError``.  nbval runs the solution versions (``make test``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from labs import course

LESSONS = course.lessons()


def _student(path: Path):
    return nbformat.read(course.STUDENT / path.name, as_version=4)


def test_every_lesson_has_a_student_version() -> None:
    assert len(LESSONS) >= 10
    assert course.build(LESSONS, check=True) == [], "python -m labs.course regenerates them"
    extra = {p.name for p in course.STUDENT.glob("*.ipynb")} - {p.name for p in LESSONS}
    assert not extra, f"student notebooks without a lesson: {sorted(extra)}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_no_solution_in_the_student_version(path: Path) -> None:
    solution = nbformat.read(path, as_version=4)
    student = _student(path)
    assert course.leaks(solution, student) == []
    code_regions = sum(len(list(course.solution_regions(c.source))) for c in solution.cells
                       if c.cell_type == "code")
    stubs = sum(c.source.count("raise NotImplementedError()") for c in student.cells
                if c.cell_type == "code")
    assert stubs == code_regions, f"{stubs} stubs for {code_regions} code answers"
    written = sum(len(list(course.solution_regions(c.source))) for c in solution.cells
                  if c.cell_type == "markdown")
    assert written >= 1, "every lesson has a written answer (an open question or an explanation)"


def test_the_leak_check_finds_a_solution_left_in() -> None:
    solution = nbformat.read(LESSONS[0], as_version=4)
    clean = course.student_version(solution)
    assert course.leaks(solution, clean) == []
    line = next(line.strip() for c in solution.cells for r in course.solution_regions(c.source)
                for line in r if len(line.strip()) > 8)
    in_source = copy.deepcopy(clean)
    in_source.cells[-1].source += "\n" + line
    assert course.leaks(solution, in_source) == [line]
    in_output = copy.deepcopy(clean)
    cell = next(c for c in in_output.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{line}\n")]
    assert course.leaks(solution, in_output) == [line]
    marker = copy.deepcopy(clean)
    marker.cells[-1].source += "\n### BEGIN SOLUTION"
    assert "a BEGIN/END SOLUTION marker" in course.leaks(solution, marker)


def test_markers_must_be_whole() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1")])
    with pytest.raises(course.MarkerError, match="without its END"):
        course.student_version(nb)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(course.MarkerError, match="no exercise"):
        course.student_version(nb)


def test_the_command_line_says_what_is_wrong(tmp_path: Path, capsys) -> None:
    assert course.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_the_student_version_runs_to_the_first_unanswered_exercise(path: Path) -> None:
    # A learner's "Run All": every cell runs until the first answer stub raises.
    student = _student(path)
    first = course.first_exercise(nbformat.read(path, as_version=4))
    client = NotebookClient(student, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(course.STUDENT)}})
    stopped = None
    with client.setup_kernel():
        try:
            for i, cell in enumerate(student.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, i)
                except CellExecutionError as e:
                    stopped = (i, e.ename)
                    break
        finally:
            # A lesson may have started its throwaway servers before its first exercise.
            student.cells.append(nbformat.v4.new_code_cell(
                "if 'lab' in globals():\n    lab.close()"))
            client.execute_cell(student.cells[-1], len(student.cells) - 1)
    assert stopped is not None, "the student version ran to the end: its stubs do not stop it"
    index, error = stopped
    assert error == "NotImplementedError", f"cell {index} failed with {error}"
    assert index == first, f"stopped at cell {index}, not at the first answer (cell {first})"
