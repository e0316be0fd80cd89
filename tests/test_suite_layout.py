"""The suite's own layout: every test module stands alone. What several modules share is in the package tests/helpers/
(`from helpers.repo import REPO`) or is a fixture of tests/conftest.py; no module imports a test module or a helper by
a bare name, so pytest needs one folder on its path, tests/."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from helpers.repo import REPO

TESTS = REPO / "tests"
# the helpers' names before tests/helpers/ held them, each once a module of its own on pytest's path
BARE_HELPERS = {"conftest", "layers", "podman_stack", "s3_store"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in the file, those inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def borrowed(path: Path, root: Path = TESTS) -> list[str]:
    """`file:line imports module` for each import of a test module or of a helper by its old bare name."""
    return [f"{path.relative_to(root)}:{line} imports {module}" for line, module in imported_modules(path)
            if module.split(".")[0].startswith("test_") or module.split(".")[0] in BARE_HELPERS]


def suite_modules(root: Path = TESTS) -> list[Path]:
    """Every test module, every helper module and conftest.py under `root`."""
    return sorted({*root.rglob("test_*.py"), *(root / "helpers").rglob("*.py"), *root.rglob("conftest.py")})


def test_no_test_module_imports_another_or_a_helper_by_its_bare_name():
    modules = suite_modules()
    assert len([p for p in modules if p.name.startswith("test_")]) > 50  # the walk found the suite
    assert [found for path in modules for found in borrowed(path)] == []


def test_the_check_finds_test_modules_and_bare_helpers_wherever_they_are_imported(tmp_path):
    """The imports the suite had before tests/helpers/, at the top and inside a function; helpers.* passes."""
    (tmp_path / "serving").mkdir()
    old = tmp_path / "serving" / "test_served_models.py"
    old.write_text("from __future__ import annotations\n"
                   "import test_pipeline.sub\n"
                   "from conftest import photo, png_bomb\n"
                   "from test_evaluate import TEXT, save_tiny_translator\n"
                   "from layers import REPO\n"
                   "from helpers.images import photo\n"
                   "import helpers.repo\n"
                   "from primer.serving import served_models\n"
                   "def test_x():\n"
                   "    from s3_store import S3Store\n"
                   "    import podman_stack\n")
    assert borrowed(old, tmp_path) == [
        "serving/test_served_models.py:2 imports test_pipeline.sub",
        "serving/test_served_models.py:3 imports conftest",
        "serving/test_served_models.py:4 imports test_evaluate",
        "serving/test_served_models.py:5 imports layers",
        "serving/test_served_models.py:10 imports s3_store",
        "serving/test_served_models.py:11 imports podman_stack",
    ]
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "tiny.py").write_text("from test_evaluate import TEXT\n")
    (tmp_path / "conftest.py").write_text("from layers import REPO\n")
    (tmp_path / "ddp_script.py").write_text("from conftest import REPO\n")  # not a test or helper module: not read
    assert [found for path in suite_modules(tmp_path) for found in borrowed(path, tmp_path)] == [
        "conftest.py:1 imports layers", "helpers/tiny.py:1 imports test_evaluate",
        "serving/test_served_models.py:2 imports test_pipeline.sub", "serving/test_served_models.py:3 imports conftest",
        "serving/test_served_models.py:4 imports test_evaluate", "serving/test_served_models.py:5 imports layers",
        "serving/test_served_models.py:10 imports s3_store", "serving/test_served_models.py:11 imports podman_stack",
    ]


def test_pytest_puts_only_tests_on_the_path():
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["pythonpath"] == ["tests"]


def test_the_old_bare_helper_modules_are_gone_and_helpers_is_a_package():
    assert not [name for name in BARE_HELPERS - {"conftest"} if (TESTS / f"{name}.py").exists()]
    assert (TESTS / "helpers" / "__init__.py").is_file()
    assert {"layers", "podman_stack", "s3_store"} <= {p.stem for p in (TESTS / "helpers").glob("*.py")}
