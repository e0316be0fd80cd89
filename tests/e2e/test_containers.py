"""The container files, checked without a Docker engine: compose config, hadolint, lock file, ports,
build context; and `python -m primer.doctor`, the image's GPU check."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

from helpers.environment import require_tool
from helpers.repo import REPO, dockerignore_rules, excluded

VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str, install: str) -> str:
    return require_tool(shutil.which(name, path=str(VENV_BIN)), name, install)


LOGIN_LINES = ("MLFLOW_APP", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_USERNAME",
               "MLFLOW_TRACKING_PASSWORD")


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    compose = venv_tool("docker-compose", "pip install -r requirements-dev.lock")
    env = {k: v for k, v in os.environ.items()  # the env file alone decides
           if k not in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", *LOGIN_LINES)}
    return subprocess.run(
        [compose, "-f", "docker-compose.yml", "--env-file", str(env_file), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_compose_accepts_the_file_and_the_pipeline_reserves_every_gpu(tmp_path):
    env_file = tmp_path / ".env"
    shutil.copy(REPO / ".env.example", env_file)
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"db", "store", "store-bucket", "mlflow", "pipeline"}
    devices = services["pipeline"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d["count"] == -1 for d in devices)
    assert services["pipeline"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["pipeline"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["store-bucket"]["condition"] == "service_completed_successfully"
    assert services["store-bucket"]["depends_on"]["store"]["condition"] == "service_healthy"
    assert services["mlflow"]["build"]["context"] == services["pipeline"]["build"]["context"] == str(REPO)
    example = dict(re.findall(r"^(\w+)=(.*)$", (REPO / ".env.example").read_text(), flags=re.M))
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == example["POSTGRES_PASSWORD"]
    assert services["mlflow"]["environment"]["PGPASSWORD"] == example["POSTGRES_PASSWORD"]
    for name in ("store", "mlflow"):  # the same S3 keys for the store and its one client in the stack
        assert services[name]["environment"]["AWS_ACCESS_KEY_ID"] == example["S3_ACCESS_KEY"]
        assert services[name]["environment"]["AWS_SECRET_ACCESS_KEY"] == example["S3_SECRET_KEY"]
    assert "AWS_SECRET_ACCESS_KEY" not in services["pipeline"].get("environment", {})  # it logs through mlflow


def app_name(mlflow_service: dict) -> str:
    command = mlflow_service["command"]
    assert command.count("--app-name") == 1, command
    return command[command.index("--app-name") + 1]


def test_the_login_is_off_by_default_and_on_with_the_lines_env_example_gives(tmp_path):
    env_file = tmp_path / ".env"
    example = (REPO / ".env.example").read_text()
    env_file.write_text(example)
    services = json.loads(compose_config(env_file).stdout)["services"]
    assert app_name(services["mlflow"]) == "no-login"
    assert services["pipeline"]["environment"]["MLFLOW_TRACKING_USERNAME"] == ""  # the client sends no login
    commented = [line for line in example.splitlines() if line.startswith(tuple(f"# {k}=" for k in LOGIN_LINES))]
    assert len(commented) == len(LOGIN_LINES), commented
    env_file.write_text(example + "\n".join(line[2:] for line in commented) + "\n")  # uncommented, as it says
    services = json.loads(compose_config(env_file).stdout)["services"]
    assert app_name(services["mlflow"]) == "basic-auth"
    mlflow_env, pipeline_env = services["mlflow"]["environment"], services["pipeline"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "change-me-admin"
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "change-me-form-key"
    assert (pipeline_env["MLFLOW_TRACKING_USERNAME"], pipeline_env["MLFLOW_TRACKING_PASSWORD"]) == ("admin",
                                                                                                   "change-me-admin")
    # the accounts outlive the container: the ini file the server reads keeps them on the mounted volume
    ini = configparser.ConfigParser()
    ini.read(REPO / mlflow_env["MLFLOW_AUTH_CONFIG_PATH"].removeprefix("/app/"))
    database = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    mounts = [v["target"] for v in services["mlflow"]["volumes"] if v["type"] == "volume"]
    assert any(database.startswith(target + "/") for target in mounts), (database, mounts)
    assert ini["mlflow"]["admin_username"] == "admin" and "admin_password" not in ini["mlflow"]


def test_no_login_is_mlflows_own_server_app():
    """`--app-name no-login` (primer's entry point) serves the very app mlflow serves without --app-name."""
    from mlflow.server import _find_app
    from mlflow.server.fastapi_app import app as mlflow_app
    module, name = _find_app("no-login").split(":")
    assert getattr(importlib.import_module(module), name) is mlflow_app


def test_compose_without_the_password_names_the_env_file(tmp_path):
    empty = tmp_path / ".env"
    empty.write_text("")
    result = compose_config(empty)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_compose_without_the_object_store_keys_names_them(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=x\n")
    result = compose_config(env_file)
    assert result.returncode != 0
    assert "set S3_ACCESS_KEY in .env" in result.stderr or "set S3_SECRET_KEY in .env" in result.stderr


def test_mlflow_and_the_store_are_published_on_loopback_only(tmp_path):
    env_file = tmp_path / ".env"
    shutil.copy(REPO / ".env.example", env_file)
    services = json.loads(compose_config(env_file).stdout)["services"]
    for name, published in [("mlflow", [("5000", 5000)]), ("store", [("8333", 8333)])]:
        ports = services[name]["ports"]
        assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports), name
        assert [(p["published"], p["target"]) for p in ports] == published
    assert not {"db", "store-bucket", "pipeline"} & {name for name, s in services.items() if "ports" in s}


def test_env_file_with_the_secrets_is_not_committed():
    if not (REPO / ".git").exists():
        return
    git = require_tool(shutil.which("git"), "git", "apt-get install git")
    assert subprocess.run([git, "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
    assert subprocess.run([git, "check-ignore", "-q", ".env.example"], cwd=REPO).returncode == 1


def test_hadolint_finds_nothing_and_every_ignore_has_a_reason():
    hadolint = venv_tool("hadolint", "pip install -r requirements-dev.lock")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, f"no reason above: {line}"


def pip_lock_files(text: str) -> list[str]:
    """The files a shell text installs with `pip install ... -r FILE`."""
    return re.findall(r"pip install\b[^\n]*?\s-r\s+(\S+)", text)


def makefile_recipe(text: str, target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"Makefile has no recipe for {target}"
    return match.group(1)


def test_image_installs_the_lock_that_ci_and_make_install():
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    ci = (REPO / ".ci/run").read_text()
    make_locks = pip_lock_files(makefile_recipe(makefile, "$(VENV)/.installed"))
    # .ci/run installs through `make test`, whose prerequisite is the .installed recipe
    ci_locks = pip_lock_files(ci) or (make_locks if re.search(r"^\s*make test\s*$", ci, flags=re.M) else [])
    image_locks = pip_lock_files(dockerfile)
    assert image_locks == make_locks == ci_locks == ["requirements.lock"]
    # the dependency layer comes before the source, and the package goes in without dependencies
    steps = ("COPY requirements.lock", "-r requirements.lock", "COPY --chown", "--no-deps -e .")
    order = [dockerfile.index(s) for s in steps]
    assert order == sorted(order)
    # every command goes through the entrypoint, which drops root (run for real in test_container_run.py)
    assert re.search(r'^ENTRYPOINT \["primer-entrypoint"\]$', dockerfile, flags=re.M)
    assert "install -m 755 docker/entrypoint.sh /usr/local/bin/primer-entrypoint" in dockerfile
    assert not re.findall(r"^USER\s+(root|0)\b", dockerfile, flags=re.M)
    assert re.search(r'^CMD \["dvc", "repro"\]$', dockerfile, flags=re.M)
    assert re.search(r"^\s*DVC_NO_ANALYTICS=1", dockerfile, flags=re.M)
    # a C compiler and libc headers for Triton, which torch.compile (the training stages' `compile`) needs
    assert re.search(r"apt-get install -y --no-install-recommends[^\n]*\bgcc\b[^\n]*\blibc6-dev\b", dockerfile)


def test_dockerignore_keeps_data_stores_and_environments_out():
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    for path in ("mlflow.db", "data/raw/petimages/Cat/0.jpg", "data/arrays/train_images.npy", ".venv/bin/python",
                 "mlruns/0/meta.yaml", "models/cnn.pt", "checkpoints/train_cnn.pt", ".dvc/cache/files/md5/ab/cd",
                 "primer/__pycache__/x.pyc", ".env"):
        assert excluded(path, rules), f".dockerignore lets {path} into the build context"
    for path in ("requirements.lock", "pyproject.toml", "primer/doctor.py", "stages/train_cnn.py", "dvc.yaml",
                 "params.yaml", ".dvc/config", "data/README.md"):
        assert not excluded(path, rules), f".dockerignore keeps {path}, which the image needs, out"


def test_doctor_reports_torch_cuda_and_cpus():
    result = subprocess.run([sys.executable, "-m", "primer.doctor"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert report["torch"] == torch.__version__
    assert report["cuda available"] == str(torch.cuda.is_available())
    assert report["torch.version.cuda"] == str(torch.version.cuda)
    assert report["cpus"] == str(len(os.sched_getaffinity(0)))
    gpus = [key for key in report if key.startswith("gpu ")]
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    help_text = subprocess.run([sys.executable, "-m", "primer.doctor", "--help"],
                               capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "usage: python -m primer.doctor" in help_text.stdout


def test_doctor_checks_torch_against_primers_floor():
    """--check-torch holds the installed torch and torchvision to pyproject.toml's floor (make host-install runs it)."""
    from primer import doctor

    floor = [r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
             if r.split(">")[0] in ("torch", "torchvision")]
    assert [r.split(">=")[0] for r in floor] == ["torch", "torchvision"] and all(">=" in r for r in floor), floor
    assert doctor.torch_floor_problems(doctor.primer_requirements()) == []  # this environment meets it
    too_new = doctor.torch_floor_problems(["torch>=99", "torchvision>=0.1", "mlflow"])
    installed = importlib.metadata.version("torch")
    assert too_new == [f"torch {installed} is older than primer needs (torch>=99); load a newer build on this host, "
                       "or install one with pip install 'torch>=99'."]
    result = subprocess.run([sys.executable, "-m", "primer.doctor", "--check-torch"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(
        f"torch floor: met (torch {importlib.metadata.version('torch')}, ")


def test_the_container_test_says_before_building_when_its_disk_is_too_small(tmp_path):
    from helpers.podman_stack import disk_shortfall

    free = shutil.disk_usage(tmp_path).free
    assert disk_shortfall(tmp_path, need=free // 2) is None
    message = disk_shortfall(tmp_path, need=free + (1 << 30))
    assert message and str(tmp_path) in message and "PRIMER_PODMAN_STORE" in message and "\n" not in message
    assert re.search(r"has [\d.]+ GiB free, but building the image needs about \d+ GiB", message), message
