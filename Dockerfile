# The pipeline on an NVIDIA GPU (`docker compose up`, see docs/gpu.md); the mlflow
# service of docker-compose.yml runs from this image too.
#
# A slim Python base, not nvidia/cuda: the torch 2.15.0 / torchvision 0.29.2 wheels pinned in
# requirements.lock are PyPI's CUDA builds and bring the CUDA runtime, cuBLAS, cuDNN and NCCL with
# them as nvidia-* wheels (pinned in the lock too). The image needs no CUDA toolkit, only the host's
# NVIDIA driver, which the NVIDIA Container Toolkit mounts in when a service reserves a GPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# git: DVC works inside a git checkout, and every MLflow run is tagged with the commit.
# gcc and libc6-dev: Triton compiles a small C launcher per kernel, so `compile: default` or
# `reduce-overhead` (torch.compile) fails without a C compiler.
# The repo is bind-mounted at /app by docker-compose.yml, owned by the host user: mark it safe.
# Not pinning apt versions (DL3008): bookworm's security updates replace them, which would break the
# build; the base image tag pins the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory /app

# The user every command runs as (docker/entrypoint.sh gives it the bind-mounted checkout's uid, or
# CAP_DAC_OVERRIDE when root owns the checkout). /var/lib/mlflow-auth is where docker-compose.yml mounts
# the MLflow server's account volume: a new named volume takes this folder's owner.
RUN useradd --create-home --uid 1000 primer \
 && install -d -o primer -g primer /app /var/lib/mlflow-auth
WORKDIR /app

# Dependencies first, from the same lock as `make` and .ci/run, so that editing the code reuses
# this layer (~6 GB with the CUDA wheels).
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# DVC experiments (`dvc exp run`, --temp, --queue) commit to hidden git refs, and git refuses to commit
# without an identity: give the container a default one (the checkout's own .git/config overrides it).
COPY --chown=primer:primer . .
RUN pip install --no-cache-dir --no-deps -e . \
 && install -m 755 docker/entrypoint.sh /usr/local/bin/primer-entrypoint \
 && git config --system user.name "primer container" \
 && git config --system user.email "primer@container.invalid"

# Starts as root only to become the checkout's owner (see docker/entrypoint.sh); no command runs as
# root after it.
ENTRYPOINT ["primer-entrypoint"]
CMD ["dvc", "repro"]
