"""Faults a person causes in a params file: numbers as DVC writes them, a key written twice, and
mistakes across keys, which must fail before a tracking run exists and name the file actually read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from primer.errors import PrimerError
from primer.params import Section, Sections, load_params
from primer.stage import cli

from helpers.repo import REPO


class Lr(Section):
    lr: float = Field(ge=1e-7, le=10)


class AnyNumber(Section):
    lr: float


class LR(Sections):
    train_cnn: Lr


class AnyLr(Sections):
    train_cnn: AnyNumber


@pytest.mark.parametrize("written, value", [("5e-05", 5e-05), ("1e-3", 1e-3), ("1E+2", 100.0), (".5", 0.5),
                                            ("-2.5e-4", -2.5e-4), ("+1e2", 100.0), ("3", 3.0), ("0.001", 0.001)])
def test_numbers_in_scientific_notation_load_as_numbers(tmp_path, written, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"train_cnn:\n  lr: {written}\n")
    assert load_params(path, AnyLr).model_dump() == {"train_cnn": {"lr": value}}


def test_the_lr_dvc_exp_run_writes_passes_the_train_cnn_range(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_cnn:\n  lr: 5e-05\n")  # what `dvc exp run -S train_cnn.lr=5e-05` leaves
    assert load_params(path, LR).train_cnn.lr == 5e-05


def test_quoted_and_non_numbers_stay_strings(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a: '1e-3'\nb: 1e\nc: e5\nd: 12\ne: 0x10\n")
    from primer.params_file import read_yaml

    assert read_yaml(path) == {"a": "1e-3", "b": "1e", "c": "e5", "d": 12, "e": 16}


def test_key_written_twice_is_an_error_naming_the_key_and_lines(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("seed: 1\ntrain_cnn:\n  lr: 0.001\n  epochs: 3\n  lr: 0.5\n")
    with pytest.raises(PrimerError) as err:
        load_params(path, LR)
    assert str(err.value) == f"{path}: key 'train_cnn.lr' is written twice (lines 3 and 5); keep one of them."


def test_section_written_twice_is_an_error_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_cnn:\n  lr: 0.001\nseed: 1\ntrain_cnn:\n  lr: 0.5\n")
    with pytest.raises(PrimerError, match="key 'train_cnn' is written twice"):
        load_params(path, LR)


# --- mistakes across keys: one sentence naming the params file read, and no MLflow run -----------

def _params(tmp_path: Path, change) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    change(params)
    path = tmp_path / "sweep" / "my-params.yaml"  # not ./params.yaml: messages must name this file
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _set(section: str, **values):
    def change(params):
        target = params
        for key in section.split("."):
            target = target[key]
        target.update(values)
    return change


def _argv(stage: str, tmp_path: Path) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Time Traveller was expounding a recondite matter to us.\n")
    out = [str(tmp_path / name) for name in ("ckpt.pt", "model.pt", "metrics.json", "curves.csv", "curves.png")]
    training = ["--checkpoint", out[0], "--model", out[1], "--metrics", out[2], "--curves", out[3],
                "--curves-png", out[4]]
    return {
        "split": ["--manifest", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "split.csv")],
        "augment": ["--images", str(tmp_path), "--split", str(tmp_path / "split.csv"),
                    "--out", str(tmp_path / "arrays"), "--preview", str(tmp_path / "preview.png")],
        "train_basics": ["--metrics", out[2], "--plot", out[4]],
        "train_cnn": ["--arrays", str(tmp_path / "arrays"), *training],
        "train_lm": ["--variant", "lstm", "--corpus", str(corpus), *training],
        "train_transformer": ["--pairs", str(tmp_path / "fra.txt"), *training,
                              "--translations", str(tmp_path / "t.csv"), "--attention", str(tmp_path / "attention")],
    }[stage]


CROSS_KEY_MISTAKES = [
    ("split", _set("split", val_fraction=0.6, test_fraction=0.4), "'split.val_fraction' + 'split.test_fraction' is 1"),
    ("augment", _set("augment.policy", crop_size=200),
     "'augment.policy.crop_size' (200) is larger than 'augment.train_size' (150)"),
    ("augment", _set("augment.policy", blur_sigma_min=2.0, blur_sigma_max=1.0),
     "'augment.policy.blur_sigma_min' (2) is above"),
    ("train_cnn", _set("augment.policy", crop_size=151), "'augment.policy.crop_size' (151) is larger than"),
    ("train_cnn", _set("augment.policy", blur_sigma_min=5.0, blur_sigma_max=1.0),
     "'augment.policy.blur_sigma_min' (5) is above"),
    ("train_transformer", _set("train_transformer.model", num_hiddens=30, num_heads=4),
     "'train_transformer.model.num_hiddens' (30) must be divisible by 'train_transformer.model.num_heads' (4)"),
    ("train_basics", _set("train_basics.plane", lr=1.0),
     "'train_basics.plane.lr' is 1, which makes gradient descent diverge on the ice-cream table; use a value below"),
    ("train_lm", lambda p: None, "is too short for one batch of batch_size=32 x num_steps=35"),
    ("train_lm", _set("train_lm", batch_size=1, num_steps=2, val_fraction=0.01),
     "leaves only 1 character(s) for validation"),
]


@pytest.mark.parametrize("stage, change, message", CROSS_KEY_MISTAKES,
                         ids=[f"{s}-{m.split()[0]}" for s, _, m in CROSS_KEY_MISTAKES])
def test_cross_key_mistake_fails_before_any_mlflow_run_naming_the_params_file(tmp_path, monkeypatch, capsys,
                                                                               stage, change, message):
    import importlib

    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    params = _params(tmp_path, change)
    main = importlib.import_module(f"stages.{stage}").main
    code = cli(main, ["--params", str(params), *_argv(stage, tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].split(": error: ", 1)[1].startswith(f"{params}: "), lines
    assert message in lines[0]
    if store.exists():  # a run opened and failed would be listed here
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_fails_before_any_mlflow_run(tmp_path, monkeypatch, capsys):
    from stages.train_transformer import main

    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("PRIMER_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    params = _params(tmp_path, _set("train_transformer", device="cuda"))
    assert cli(main, ["--params", str(params), *_argv("train_transformer", tmp_path)]) == 1
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"{params}: 'train_transformer.device' is 'cuda', but torch sees no CUDA device; "
                         "use 'auto' or 'cpu'.")
    assert not store.exists()


def test_params_check_names_a_missing_empty_or_incomplete_params_file_before_dvc_reads_it(tmp_path):
    """`make repro` runs `python -m primer.params_check` first: DVC alone says only "Could not find
    'train_lm.variants'"."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    restore = ("restore it with `git checkout params.yaml`, or copy the missing part from the repository's own "
               "params.yaml.")

    def check() -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "primer.params_check"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        return done.returncode, done.stderr.strip()

    assert check() == (1, "params_check: error: params file 'params.yaml' not found; the pipeline reads all its "
                          f"settings from it: {restore}")
    (tmp_path / "params.yaml").write_text("\n")
    assert check() == (1, "params_check: error: params file 'params.yaml' is empty; it must hold the pipeline's "
                          f"sections (fetch, verify, ...): {restore}")
    (tmp_path / "params.yaml").write_text("- fetch\n")
    assert check() == (1, "params_check: error: params file 'params.yaml' must hold a mapping of sections, not list.")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["train_lm"]["variants"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert check() == (1, "params_check: error: params file 'params.yaml' has no 'train_lm.variants', which dvc.yaml's "
                          f"stages read; {restore}")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert check() == (0, "")
