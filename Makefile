# Two entry points on a fresh machine (see README.md):
#   make repro   set up .venv from requirements.lock and run the pipeline (dvc repro)
#   make test    set up .venv from requirements.lock + requirements-dev.lock and run the test suite (2 workers)
#   make test-cluster  the tests acting as several ranks or hosts: DDP, torchrun agents, Ray (~10 min)
#   make test-container  build and run the image with podman (tests/e2e/test_container_run.py, ~10 min, root)
#   make lint    set up .venv like make test and run `ruff check .`, deptry and mypy (rules in pyproject.toml)
#   make demo    set up .venv and run every stage once with the quick profile (about 15 min on 2 cores)
#   make remote-store  the DVC remote `store` on docker-compose.yml's object store, keys from .env (docs/team.md)
#   make host-install  install primer into a Python that already has torch (HOST_PY=...; docs/hosts.md)
#   make wheelhouse    every wheel primer needs but the torch family, for a host without a package index
#   make test-host-torch  the fast suite against torch at primer's floor, in $(HOST_VENV)
VENV ?= .venv
PY := $(VENV)/bin/python
export DVC_NO_ANALYTICS := 1

.PHONY: setup test test-cluster test-container lint repro demo remote-store host-install wheelhouse test-host-torch

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.lock requirements-cluster.lock
	$(PY) -m pip install -q -r requirements-dev.lock
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.dev-installed
	$(PY) -m pytest -n 2 --durations=30

test-cluster: $(VENV)/.dev-installed
	$(PY) -m pytest -m cluster --durations=0

test-container: $(VENV)/.dev-installed
	$(PY) -m pytest -m container --durations=0 tests/e2e/test_container_run.py

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/deptry primer stages
	$(VENV)/bin/mypy

repro: setup
	$(PY) -m primer.params_check
	$(PY) -m primer.repro_plan
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

# A host that brings its own torch (an HPC module, an NGC image): requirements.lock less the torch family (torch,
# torchvision, triton, the CUDA wheels; nvidia-ml-py stays), then primer without dependencies, then the floor check.
HOST_PY ?= python3
TORCH_FAMILY := ^(torch|torchvision|torchaudio|triton|cuda-[a-z-]+|nvidia-cu[a-z0-9-]+|nvidia-n[a-z0-9-]+)==
build/requirements-host.txt: requirements.lock Makefile
	@mkdir -p build
	grep -vE '$(TORCH_FAMILY)' requirements.lock > $@

host-install: build/requirements-host.txt
	@$(HOST_PY) -c 'import torch' 2>/dev/null || { echo "make host-install: $(HOST_PY) has no torch; load the host's torch (or set HOST_PY to a Python that has it), or use make setup to install the lock's" >&2; exit 1; }
	$(HOST_PY) -m pip install -q -r build/requirements-host.txt
	$(HOST_PY) -m pip install -q --no-deps -e .
	$(HOST_PY) -m primer.doctor --check-torch

# wheelhouse/: the wheels of build/requirements-host.txt for WHEEL_PYTHON on WHEEL_ARCH Linux (by default this
# machine's), primer's own wheel, and requirements.txt to install them by, on a host with no package index.
# A package with no such wheel comes as its source, which is built here into a wheel (pure Python ones run anywhere).
WHEEL_PYTHON ?= $(shell python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WHEEL_ARCH ?= $(shell uname -m)
WHEEL_PLATFORMS := $(foreach tag,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(tag)_$(WHEEL_ARCH))
wheelhouse: build/requirements-host.txt
	python3 -m pip download -q --no-deps --implementation cp --python-version $(WHEEL_PYTHON) $(WHEEL_PLATFORMS) \
	  -d wheelhouse -r build/requirements-host.txt
	@set -e; for source in $$(ls wheelhouse/*.tar.gz wheelhouse/*.zip 2>/dev/null); do \
	  python3 -m pip wheel -q --no-deps -w wheelhouse "$$source" && rm "$$source"; done
	python3 -m pip wheel -q --no-deps -w wheelhouse .
	python3 -m pip download -q --no-deps -d wheelhouse "setuptools>=68"  # what `pip install -e .` builds primer with
	cp build/requirements-host.txt wheelhouse/requirements.txt
	@echo "wheelhouse/: $$(ls wheelhouse/*.whl | wc -l) wheels for Python $(WHEEL_PYTHON) on $(WHEEL_ARCH); on the host: python3 -m pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt (docs/hosts.md)"

# The fast suite (not slow, not container) on torch and torchvision at primer's floor, PyPI's builds (run on the CPU).
HOST_VENV ?= .venv-host
FLOOR_TORCH ?= torch==2.11.0 torchvision==0.26.0
test-host-torch:
	test -x $(HOST_VENV)/bin/python || python3 -m venv $(HOST_VENV)
	$(HOST_VENV)/bin/python -m pip install -q $(FLOOR_TORCH)
	$(MAKE) host-install HOST_PY=$(HOST_VENV)/bin/python
	$(HOST_VENV)/bin/python -m pip install -q -r requirements-dev.lock
	$(HOST_VENV)/bin/python -m pytest -n 2 -m "not slow and not container and not cluster" -q -p no:cacheprovider
