"""pyproject.toml, environment.yml and constraints.txt describe one environment.

- Every dependency of pyproject.toml (runtime and the `dev` extra) is in environment.yml
  under its conda-forge name with the same version range, and environment.yml lists
  nothing more (besides python and pip).
- Every such dependency is pinned exactly in constraints.txt, at a version its range allows.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# PyPI name -> conda-forge name, where they differ (canonical names on both sides).
CONDA_NAME = {
    "psycopg2-binary": "psycopg2",
    "redis": "redis-py",
}
# conda entries that are not project dependencies
CONDA_ONLY = {"python", "pip"}
# never pinned in constraints.txt
UNPINNED = {"pip", "setuptools", "wheel"}
PROJECT = "dbperf-course"


# --- readers ---------------------------------------------------------------------------


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


def parse_environment_yml(text: str) -> dict:
    """Read the small subset of YAML that environment.yml uses.

    Top-level `key: value` and `key:` followed by a list of `- item`, where one item may
    be `- pip:` with its own nested list.  Anything else is an error, so that a change to
    the file's shape is noticed rather than misread.
    """
    doc: dict = {}
    key = None  # top-level key whose list we are in
    pip_indent = None  # indentation of the `- pip:` item whose list we are in
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = line.strip()
        if indent == 0:
            m = re.fullmatch(r"([A-Za-z_][\w-]*):(?:\s+(.+))?", item)
            if not m:
                raise ValueError(f"environment.yml:{number}: cannot read {raw!r}")
            key, value = m.group(1), m.group(2)
            if value is None:
                doc[key] = []
            else:
                doc[key] = value
                key = None
            pip_indent = None
        elif item.startswith("- ") and key is not None:
            entry = item[2:].strip()
            if pip_indent is not None and indent > pip_indent:
                doc[key][-1]["pip"].append(entry)
            elif entry == "pip:":
                pip_indent = indent
                doc[key].append({"pip": []})
            else:
                pip_indent = None
                doc[key].append(entry)
        else:
            raise ValueError(f"environment.yml:{number}: cannot read {raw!r}")
    return doc


def environment() -> dict:
    return parse_environment_yml((ROOT / "environment.yml").read_text())


def conda_specs() -> dict[str, str]:
    """conda package name -> its version spec ('' when it has none)."""
    specs = {}
    for entry in environment()["dependencies"]:
        if isinstance(entry, dict):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", entry)
        assert m, f"environment.yml: cannot read dependency {entry!r}"
        name = canonicalize_name(m.group(1))
        assert name not in specs, f"environment.yml lists {name} twice"
        specs[name] = m.group(2).strip()
    return specs


def constraints() -> dict[str, str]:
    pins = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.!+-]+)", line)
        assert m, f"constraints.txt:{number}: not an exact pin: {raw!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


def conda_name(req: Requirement) -> str:
    name = canonicalize_name(req.name)
    return CONDA_NAME.get(name, name)


# --- the parser itself -----------------------------------------------------------------


def test_parser_reads_the_shape_of_environment_yml():
    doc = parse_environment_yml(
        "# comment\nname: x  # trailing\nchannels:\n  - conda-forge\n"
        "dependencies:\n  - python=3.11\n  - a>=1,<2\n  - pip:\n      - -e .\n  - b\n"
    )
    assert doc == {
        "name": "x",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "a>=1,<2", {"pip": ["-e ."]}, "b"],
    }
    with pytest.raises(ValueError):
        parse_environment_yml("dependencies:\n  python: 3\n")


# --- environment.yml -------------------------------------------------------------------


def test_environment_yml_is_conda_forge_python_311_with_the_project_editable():
    env = environment()
    assert env["name"] == "dbperf-course"
    assert env["channels"] == ["conda-forge"]
    specs = conda_specs()
    assert specs.get("python") == "=3.11"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains("3.11")
    assert "pip" in specs
    pip_sections = [e["pip"] for e in env["dependencies"] if isinstance(e, dict)]
    assert pip_sections == [["-e ."]]


@pytest.mark.parametrize("req", pyproject_requirements(), ids=str)
def test_pyproject_dependency_is_in_environment_yml_with_the_same_range(req):
    specs = conda_specs()
    name = conda_name(req)
    assert name in specs, f"{req} is missing from environment.yml (as {name!r})"
    try:
        conda_range = SpecifierSet(specs[name])
    except InvalidSpecifier:
        pytest.fail(f"environment.yml: {name}{specs[name]} is not a plain >=,< range")
    assert conda_range == req.specifier, (
        f"{req.name}: pyproject.toml says {req.specifier}, environment.yml says {conda_range}"
    )


def test_environment_yml_lists_nothing_that_pyproject_lacks():
    expected = {conda_name(req) for req in pyproject_requirements()} | CONDA_ONLY
    extra = sorted(set(conda_specs()) - expected)
    assert not extra, f"in environment.yml but not in pyproject.toml: {extra}"


# --- constraints.txt -------------------------------------------------------------------


def test_constraints_pin_neither_the_project_nor_the_packaging_tools():
    pinned = set(constraints())
    assert not pinned & (UNPINNED | {PROJECT}), pinned & (UNPINNED | {PROJECT})


@pytest.mark.parametrize("req", pyproject_requirements(), ids=str)
def test_pyproject_dependency_is_pinned_within_its_range(req):
    pins = constraints()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not pinned in constraints.txt: run `make lock`"
    assert req.specifier.contains(Version(pins[name]), prereleases=True), (
        f"constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}: run `make lock`"
    )


@pytest.mark.parametrize("req", [r for r in pyproject_requirements() if r.extras], ids=str)
def test_packages_pulled_in_by_extras_are_pinned(req):
    """psycopg[binary] needs psycopg-binary pinned too (read from installed metadata)."""
    pins = constraints()
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here")
    if installed != pins.get(canonicalize_name(req.name)):
        pytest.skip(f"installed {req.name} {installed} is not the pinned one")
    for line in importlib.metadata.requires(req.name) or []:
        sub = Requirement(line)
        wanted = [{"extra": extra} for extra in req.extras]
        if sub.marker is None or not any(sub.marker.evaluate(env) for env in wanted):
            continue
        if sub.marker.evaluate({"extra": ""}):
            continue  # not specific to the extra
        name = canonicalize_name(sub.name)
        assert name in pins, f"{sub.name} (from {req}) is not pinned in constraints.txt"
        assert sub.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {sub.name}=={pins[name]}, but {req} needs {sub.specifier}"
        )
