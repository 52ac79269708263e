"""The course notebooks are committed executed, top to bottom, without errors.

nbval re-executes every notebook and compares each cell's output with the one
committed; a cell committed *without* output compares with nothing and passes
whatever it prints.  So an unexecuted (or half-executed) notebook would slip
through nbval; this test keeps the committed files honest.  It also checks that
each lesson's sliders were saved with their widget state (so JupyterLab shows
them on opening) and that the top-level README's course map lists every lesson.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))          # the lessons
APPENDIX = NOTEBOOK_DIR / "appendix-instructors.ipynb"                # notes for instructors
README = (Path(__file__).parent.parent / "README.md").read_text()


def test_there_are_lessons() -> None:
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", [*NOTEBOOKS, APPENDIX], ids=lambda p: p.name)
def test_committed_executed_in_order_without_errors(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: code cells must be executed once, top to bottom, in a fresh kernel "
        f"(execution counts {counts})")
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: cell [{i}] was committed failing"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, (
        f"{path.name}: most code cells have no output")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_sliders_are_saved_with_their_state(path: Path) -> None:
    # JupyterLab draws a saved widget from the notebook's widget state before any kernel runs;
    # without it an unexecuted slider shows as "Error displaying widget" text.
    nb = json.loads(path.read_text())
    views = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, f"{path.name}: no slider (ipywidgets) section"
    state = nb["metadata"].get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for view in views:
        model = view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        assert model in state, f"{path.name}: widget {model} shown but its state was not saved"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_lesson_has_every_part(path: Path) -> None:
    # The parts the course promises in every lesson (README, "The course").
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    text = ["".join(c["source"]) for c in cells]
    assert "Learning goals" in text[0], f"{path.name}: the first cell states no learning goals"
    headings = [line for t, c in zip(text, cells, strict=True) if c["cell_type"] == "markdown"
                for line in t.splitlines() if line.startswith("#")]
    for part in ("What it means in practice", "Exercises"):
        assert any(part in h for h in headings), f"{path.name}: no '{part}' section"
    figures = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert figures, f"{path.name}: no figure"
    # exercises are checked by a cell after the Exercises heading: an assert, or one of the
    # checks of labs.exercises / labs.lesson, each of which raises AssertionError on a miss
    start = next(i for i, t in enumerate(text)
                 if cells[i]["cell_type"] == "markdown" and "Exercises" in t.split("\n")[0])
    checks = ("assert", "close_to(", "at_most_value(", "diagnosis(", "at_least(", "at_most(",
              "check(")
    assert any(c["cell_type"] == "code" and any(k in t for k in checks)
               for c, t in zip(cells[start:], text[start:], strict=True)), (
        f"{path.name}: no cell checks the exercises' answers")
    # a live lesson asserts its measurements, in cells whose printed numbers nbval ignores
    live = [t for t, c in zip(text, cells, strict=True)
            if c["cell_type"] == "code" and ("lab.compare" in t or "lab.measure" in t)]
    assert live, f"{path.name}: no live run"
    unmarked = [t.splitlines()[0] for t in live if not t.startswith("# NBVAL_IGNORE_OUTPUT")]
    assert not unmarked, f"{path.name}: live cells without # NBVAL_IGNORE_OUTPUT: {unmarked}"
    assert any(("check(" in t or "assert" in t) for t in live)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_listed_in_the_course_map(path: Path) -> None:
    assert f"notebooks/{path.name}" in README, f"README's course map lacks {path.name}"


def test_the_lessons_links_to_the_appendix_land_on_a_section() -> None:
    # A lesson keeps one sentence on how its checks were judged and links to its section here.
    appendix = json.loads(APPENDIX.read_text())
    anchors = {line.lstrip("#").strip().replace(" ", "-")
               for c in appendix["cells"] if c["cell_type"] == "markdown"
               for line in "".join(c["source"]).splitlines() if line.startswith("#")}
    links = 0
    for path in NOTEBOOKS:
        text = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        for anchor in re.findall(r"\(appendix-instructors\.ipynb#([^)]+)\)", text):
            assert anchor in anchors, f"{path.name} links to a missing section: {anchor}"
            links += 1
    assert links >= 6
    assert "notebooks/appendix-instructors.ipynb" in README
