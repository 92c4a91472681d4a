# neurodis: `make demo` runs the testbed audit on an embedded local Ray; `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neurodis-installed

.PHONY: install demo test lint typecheck schemas clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/neurodis demo --out runs/demo

lint: install
	$(PY) -m ruff check neurodis tests benchmarks scripts
	$(PY) -m ruff format --check neurodis tests benchmarks scripts
	$(VENV)/bin/lint-imports

typecheck: install
	$(PY) -m mypy

schemas: install
	$(PY) -m neurodis.schemas > docs/schemas.md

test: install lint typecheck
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
