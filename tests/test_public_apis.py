"""primer/ and stages/ use their tools through public APIs: no `/proc`, no private module of another library, no
private name imported from one. The one workaround that needs a private API lives in an adapter module that names the
upstream behaviour in its docstring and has a test that fails once the tool behaves; tests and benchmarks may probe
deeper (benchmarks/host_sync_probe.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers.layers import REPO, modules

ADAPTERS = {  # module: the private names it may import, where its docstring says why and which test ends it
    "primer.sweep.ray_login": {"ray._raylet", "ray._raylet.GcsClient"},
}


def private_imports(path: Path) -> set[str]:
    """The dotted names imported in `path` (from another library) with a private part: `_x`, not `__x__`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in ("primer", "stages", "__future__"):
                continue
            if any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts):
                found.add(name)
    return found


def proc_paths(path: Path) -> list[str]:
    """The string constants in `path` that name a /proc path."""
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"/proc(/|$)", node.value)]


@pytest.mark.parametrize("module, path", sorted(modules().items()), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_a_module_uses_public_apis_only(module, path):
    assert private_imports(path) <= ADAPTERS.get(module, set()), (
        f"{path.relative_to(REPO)} imports a private API; use a public one, or keep the workaround in one adapter "
        "module that names the upstream issue and has a test that fails once it is fixed")
    assert not proc_paths(path), f"{path.relative_to(REPO)} reads /proc: use psutil (primer/processes.py)"


def test_each_adapter_names_its_upstream_behaviour_and_the_test_that_ends_it():
    for module in ADAPTERS:
        doc = ast.get_docstring(ast.parse(modules()[module].read_text())) or ""
        assert "upstream" in doc and "fails once" in doc, module


def test_the_check_sees_a_private_import_and_a_proc_path(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('from torch.utils._python_dispatch import TorchDispatchMode\nimport mlflow.utils._x\n'
                      'from os import __name__\nSTAT = f"/proc/{1}/stat"\nOK = "/process"\n')
    assert private_imports(sample) == {"torch.utils._python_dispatch", "torch.utils._python_dispatch.TorchDispatchMode",
                                       "mlflow.utils._x"}
    assert len(proc_paths(sample)) == 1
