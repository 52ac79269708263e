# dbperf-course: set-up, demo, tests.  `make demo` and `make test` are the Quick start.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv services-deps demo test lint check golden lab course student bench bench-harness validate lock clean distclean

# .venv with the project (editable) and its dev tools, at the versions pinned in
# constraints.txt.  Re-done only when pyproject.toml or constraints.txt change.
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

# Postgres, Redis, pgbench and PgBouncer binaries for the live tests (apt-get, when root and missing).
services-deps:
	@bash scripts/install-services.sh

demo: venv
	@mkdir -p results
	$(PY) -m simlib run scenarios/demo.toml --plot results/demo.png

# The static checks (lint, types: strict on simlib, and the layers of labs), the
# tests, then every notebook re-executed and compared with its committed outputs
# (nbval; live cells assert their own tolerance, volatile text is in sanitize.cfg).
test: venv services-deps check
	$(PY) -m pytest -m "not live" -n 2 -p no:cacheprovider tests
	$(PY) -m pytest -m live tests
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
		-p no:cacheprovider notebooks/[0-9]*.ipynb notebooks/appendix-*.ipynb

lint: venv
	$(VENV)/bin/ruff check .

# Lint, types (strict on simlib) and the import layers of labs (pyproject.toml).
check: lint
	$(PY) -m mypy --strict simlib
	$(PY) -m mypy labs
	$(VENV)/bin/lint-imports

# The golden outputs of scenarios/*.toml (tests/test_golden.py compares them);
# regenerate them only with a change of the models' behaviour that is meant.
golden: venv
	@for f in scenarios/*.toml; do n=$$(basename $$f .toml); \
	  $(PY) -m simlib run $$f --json > scenarios/golden/$$n.json.tmp \
	  && mv scenarios/golden/$$n.json.tmp scenarios/golden/$$n.json; done

# The course in JupyterLab (Jupyter refuses to run as root without --allow-root).
lab: venv
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# Every lesson executed in order in a fresh kernel, timed (bench/results/course.json);
# `make course ARGS=--inplace` also writes the executed notebooks back for committing.
course: venv services-deps
	$(PY) bench/bench_course.py $(ARGS)

# The learners' notebooks (notebooks/student/) from the solutions in notebooks/: nbgrader's
# ClearSolutions on the BEGIN/END SOLUTION markers (labs/course.py).  Re-run it after
# re-executing a lesson; tests/test_student_versions.py fails while they differ.
student: venv
	$(PY) -m labs.course

bench: venv
	$(PY) bench/bench_speed.py

# Harness capacity (live): the open-loop rate the labs harness sustains for SELECT 1
# with asyncpg, against pgbench on the same throwaway Postgres; about 2.5 minutes.
bench-harness: venv services-deps
	$(PY) bench/bench_harness.py

# Fidelity (live): the labs/suite scenarios predicted by simlib and measured on
# throwaway servers, scored against the goals; about 3.5 minutes on a quiet machine.
validate: venv services-deps
	$(PY) -m labs validate --out bench/results/validate.json

# Re-resolve every dependency (direct and transitive) in a scratch venv and pin
# the result in constraints.txt.  Run it with the Python the course targets (3.11).
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[dev]'; \
	{ \
	  echo '# Exact versions of every dependency, direct and transitive, of dbperf-course[dev]'; \
	  echo "# for CPython $$("$$tmp/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') on linux x86_64."; \
	  echo '# Used as: pip install -c constraints.txt -e ".[dev]"   (what `make venv` does)'; \
	  echo '# Generated, do not edit: change the ranges in pyproject.toml, then regenerate with'; \
	  echo '#   make lock'; \
	  echo '# (a fresh scratch venv, pip install -e ".[dev]", pip freeze --exclude-editable).'; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable \
	    | grep -v -i -E '^(pip|setuptools|wheel|dbperf[-_]course)(==| @)'; \
	} > constraints.txt.new; \
	mv constraints.txt.new constraints.txt; \
	echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

clean:
	rm -rf results build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -prune -exec rm -rf {} +

# clean, and the virtual environment too
distclean: clean
	rm -rf $(VENV)
