"""The layout: every module sits in a layer, imports run one way (data -> vision/text -> models -> training
-> evaluation -> serving -> stages), and each stage's dvc.yaml deps are exactly the primer files it uses."""

from __future__ import annotations

import textwrap

import pytest

from helpers.layers import LAYERS, NOT_DEPS, REPO, back_imports, dvc_stages, modules, stage_deps


def test_no_module_imports_from_a_later_layer():
    assert back_imports() == []


def test_every_layer_holds_modules_that_exist():
    known = modules()
    for name, (_, members) in LAYERS.items():
        for member in members:
            assert member in known, f"LAYERS[{name!r}] names {member}, which is not a module or package"


def write_tree(root, files: dict) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


@pytest.mark.parametrize("source, found", [
    ("from primer.training.loop import fit\n", "primer/vision/aug.py (vision) imports primer.training.loop (training)"),
    ("def f():\n    from primer.text import corpus\n",
     "primer/vision/aug.py (vision) imports primer.text.corpus (text)"),
    ("import primer.stage\n", "primer/vision/aug.py (vision) imports primer.stage (stage plumbing)"),
    ("from primer.data.table import read_table\nfrom primer.errors import PrimerError\n", None),
])
def test_the_check_finds_an_import_that_runs_back(tmp_path, source, found):
    """A sibling (text), a later layer (training) or the stage plumbing, also inside a function; an earlier one is
    fine."""
    write_tree(tmp_path, {"primer/__init__.py": "", "primer/errors.py": "", "primer/stage.py": "",
                          "primer/data/__init__.py": "", "primer/data/table.py": "",
                          "primer/text/__init__.py": "", "primer/text/corpus.py": "",
                          "primer/training/__init__.py": "", "primer/training/loop.py": "",
                          "primer/vision/__init__.py": "", "primer/vision/aug.py": source,
                          "stages/__init__.py": ""})
    assert back_imports(tmp_path) == ([found] if found else [])


def test_a_module_in_no_layer_is_reported(tmp_path):
    write_tree(tmp_path, {"primer/__init__.py": "", "primer/helpers.py": "", "stages/__init__.py": ""})
    assert back_imports(tmp_path) == ["primer/helpers.py is in no layer: add it to LAYERS in tests/helpers/layers.py "
                                      "and to docs/architecture.md"]


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_deps_are_the_primer_files_the_stage_uses(stage):
    """A stage reruns when a module it imports (directly or not) changes, and not for any other module."""
    deps = [d for d in dvc_stages()[stage]["deps"]]
    script = next(d for d in deps if d.startswith("stages/"))
    listed = {d for d in deps if d.startswith(("primer/", "stages/")) and d != script}  # check_params reads stages/
    assert listed == stage_deps(REPO / script), f"dvc.yaml stage {stage}: deps differ from what {script} imports"
    assert not {f"primer/{m.removeprefix('primer.')}.py" for m in NOT_DEPS} & listed


def test_the_deps_walk_follows_imports_but_not_the_plumbing(tmp_path):
    write_tree(tmp_path, {"primer/__init__.py": "", "primer/stage.py": "from primer.data import split\n",
                          "primer/data/__init__.py": "",
                          "primer/data/fetch.py": "from primer.data.download import get\n",
                          "primer/data/download.py": "", "primer/data/split.py": "",
                          "stages/__init__.py": "",
                          "stages/go.py": "from primer.stage import cli\nfrom primer.data import fetch\n"})
    assert stage_deps(tmp_path / "stages/go.py", tmp_path) == {"primer/data/fetch.py", "primer/data/download.py"}
