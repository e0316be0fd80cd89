"""docs/architecture.md stays true: its stages are dvc.yaml's, each stage's dashed arrows are the
subpackages of its deps, and its layer picture names every module of primer/, each where it lives."""

from __future__ import annotations

import re

import pytest

from helpers.layers import LAYERS, REPO, dvc_stages, modules

DOC = REPO / "docs" / "architecture.md"
TOP_LEVEL_NODES = {"plumbing", "stage_plumbing"}  # nodes of modules directly in primer/


def diagrams() -> list[str]:
    return re.findall(r"```mermaid\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_its_two_diagrams():
    assert len(diagrams()) == 2


def test_the_stages_drawn_are_the_stages_of_dvc_yaml():
    drawn = set(re.findall(r'\w+\(\["(\w+)"\]\)', diagrams()[0]))
    assert drawn == set(dvc_stages())


def test_each_stage_points_at_the_subpackages_its_deps_are_in():
    pipeline = diagrams()[0]
    drawn = {}
    for stage, package in re.findall(r"^\s*(\w+) -\.-> (\w+)\s*$", pipeline, re.M):
        drawn.setdefault(stage, set()).add(package)
    for name, stage in dvc_stages().items():
        packages = {d.split("/")[1] for d in stage["deps"] if d.startswith("primer/") and d.count("/") == 2}
        assert drawn.get(name, set()) == packages, (
            f"docs/architecture.md: the arrows of {name} differ from its dvc.yaml deps")
        for package in packages:
            assert re.search(rf'^\s*{package}\["primer/{package}"\]', pipeline, re.M), package


def layer_nodes() -> dict[str, list[str]]:
    """Node id -> the module files its label names."""
    return {node: re.findall(r"(\w+\.py)\b", label)
            for node, label in re.findall(r'^\s*(\w+)\["(.*)"\]\s*$', diagrams()[1], re.M)}


def test_every_module_named_exists_where_the_diagram_puts_it():
    for node, names in layer_nodes().items():
        folder = REPO / "primer" if node in TOP_LEVEL_NODES else REPO / "primer" / node
        for name in names:
            assert (folder / name).is_file(), (
                f"docs/architecture.md names {name} in {node}, but {folder / name} does not exist")


def test_the_diagram_names_every_module_once():
    named = [("" if node in TOP_LEVEL_NODES else node + "/") + name
             for node, names in layer_nodes().items() for name in names]
    actual = [p.relative_to(REPO / "primer").as_posix() for p in modules().values()
              if p.is_relative_to(REPO / "primer") and p.name != "__init__.py"]
    assert sorted(named) == sorted(actual)


@pytest.mark.parametrize("edge", re.findall(r"^\s*(\w+) --> (\w+)\s*$", diagrams()[1], re.M))
def test_the_layer_arrows_follow_the_layers_the_import_check_uses(edge):
    rank = {"plumbing": LAYERS["plumbing"][0], "stage_plumbing": LAYERS["stage plumbing"][0],
            **{name: r for name, (r, _) in LAYERS.items()}}
    assert rank[edge[0]] <= rank[edge[1]]
