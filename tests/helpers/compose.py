"""docker-compose.yml's services, read as compose reads them: `${NAME}` interpolated with .env's variables."""

from __future__ import annotations

import re

import yaml

from helpers.repo import REPO
from helpers.s3_store import ACCESS_KEY, SECRET_KEY

PASSWORD = "local-test-password"
VARIABLES = {"POSTGRES_PASSWORD": PASSWORD, "S3_ACCESS_KEY": ACCESS_KEY, "S3_SECRET_KEY": SECRET_KEY}  # .env's


def interpolate(value: str, variables: dict = VARIABLES) -> str:
    """Compose's `${NAME}`, `${NAME:?message}`, `${NAME:-default}` with `variables`, and `$$` as `$`."""
    def one(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if not name:
            return "$"
        if variables.get(name):
            return variables[name]
        if default is None:
            raise KeyError(f"docker-compose.yml needs {name}, which .env does not set here")
        return default
    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*)|[^}]*)\}", one, value)


def compose_service(name: str) -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"][name]
