"""train_lm's tiny corpus, and the repo's params.yaml with a tiny train_lm."""

from __future__ import annotations

import yaml

from helpers.repo import REPO

TINY_TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter "
             "to us.\n") * 12


def tiny_params(tmp_path, **changes):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_lm"].update({"epochs": 2, "batch_size": 4, "num_steps": 8, "sample_every": 1, "sample_chars": 10,
                               "log_every": 5, **changes})
    for variant in params["train_lm"]["variants"].values():
        variant["model"]["num_hiddens"] = 16
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
