# Two commands on a fresh machine:
#   make demo   set up and run the leaver playbook against the sandbox emulators
#   make test   set up and run lint, types and the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test lint unit clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

# The status-page test drives Debian's chromium through chromedriver (never a downloaded browser).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

demo: setup
	$(VENV)/bin/offboard demo

lint: setup
	$(VENV)/bin/ruff check worker tests bench
	$(VENV)/bin/ruff format --check worker tests bench
	$(VENV)/bin/mypy

test: lint browser
	$(PY) -m pytest -n 3

unit: setup
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
