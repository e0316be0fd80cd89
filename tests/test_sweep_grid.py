"""primer/sweep/submit.py before any Ray: the -S grid in `dvc exp run -S` syntax, its keys checked against params.yaml
at the commit, --help, and the one sentence that says how to install Ray where it is missing. The sweep itself runs on
a real two-node cluster in tests/e2e/test_sweep.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from primer.errors import PrimerError
from primer.sweep.submit import INSTALL, check_keys, check_targets, grid, parse_set, parser

from helpers.repo import REPO


def test_several_sets_multiply_into_a_grid():
    assert grid(["train_cnn.lr=1e-3,3e-4", "train_cnn.batch_size=32,64"]) == [
        ["train_cnn.lr=1e-3", "train_cnn.batch_size=32"], ["train_cnn.lr=1e-3", "train_cnn.batch_size=64"],
        ["train_cnn.lr=3e-4", "train_cnn.batch_size=32"], ["train_cnn.lr=3e-4", "train_cnn.batch_size=64"]]


def test_a_value_with_commas_inside_brackets_or_quotes_is_one_value_and_a_file_prefix_stays():
    assert parse_set("other.yaml:a.b=[1,2],'x,y',3") == ("other.yaml", "a.b", ["[1,2]", "'x,y'", "3"])
    assert grid(["other.yaml:a=1,2"]) == [["other.yaml:a=1"], ["other.yaml:a=2"]]
    assert grid(["a=1"]) == [["a=1"]]


@pytest.mark.parametrize("text, says", [
    ("train_cnn.lr", "is not KEY=VALUE[,VALUE...]"),
    ("train_cnn.lr=", "is not KEY=VALUE[,VALUE...]"),
    ("train_cnn.lr=1,,2", "has an empty value"),
    ("+train_cnn.new=1", "adds or removes a key"),
])
def test_a_malformed_set_is_one_sentence(text, says):
    with pytest.raises(PrimerError, match=r"^-S .*" + says.replace("[", r"\[").replace(".", r"\.")):
        parse_set(text)


def test_keys_and_targets_are_checked_against_the_commit():
    check_keys(REPO, "HEAD", ["train_cnn.lr=1e-3,3e-4", "train_lm.variants.lstm.lr=1,2"])
    check_targets(REPO, "HEAD", ["train_cnn", "train_lm@lstm", "dvc.yaml"])
    with pytest.raises(PrimerError) as caught:
        check_keys(REPO, "HEAD", ["train_cnn.lr=1", "train_cnn.model.depth=3,4"])
    assert str(caught.value) == ("-S 'train_cnn.model.depth=3,4': params.yaml has no key 'train_cnn.model.depth' "
                                 "(train_cnn.model has arch, width); fix the key.")
    with pytest.raises(PrimerError, match=r"^-S 'nope.yaml:a=1' names nope.yaml, which commit \w+ does not have"):
        check_keys(REPO, "HEAD", ["nope.yaml:a=1"])
    with pytest.raises(PrimerError, match=r"^stage target 'train_cn' is not a stage of dvc.yaml \(it has [^)]*\bfetch, "
                       r"verify, "):
        check_targets(REPO, "HEAD", ["train_cn"])


def test_help_explains_the_sweep_and_its_one_sentence_refusals():
    said = " ".join(parser().format_help().split())
    for part in ("dvc exp run --temp -n NAME", "PRIMER_CHECKOUT", "dvc exp pull origin", "retried on another",
                 "one sentence naming what to fix", "docs/cluster.md"):
        assert part in said, part


def test_without_ray_the_sweep_says_how_to_install_it():
    done = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.modules['ray'] = None; "
                           "sys.argv = ['-m', '-S', 'train_cnn.lr=1,2']; "
                           "runpy.run_module('primer.sweep', run_name='__main__', alter_sys=True)"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (1, f"sweep: error: {INSTALL}\n"), done.stderr
    assert "pip install -e '.[cluster]'" in INSTALL


def test_primer_sweep_is_the_same_command(capsys):
    from primer.cli import run

    with pytest.raises(SystemExit) as done:
        run(["sweep", "--help"])
    assert done.value.code == 0 and "dvc exp run --temp -n NAME" in capsys.readouterr().out


def test_negative_resources_or_retries_are_one_sentence():
    from primer.sweep.submit import run

    with pytest.raises(PrimerError, match=r"^--gpus -1 is negative; give 0 or more\.$"):
        run(["-S", "train_cnn.lr=1,2", "--gpus", "-1"])
