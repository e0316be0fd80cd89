# Two entry points on a fresh machine (see README.md):
#   make repro   set up .venv from requirements.lock and run the pipeline (dvc repro)
#   make test    set up .venv from requirements.lock + requirements-dev.lock and run the test suite
#   make test-container  build and run the image with podman (tests/e2e/test_container_run.py, ~10 min, root)
#   make lint    set up .venv like make test and run `ruff check .` (rules in pyproject.toml)
#   make demo    set up .venv and run every stage once with the quick profile (about 15 min on 2 cores)
#   make remote-store  the DVC remote `store` on docker-compose.yml's object store, keys from .env (docs/team.md)
VENV ?= .venv
PY := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1

.PHONY: setup test test-container lint repro demo remote-store

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

# The DVC remote `store`: s3://primer/dvc on the compose stack's object store (S3_ENDPOINT, by default this host's
# published port; through an ssh tunnel from a laptop). The URL goes to .dvc/config (commit it); the endpoint and
# .env's S3 keys go to .dvc/config.local, which git ignores; then primer.remote_check tries them on the store.
S3_ENDPOINT ?= http://127.0.0.1:8333
remote-store: setup
	@test -f .env || { echo "make remote-store: no .env here; cp .env.example .env and set S3_ACCESS_KEY and S3_SECRET_KEY to the store's keys (docs/team.md)" >&2; exit 1; }
	@set -a && . ./.env && set +a && \
	  test -n "$$S3_ACCESS_KEY" -a -n "$$S3_SECRET_KEY" || { echo "make remote-store: .env sets no S3_ACCESS_KEY or S3_SECRET_KEY; set both to the store's keys (docs/team.md)" >&2; exit 1; }; \
	  PATH="$(abspath $(VENV))/bin:$$PATH" && \
	  dvc remote add --default --force store s3://primer/dvc && \
	  dvc remote modify --local store endpointurl "$(S3_ENDPOINT)" && \
	  dvc remote modify --local store access_key_id "$$S3_ACCESS_KEY" && \
	  dvc remote modify --local store secret_access_key "$$S3_SECRET_KEY"
	$(PY) -m primer.remote_check store
