"""Every scenario in ``scenarios/`` against its golden output, as SimPy tests its examples.

``scenarios/golden/<name>.json`` is what ``python -m simlib run scenarios/<name>.toml
--json`` printed when it was last regenerated (``make golden``).  A simulation is
deterministic (every random stream is seeded from the scenario's seed), so any
change of a model's behaviour shows up here as a changed number, and a change
that is meant must come with regenerated goldens in the same commit.

The numbers are compared to 1e-9 relative: the same arithmetic in another
order (a NumPy built for other vector units summing in other blocks) may move
the last bits of a mean, while any change of what the model does moves them
by far more than that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simlib.scenario import load_scenario
from simlib.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
GOLDEN = ROOT / "scenarios" / "golden"


def test_every_scenario_has_a_golden_output_and_every_golden_a_scenario():
    assert SCENARIOS
    assert {p.stem for p in SCENARIOS} == {p.stem for p in GOLDEN.glob("*.json")}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_matches_its_golden_output(path: Path):
    golden = json.loads((GOLDEN / f"{path.stem}.json").read_text())
    doc = json.loads(json.dumps(simulate(load_scenario(path)).to_json()))
    assert {k: v for k, v in doc.items() if k != "metrics"} == {
        k: v for k, v in golden.items() if k != "metrics"}
    assert list(doc["metrics"]) == list(golden["metrics"])
    for name, got in doc["metrics"].items():
        want = golden["metrics"][name]
        for field in ("value", "ci95"):
            a, b = got[field], want[field]
            if a is None or b is None:
                assert a == b, (name, field)
                continue
            for x, y in zip([a] if field == "value" else a, [b] if field == "value" else b,
                            strict=True):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (name, field, x, y)
