# Two commands on a fresh machine:
#   make demo   set up and run the leaver playbook against the sandbox emulators
#   make test   set up and run lint, types and the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint unit clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/offboard demo

lint: setup
	$(VENV)/bin/ruff check worker tests bench
	$(VENV)/bin/ruff format --check worker tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
