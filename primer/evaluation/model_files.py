"""The model files the training stages write (`models/*.pt`), read back: each kind's keys, its model
rebuilt and loaded, and one sentence naming the file and the stage to rerun for anything else."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, overload

import torch

from primer.errors import PrimerError
from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM
from primer.models.transformer import Seq2SeqTransformer
from primer.training.checkpoint import load_torch_file

# kind: (keys its training stage saves and evaluate reads, the model's constructor, that stage)
MODEL_FILES: dict[str, tuple[set[str], Callable[..., torch.nn.Module], str]] = {
    "CNN model": ({"model", "model_args", "classes"}, build_cnn, "train_cnn"),
    "language model": ({"model", "model_args", "vocab", "history", "best_epoch"}, RNNLM, "train_lm@{stem}"),
    "Transformer model": ({"model", "model_args", "src_vocab", "tgt_vocab"}, Seq2SeqTransformer, "train_transformer"),
}


@overload
def load_model(path: Path, kind: Literal["CNN model"]) -> tuple[dict, torch.nn.Module]: ...


@overload
def load_model(path: Path, kind: Literal["language model"]) -> tuple[dict, RNNLM]: ...


@overload
def load_model(path: Path, kind: Literal["Transformer model"]) -> tuple[dict, Seq2SeqTransformer]: ...


def load_model(path: Path, kind: str) -> tuple[dict, torch.nn.Module]:
    """The dict a training stage saved at `path` and its model rebuilt from it, on the CPU in eval mode.

    A missing, unreadable, other-kind or mismatched file is a PrimerError naming it and the stage to rerun.
    """
    keys, build, stage = MODEL_FILES[kind]
    if not path.is_file():
        raise PrimerError(f"{kind} {path} does not exist; run its training stage first (dvc repro).")
    fix = f"rerun `dvc repro {stage.format(stem=path.stem)}`"
    saved = load_torch_file(path, fix)
    if not isinstance(saved, dict) or not keys <= saved.keys():
        raise PrimerError(f"{path} is not a {kind} file ({_what_it_holds(saved, keys)}); {fix}.")
    try:
        model = build(**saved["model_args"])
    except TypeError as exc:  # an argument this code's model does not take, or lacks
        raise PrimerError(f"{path} does not match the current {kind} code ({exc}); {fix}.") from None
    except (ValueError, KeyError, PrimerError):  # a value it does not accept, e.g. an unknown arch
        raise PrimerError(f"{path} does not match the current {kind} code (its model_args hold a value it rejects); "
                          f"{fix}.") from None
    try:
        model.load_state_dict(saved["model"])
    except (RuntimeError, TypeError, AttributeError):  # missing, unexpected or mis-shaped weights
        raise PrimerError(f"{path} does not match the current {kind} code (its weights do not fit the model "
                          f"its model_args build); {fix}.") from None
    return saved, model.eval()


def _what_it_holds(saved, keys: set) -> str:
    if not isinstance(saved, dict):
        return f"it holds a {type(saved).__name__}"
    other = next((kind for kind, (its_keys, _, _) in MODEL_FILES.items() if its_keys <= saved.keys()), None)
    return f"it holds a {other}" if other else "it lacks " + ", ".join(sorted(keys - saved.keys()))
