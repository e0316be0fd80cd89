"""The package's layers and the import graph of primer/ and stages/, read from the source (no import runs).

Imports run one way, down this list: a module may import its own layer and any layer above it.
vision and text are siblings: neither imports the other. docs/architecture.md draws the same list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

LAYERS = {  # name: (rank, the modules or packages it holds)
    "plumbing": (0, ["primer.errors", "primer.atomic", "primer.processes", "primer.params", "primer.params_file",
                     "primer.devices", "primer.distributed", "primer.limits"]),
    "data": (1, ["primer.data"]),
    "vision": (2, ["primer.vision"]),
    "text": (2, ["primer.text"]),
    "models": (3, ["primer.models"]),
    "training": (4, ["primer.training"]),
    "evaluation": (5, ["primer.evaluation"]),
    "serving": (6, ["primer.serving"]),
    "stage plumbing": (7, ["primer.tracking", "primer.stage", "primer.report", "primer.demo", "primer.doctor",
                           "primer.cli", "primer.params_check", "primer.repro_params", "primer.repro_plan",
                           "primer.remote_check",
                           "primer.sweep", "primer.mlflow_http"]),
    "stages": (8, ["stages"]),
}

# What no stage lists in its dvc.yaml deps (and the deps walk does not follow): errors, atomic writes,
# params reading and the MLflow plumbing cannot change what a stage writes, and
# leaving them out keeps a change to logging from redoing the pipeline.
NOT_DEPS = {"primer.errors", "primer.atomic", "primer.processes", "primer.params", "primer.params_file",
            "primer.tracking", "primer.mlflow_http", "primer.stage", "primer.repro_params"}


def dvc_stages() -> dict:
    """dvc.yaml's stages by name (train_lm: its foreach template)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def layer_of(module: str) -> str | None:
    for name, (_, members) in LAYERS.items():
        if any(module == m or module.startswith(m + ".") for m in members):
            return name
    return None


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of primer/ and stages/ under `root`: dotted name -> file (packages by their __init__)."""
    found = {}
    for top in ("primer", "stages"):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The primer modules `path` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in ("primer", "stages")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("primer", "stages"):
            for alias in node.names:  # `from primer.vision import preview` imports the module primer.vision.preview
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return out


def back_imports(root: Path = REPO) -> list[str]:
    """One line per import that runs against the layers (or from a module no layer holds)."""
    known = modules(root)
    found = []
    for module, path in known.items():
        if module == "primer":  # the package's own __init__, empty
            continue
        mine = layer_of(module)
        if mine is None:
            found.append(f"{path.relative_to(root)} is in no layer: add it to LAYERS in tests/helpers/layers.py and to "
                         "docs/architecture.md")
            continue
        for target in sorted(imports(path, known)):
            theirs = layer_of(target)
            if theirs != mine and (theirs is None or LAYERS[theirs][0] >= LAYERS[mine][0]):
                found.append(f"{path.relative_to(root)} ({mine}) imports {target} ({theirs})")
    return found


def stage_deps(script: Path, root: Path = REPO) -> set[str]:
    """The primer files a stage script uses: its imports, theirs and so on, less NOT_DEPS and packages' __init__."""
    known = modules(root)
    seen, todo = set(), [script]
    while todo:
        for target in imports(todo.pop(), known):
            if target in NOT_DEPS or target in seen or target not in known:
                continue
            seen.add(target)
            todo.append(known[target])
    return {known[m].relative_to(root).as_posix() for m in seen if known[m].name != "__init__.py"}
