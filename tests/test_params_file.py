"""primer/params_file.py reads params.yaml as DVC does: the same values for what YAML 1.1 and 1.2 read apart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dvc.api
import pytest

from primer.errors import PrimerError
from primer.params_file import read_yaml

TRICKY = """tricky:
  lr: 5e-05
  small: 1e-3
  word: yes
  off: no
  octal_like: 010
  octal: 0o17
  grouped: 1_000
  big: .inf
  plain: 3
"""


def test_params_read_as_dvc_reads_them(tmp_path):
    (tmp_path / "params.yaml").write_text(TRICKY)
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    params: [tricky]\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    ours = read_yaml(tmp_path / "params.yaml")["tricky"]
    assert ours == dvc.api.params_show(repo=str(tmp_path))["tricky"]
    assert ours["lr"] == 5e-05 and ours["word"] == "yes" and ours["octal_like"] == 10, ours


def test_a_yes_where_true_or_false_is_wanted_is_one_sentence(tmp_path):
    from primer.params import check_whole_file
    from stages.check_params import READERS, SWITCHES

    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    changed, found = re.subn(r"^(\s+bf16:) (true|false)", r"\1 yes", text, count=1, flags=re.M)
    assert found == 1
    (tmp_path / "params.yaml").write_text(changed)
    with pytest.raises(PrimerError) as refused:
        check_whole_file(tmp_path / "params.yaml", list(READERS.values()), SWITCHES)
    said = str(refused.value)
    assert "bf16" in said and "true or false" in said and "'yes'" in said and len(said.splitlines()) == 1, said


def test_a_key_written_twice_names_both_lines(tmp_path):
    (tmp_path / "params.yaml").write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(PrimerError, match=r"params.yaml: key 'a.b' is written twice \(lines 2 and 4\); keep one"):
        read_yaml(tmp_path / "params.yaml")
