"""Params validation: every bad value is one sentence naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from primer.errors import PrimerError
from primer.params import Name, Section, Sections, flatten, load_params
from primer.vision.augment_policy import AugmentPolicy

from helpers.repo import REPO


class Split(Section):
    val_fraction: float = Field(ge=0, le=0.9)
    test_fraction: float = Field(ge=0, le=0.9)


class Params(Sections):
    seed: int = Field(ge=0)
    split: Split


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_valid_section_loads_and_ints_widen_to_floats(tmp_path):
    params = load_params(write(tmp_path, {"seed": 1, "split": {"val_fraction": 0, "test_fraction": 0.1}, "other": {}}),
                         Params)
    assert params.model_dump() == {"seed": 1, "split": {"val_fraction": 0.0, "test_fraction": 0.1}}
    assert params.split.val_fraction == 0.0 and params.seed == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ({"seed": 1, "split": {"val_fraction": -0.1, "test_fraction": 0.1}},
         "'split.val_fraction' is -0.1, but it must be a number from 0 to 0.9"),
        ({"seed": 1, "split": {"val_fraction": "a", "test_fraction": 0.1}}, "'split.val_fraction' is 'a'"),
        ({"seed": 1.5, "split": {"val_fraction": 0.1, "test_fraction": 0.1}},
         "'seed' is 1.5, but it must be an integer >= 0"),
        ({"seed": True, "split": {"val_fraction": 0.1, "test_fraction": 0.1}}, "'seed' is True"),
        ({"seed": 1, "split": {"val_fraction": 0.1, "test_fraction": 0.1, "tset": 1}},
         "unknown key 'split.tset'; allowed keys in 'split' are: val_fraction, test_fraction"),
        ({"seed": 1, "split": {"val_fraction": 0.1}}, "key 'split.test_fraction' is missing"),
        ({"split": {"val_fraction": 0.1, "test_fraction": 0.1}}, "key 'seed' is missing"),
        ({"seed": 1, "split": [1, 2]}, "'split' must be a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, message):
    with pytest.raises(PrimerError) as err:
        load_params(write(tmp_path, data), Params)
    assert message in str(err.value)
    assert "params.yaml" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(PrimerError, match="not found"):
        load_params(tmp_path / "missing.yaml", Params)
    with pytest.raises(PrimerError, match="not valid YAML at line 3"):
        load_params(write(tmp_path, "seed: 1\nsplit: [\n"), Params)


def test_repo_params_pass_every_stage_schema():
    from stages import augment, evaluate, fetch, split, train_basics, train_cnn, train_lm, train_transformer, verify

    for module in (fetch, verify, split, augment, train_cnn, train_lm, train_transformer, train_basics, evaluate):
        load_params(REPO / "params.yaml", module.Params)


def test_policy_params_are_the_constructor_arguments():
    params = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]["policy"]
    assert set(params) == set(AugmentPolicy.model_fields)
    primer, ours = AugmentPolicy(), AugmentPolicy(**params)  # the constructor's defaults: the primer's train_transform
    milder = {"rotate_deg", "brightness", "contrast", "saturation", "hue"}  # params.yaml's (RESULTS.md, CNN recipe)
    assert {name for name in AugmentPolicy.model_fields if getattr(primer, name) != getattr(ours, name)} == milder
    assert all(getattr(ours, name) < getattr(primer, name) for name in milder)
    assert flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}


def test_stage_exits_non_zero_with_one_sentence_before_any_work(tmp_path):
    bad = yaml.safe_load((REPO / "params.yaml").read_text())
    bad["verify"]["num_workers"] = -2
    params = write(tmp_path, bad)
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "verify.py"), "--params", str(params),
         "--images", str(tmp_path / "none"), "--manifest", str(tmp_path / "m.csv"),
         "--rejects", str(tmp_path / "r.csv"), "--summary", str(tmp_path / "s.json")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"verify: error: {params}: 'verify.num_workers' is -2, but it must be an integer from 0 to 1024."
    ]
    assert not (tmp_path / "mlflow.db").exists()  # failed before tracking started


@pytest.mark.parametrize("script", ["fetch", "verify", "split", "augment", "train_cnn", "train_lm"])
def test_every_stage_explains_itself(script):
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{script}.py"), "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "--params" in result.stdout and len(result.stdout.splitlines()) > 8


def test_named_variants_share_one_schema(tmp_path):
    class Variant(Section):
        lr: float = Field(ge=0, le=10)
        layers: int = Field(ge=1, le=4)

    class Variants(Sections):
        v: dict[Name, Variant] = Field(min_length=1)

    schema = Variants
    ok = load_params(write(tmp_path, {"v": {"lstm": {"lr": 1, "layers": 1}, "deep_lstm": {"lr": 2, "layers": 2}}}),
                     schema)
    assert ok.model_dump() == {"v": {"lstm": {"lr": 1.0, "layers": 1}, "deep_lstm": {"lr": 2.0, "layers": 2}}}
    with pytest.raises(PrimerError, match="'v.deep.layers' is 9, but it must be an integer from 1 to 4"):
        load_params(write(tmp_path, {"v": {"deep": {"lr": 2, "layers": 9}}}), schema)
    with pytest.raises(PrimerError, match="has the name 'a b'"):
        load_params(write(tmp_path, {"v": {"a b": {"lr": 2, "layers": 1}}}), schema)
    with pytest.raises(PrimerError, match="'v' must be a mapping of names"):
        load_params(write(tmp_path, {"v": {}}), schema)


def test_docs_resnet_recipe_is_valid_train_cnn_params(tmp_path):
    """docs/training.md's `dvc exp run -S ...` line for arch resnet names real keys with valid values."""
    import re

    from primer.training.cnn_training import check_cnn_params
    from stages import train_cnn

    guide = (REPO / "docs/training.md").read_text()
    command = re.search(r"dvc exp run -S train_cnn\.model\.arch=resnet.*?(?=\n\s*```)", guide, re.S).group(0)
    overrides = re.findall(r"-S (\S+)=(\S+)", command)
    assert len(overrides) >= 8
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides:
        section = params
        *path, last = key.split(".")
        for name in path:
            section = section[name]
        assert last in section, key
        section[last] = yaml.safe_load(value)
    loaded = load_params(write(tmp_path, params), train_cnn.Params)
    check_cnn_params(loaded)
    assert loaded.train_cnn.model.model_dump() == {"arch": "resnet", "width": 32}


@pytest.mark.parametrize("change, message", [
    (lambda policy: policy.pop("hue"), "key 'augment.policy.hue' is missing; add it (a number from 0 to 0.5)."),
    (lambda policy: policy.update(blur_kernel=4),
     "'augment.policy.blur_kernel' is 4, but it must be 0 or an odd integer from 0 to 99."),
    (lambda policy: policy.update(blur_sigma_min=5, blur_sigma_max=3),
     "'augment.policy.blur_sigma_min' (5) is above 'blur_sigma_max' (3); swap them."),
])
def test_every_policy_key_is_written_even_though_the_class_has_the_primers_defaults(tmp_path, change, message):
    from stages import augment

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    change(params["augment"]["policy"])
    path = write(tmp_path, params)
    with pytest.raises(PrimerError) as err:
        load_params(path, augment.Params)
    assert str(err.value) == f"{path}: {message}"
