"""Each stage's dvc.yaml `params:` list is what its params schema says changes its outputs: every result
and output field, and no run-only one (device, compile, logging and checkpoint cadence, workers), so a
changed result reruns the stage and a changed run setting reruns nothing. The checkpoint fingerprint
covers exactly the result fields."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml
from pydantic import Field

from primer.params import (
    Part,
    Section,
    Sections,
    effect,
    field_of,
    flatten,
    named_sections_of,
    output_only,
    result_values,
    run_only,
    section_of,
)

from helpers.layers import dvc_stages
from helpers.repo import REPO

PROFILE_ENTRIES = re.compile(r"^(profile|quick\..+)$")  # the quick profile's own rule: tests/test_profile.py


def schema_keys(section: type[Section], prefix: str = "") -> set[str]:
    """The dotted keys of a section's result and output fields; a section of named variants is one entry
    per foreach item (`section.${key}`), as DVC writes it."""
    keys = set()
    for key, field in section.model_fields.items():
        name = prefix + key
        if section_of(field.annotation) is not None:
            keys |= schema_keys(field.annotation, name + ".")
        elif named_sections_of(field.annotation) is not None:
            keys.add(name + ".${key}")
        elif effect(field) != "run":
            keys.add(name)
    return keys


def listed_keys(entries: list[str], params: dict) -> set[str]:
    """dvc.yaml's entries as the dotted leaf keys of params.yaml they name (a section names all of its keys)."""
    keys = set()
    for entry in entries:
        if PROFILE_ENTRIES.match(entry):
            continue
        value = params
        for part in entry.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        keys |= {f"{entry}.{leaf}" for leaf in flatten(value)} if isinstance(value, dict) else {entry}
    return keys


WHOLE_FILE = "check_params"  # the one stage that reads all of params.yaml, to check it before the others run


def stage_schemas() -> dict:
    """{dvc.yaml stage: its script's Params}, for every stage but the whole-file check."""
    schemas = {}
    for name, stage in dvc_stages().items():
        if name != WHOLE_FILE:
            script = re.search(r"stages/(\w+)\.py", stage["cmd"]).group(1)
            schemas[name] = importlib.import_module(f"stages.{script}").Params
    return schemas


def test_the_whole_file_check_reads_every_stages_sections_and_all_of_params_yaml():
    from stages.check_params import READERS

    assert READERS == stage_schemas()  # a new stage's sections are checked too
    assert dvc_stages()[WHOLE_FILE]["params"] == [{"params.yaml": None}]  # any change reruns it
    checked = "${paths.params_checked}"
    assert all(checked in stage["deps"] for name, stage in dvc_stages().items() if name != WHOLE_FILE)


@pytest.mark.parametrize("stage", sorted(set(dvc_stages()) - {WHOLE_FILE}))
def test_dvc_params_are_the_stages_result_and_output_fields(stage):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    expected = schema_keys(stage_schemas()[stage])
    listed = listed_keys([p for p in dvc_stages()[stage].get("params", []) if isinstance(p, str)], params)
    missing, extra = sorted(expected - listed), sorted(listed - expected)
    assert not missing and not extra, (f"dvc.yaml stage {stage}: add the result/output fields {missing} to its params "
                                       f"and remove the run-only (or unknown) ones {extra}")


def test_the_comparison_fails_when_a_result_field_is_missing_or_a_run_field_is_listed():
    class Train(Section):
        lr: int = Field(ge=1)
        device: int = run_only(ge=0)
        examples: int = output_only(ge=0)

    class Other(Section):
        size: int = Field(ge=1)
        unread: int

    class OtherSize(Part):
        size: int = field_of(Other, "size")

    class Params(Sections):
        seed: int = Field(ge=0)
        train: Train
        other: OtherSize

    schema = Params
    params = {"seed": 0, "train": {"lr": 1, "device": 0, "examples": 2}, "other": {"size": 3, "unread": 4}}
    assert schema_keys(schema) == {"seed", "train.lr", "train.examples", "other.size"}
    assert listed_keys(["seed", "train", "other.size", "profile"], params) == {"seed", "train.lr", "train.device",
                                                                               "train.examples", "other.size"}
    assert schema_keys(schema) - listed_keys(["seed", "train.lr", "other.size"], params) == {"train.examples"}


def test_the_fingerprint_covers_exactly_the_result_fields():
    class Model(Section):
        width: int = Field(ge=1)
        compile: int = run_only(ge=0)

    class Train(Section):
        lr: int = Field(ge=1)
        device: int = run_only(ge=0)
        examples: int = output_only(ge=0)
        model: Model

    schema = Train
    values = {"lr": 1, "device": 0, "examples": 2, "model": {"width": 8, "compile": 1}}
    assert result_values(values, schema) == {"lr": 1, "model": {"width": 8}}
    from primer.params import load_params
    from primer.training.lm_training import LmParams, shared_results

    shared = shared_results(load_params(REPO / "params.yaml", LmParams).train_lm)
    assert "variants" not in shared and "device" not in shared and "compile" not in shared
    assert {"epochs", "batch_size", "val_every", "prefix"} & set(shared) == {"epochs", "batch_size", "val_every"}
