"""The DVC pipeline in a copied checkout: `dvc exp show`'s experiments."""

from __future__ import annotations

import json


def dvc_experiments(show_json: str) -> dict[str, dict]:
    """`dvc exp show --json`'s named experiments: name -> the experiment's "data" (params, metrics, ...)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(show_json))
    return found
