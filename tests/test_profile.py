"""The quick profile (`make demo`): the `quick` section laid over params, and params.yaml put back."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from primer import demo
from primer.errors import PrimerError
from primer.params import Section, Sections, load_params
from primer.params_file import QUICK_SECTIONS, apply_profile, parse_yaml

from helpers.repo import REPO


class TrainCnn(Section):
    epochs: int = Field(ge=1)
    lr: int = Field(ge=1)


class Params(Sections):
    seed: int
    train_cnn: TrainCnn


BASE = {"seed": 1, "train_cnn": {"epochs": 30, "lr": 1}, "quick": {"train_cnn": {"epochs": 2}}}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_quick_profile_lays_the_quick_section_over_the_params(tmp_path):
    params = load_params(write(tmp_path, {**BASE, "profile": "quick"}), Params)
    assert params.model_dump() == {"seed": 1, "train_cnn": {"epochs": 2, "lr": 1}} and params.profile == "quick"


def test_full_profile_reads_the_params_as_written(tmp_path):
    assert load_params(write(tmp_path, {**BASE, "profile": "full"}), Params).train_cnn.epochs == 30
    assert load_params(write(tmp_path, BASE), Params).profile is None  # a file without the key


def test_overlay_is_deep_and_keeps_the_sibling_keys():
    raw = {"profile": "quick", "train_lm": {"epochs": 500, "variants": {"rnn": {"lr": 1.0, "patience": 0}}},
           "quick": {"train_lm": {"variants": {"rnn": {"patience": 3}}}}}
    assert apply_profile(raw, "p.yaml")["train_lm"] == {"epochs": 500, "variants": {"rnn": {"lr": 1.0, "patience": 3}}}


@pytest.mark.parametrize("change, message", [
    ({"profile": "fast"}, "'profile' is 'fast', but it must be one of full, quick"),
    ({"profile": "quick", "quick": {"train_cnn": {"epochz": 2}}},
     "'quick.train_cnn.epochz' overrides 'train_cnn.epochz', which the file does not have"),
    ({"profile": "full", "quick": {"augment": {"train_size": 64}}}, "'quick.augment' is not allowed"),
    ({"profile": "quick", "quick": [1]}, "'quick' must be a mapping"),
])
def test_a_bad_profile_or_quick_section_is_one_sentence_naming_the_key(tmp_path, change, message):
    with pytest.raises(PrimerError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_params(write(tmp_path, {**BASE, **change}), Params)


def test_the_repository_params_load_under_both_profiles():
    raw = parse_yaml((REPO / "params.yaml").read_text(), "params.yaml")
    assert raw["profile"] == "full"
    quick = apply_profile({**raw, "profile": "quick"}, "params.yaml")
    for section, changes in raw["quick"].items():
        for key, value in changes.items():
            assert quick[section][key] == value != raw[section][key]


def test_every_stage_that_reads_a_quick_section_reruns_when_the_profile_changes():
    """A stage whose dvc.yaml params name a section the quick profile may change must also list
    `profile` and `quick.<section>`, or `make demo` would leave it stale (or the reverse)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages
        params = [p for p in stage.get("params", []) if isinstance(p, str)]
        for section in QUICK_SECTIONS:
            if any(p == section or p.startswith(section + ".") for p in params):
                assert "profile" in params and f"quick.{section}" in params, (name, section)
                checked += 1
    assert checked >= 4  # train_cnn, train_lm@, train_transformer, evaluate


def test_with_profile_changes_only_the_value(tmp_path):
    text = (REPO / "params.yaml").read_text()
    quick = demo.with_profile(text, "quick")
    changed = [(a, b) for a, b in zip(text.splitlines(), quick.splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("profile: quick ") and "#" in changed[0][1]
    assert demo.with_profile(quick, "full") == text
    with pytest.raises(PrimerError, match="exactly one top-level 'profile:' line"):
        demo.with_profile("seed: 1\n", "quick")


def fake_dvc(tmp_path: Path, body: str) -> dict:
    """A `dvc` on PATH that records the params.yaml it sees, then does `body`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dvc"
    script.write_text(f"#!/bin/sh\ncp params.yaml seen.yaml\necho \"$@\" > args.txt\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("body, rc", [("exit 0", 0), ("exit 3", 3), ("kill -TERM $PPID; sleep 5", 130)])
def test_demo_runs_dvc_repro_with_the_quick_profile_and_puts_params_back(tmp_path, monkeypatch, capsys, body, rc):
    text = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    for key, value in fake_dvc(tmp_path, body).items():
        monkeypatch.setenv(key, value)
    assert demo.main(["--", "--force"]) == rc
    assert parse_yaml((tmp_path / "seen.yaml").read_text(), "seen")["profile"] == "quick"
    assert (tmp_path / "args.txt").read_text().split() == ["repro", "--force"]
    assert (tmp_path / "params.yaml").read_text() == text  # byte for byte, also after a failure or a kill
    assert signal.getsignal(signal.SIGTERM) is not demo._terminate  # the caller's handler is back
    if rc == 0:
        assert "report: report.html" in capsys.readouterr().out
