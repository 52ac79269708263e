"""bench/repeat_cells.py: the tool that checks a live cell's tolerance over 20 runs.

It is checked on a notebook made here, whose repeated cell counts its own runs in
a variable of the set-up cell and fails on the second: the series must count
that failure, restart the kernel and run the set-up again (the third run sees a
fresh counter), and keep every run's printed lines.  Bad input gets one line
and exit status 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "bench" / "repeat_cells.py"


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("counter = 0"),
        nbformat.v4.new_markdown_cell("The repeated cell:"),
        nbformat.v4.new_code_cell(
            'counter += 1\nprint(f"run {counter} of this kernel")\n'
            'assert counter != 2, "the second run of a kernel fails"'),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=300)


def test_a_failed_run_is_counted_and_the_next_starts_from_a_fresh_set_up(tmp_path):
    nb = _notebook(tmp_path / "lesson.ipynb")
    out = tmp_path / "series.json"
    done = _run(str(nb), "--setup", "0", "--repeat", "2", "--runs", "3", "--out", str(out))
    assert done.returncode == 1, done.stderr  # one run of three failed
    assert "2 of 3 runs passed" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["passed"] == 2 and doc["setup"] == [0] and doc["repeat"] == [2]
    runs = doc["runs"]
    assert [r["passed"] for r in runs] == [True, False, True]
    assert runs[0]["output"] == ["run 1 of this kernel"]
    assert "the second run of a kernel fails" in runs[1]["error"]
    # after the failure the kernel was restarted and the set-up cell ran again
    assert runs[2]["output"] == ["run 1 of this kernel"]


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    nb = _notebook(tmp_path / "lesson.ipynb")
    cases = [
        ([str(nb), "--setup", "0", "--repeat", "9"], "the notebook has cells 0..2"),
        ([str(nb), "--setup", "zero", "--repeat", "2"], "--setup takes cell numbers"),
        ([str(nb), "--setup", "0", "--repeat", "2", "--runs", "0"], "--runs must be at least 1"),
        ([str(tmp_path / "missing.ipynb"), "--setup", "0", "--repeat", "2"],
         "is not a notebook file"),
    ]
    for args, message in cases:
        done = _run(*args, "--out", str(tmp_path / "never.json"))
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "never.json").exists()
