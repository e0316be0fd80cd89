# Two entry points on a fresh machine (see README.md):
#   make repro   set up .venv from requirements.lock and run the pipeline (dvc repro)
#   make test    set up .venv from requirements.lock + requirements-dev.lock and run the test suite
#   make test-container  build and run the image with podman (tests/e2e/test_container_run.py, ~10 min, root)
#   make lint    set up .venv like make test and run `ruff check .` (rules in pyproject.toml)
#   make demo    set up .venv and run every stage once with the quick profile (about 15 min on 2 cores)
VENV ?= .venv
PY := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1

.PHONY: setup test test-container lint repro demo

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.lock
	$(PY) -m pip install -q -r requirements-dev.lock
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.dev-installed
	$(PY) -m pytest

test-container: $(VENV)/.dev-installed
	$(PY) -m pytest -m container --durations=0 tests/e2e/test_container_run.py

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

repro: setup
	$(PY) -m primer.params_check
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m primer.demo
