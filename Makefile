# Quick start: `make run` (the whole pipeline), `make test` (the test suite).
# Both create .venv with the pinned dependency set on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint

$(STAMP): pyproject.toml requirements.lock scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/s2s run

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

# ruff, then mypy (strict on s2s/; `files` and the settings are in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
