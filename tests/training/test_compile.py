"""Kernels and precision: the `compile` param of the training stages (YAML's bare `off`, bad values, a
compiled model that trains like the eager one and keeps its state dict keys, so checkpoints stay
interchangeable), TF32 and cuDNN's autotuner on CUDA, fused Adam where the parameters are on CUDA."""

from __future__ import annotations

import pytest
import torch
import yaml

from primer.devices import configure_device
from primer.errors import PrimerError
from primer.models.rnn import RNNLM
from primer.params import load_params
from primer.training.lm_training import check_lm_params
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer
from stages import train_cnn, train_lm, train_transformer

from helpers.repo import REPO


@pytest.mark.parametrize("stage", [train_cnn, train_lm, train_transformer])
def test_a_bare_off_in_yaml_is_off_and_true_is_refused(tmp_path, stage):
    section = next(k for k in stage.Params.model_fields if k.startswith("train_"))
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    assert yaml.safe_load(text)[section]["compile"] is False  # the repo's own file writes it bare: YAML's false
    path.write_text(text)
    assert getattr(load_params(path, stage.Params), section).compile == "off"
    path.write_text(text.replace("compile: off", "compile: true"))  # every stage's; this one reports its own
    with pytest.raises(PrimerError, match=rf"'{section}.compile' is True, "
                                          r"but it must be one of 'off', 'default', 'reduce-overhead'"):
        load_params(path, stage.Params)


def lm_params(**changes) -> train_lm.Params:
    """The repository's train_lm params with `changes` to its section."""
    params = load_params(REPO / "params.yaml", train_lm.Params)
    return params.model_copy(update={"train_lm": params.train_lm.model_copy(update=changes)})


def test_reduce_overhead_with_sequential_sampling_is_refused():
    params = lm_params(compile="reduce-overhead", sampling="sequential")
    with pytest.raises(PrimerError,
                       match="'train_lm.compile' is 'reduce-overhead'.*'train_lm.sampling' is 'sequential'"):
        check_lm_params("lstm", "corpus.txt", 100_000, params)


def test_a_compiled_model_trains_as_the_eager_one_and_keeps_its_state_dict_keys():
    torch.manual_seed(0)
    eager = RNNLM(12, "lstm", 16)
    compiled = RNNLM(12, "lstm", 16)
    compiled.load_state_dict(eager.state_dict())
    keys = list(eager.state_dict())
    assert compile_model(compiled, "default") is compiled and list(compiled.state_dict()) == keys
    x, y = torch.randint(0, 12, (6, 4, 6)), torch.randint(0, 12, (6, 4, 6))
    losses = []
    for model in (eager, compiled):
        history = fit(model, make_optimizer(model, "sgd", 1.0), lambda epoch: zip(x, y), lambda m, e: {"val/loss": 0.0},
                      FitConfig(2, grad_clip=1.0, log_every=10**9)).history
        losses.append([row["train/epoch_loss"] for row in history])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(PrimerError, match="compile mode is 'max'"):
        compile_model(eager, "max")


def test_cuda_gets_tf32_and_the_autotuner_and_the_cpu_nothing():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = False
        configure_device(torch.device("cpu"))
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
                    or torch.backends.cudnn.benchmark)
        configure_device(torch.device("cuda"))  # flags only: no CUDA device needed to set them
        assert (torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
                and torch.backends.cudnn.benchmark)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_adam_is_fused_where_the_parameters_are_on_the_cpu_or_cuda():
    model = torch.nn.Linear(3, 2)
    assert make_optimizer(model, "adam", 1e-3).param_groups[0]["fused"]  # CPU parameters: the fused kernel too
    assert not make_optimizer(model, "adamw", 1e-3, fused=False).param_groups[0]["fused"]
    assert not make_optimizer(torch.nn.Linear(3, 2, device="meta"), "adam", 1e-3).param_groups[0]["fused"]
    assert not make_optimizer(model, "sgd", 0.1).param_groups[0].get("fused")


def test_lm_samples_need_a_validation_to_be_written_at():
    with pytest.raises(PrimerError,
                       match=r"'train_lm.sample_every' \(50\) must be a multiple of 'train_lm.val_every' \(3\)"):
        check_lm_params("lstm", "corpus.txt", 100_000, lm_params(val_every=3, sample_every=50))
    check_lm_params("lstm", "corpus.txt", 100_000, lm_params(val_every=3, sample_every=51))
