# Two commands on a fresh machine:
#   make demo   install offboard alone (no test or bench extras) and run the leaver and
#               incident playbooks against the sandbox emulators
#   make test   set up and run lint, types and the whole test suite (what CI runs), the
#               built wheel's own check included (tests/acceptance/test_package.py)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: setup browser demo test lint unit clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

# the demo needs the package and its runtime dependencies only
$(DEMO_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

# The status-page test drives Debian's chromium through chromedriver (never a downloaded browser).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

demo: $(DEMO_STAMP)
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
