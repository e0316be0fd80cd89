"""The trained models as MLflow pyfunc models that take what a person has and give back what they want.

- `PhotoClassifier`: photos in (column `image`: encoded image bytes as read from a file, or uint8
  arrays (H, W, 3) or (H, W) of any size), P(dog) and the label out. Each photo is decoded upright,
  resized and normalised exactly as the augment and evaluate stages do.
- `TextGenerator`: a prefix and a length in (columns `prefix`, `length`), the text out (column
  `text`): the prefix and `length` greedy characters, as the evaluate stage's samples.
- `Translator`: English sentences in (column `sentence`), French out (column `translation`), by beam
  search with the param `beam_size` (default: the one the model was evaluated with).

Each model carries its training stage's model file (weights, vocabulary, constructor arguments) as
an artifact, its preprocessing settings in its model config, and this package as code, so it loads
wherever torch and mlflow do. It runs on the GPU when there is one, else on the CPU.
`log_served_model` logs one to the active MLflow run, with a signature and an input example.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from primer.errors import PrimerError

PACKAGE = Path(__file__).resolve().parents[1]  # the whole primer package


def serving_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def column(model_input, name: str) -> list:
    """The values of column `name` of a DataFrame (or a dict of lists, or a list for the only column)."""
    if isinstance(model_input, pd.DataFrame):
        if name not in model_input.columns:
            raise PrimerError(f"the input has no column '{name}' (it has {', '.join(map(str, model_input.columns))}).")
        return model_input[name].tolist()
    if isinstance(model_input, dict):
        return list(model_input[name])
    return list(model_input)


with warnings.catch_warnings(record=True):  # swallowed: this class's own "add type hints" warning

    class ServedModel(mlflow.pyfunc.PythonModel):
        """mlflow 3 warns at each PythonModel subclass whose `predict` has no type hints, inside its own
        `catch_warnings` (so no filter reaches it); ours take and return DataFrames, checked by the
        signature logged with them, so their subclasses' warnings are swallowed here."""

        def __init_subclass__(cls, **kwargs) -> None:
            with warnings.catch_warnings(record=True):
                super().__init_subclass__(**kwargs)


class PhotoClassifier(ServedModel):
    def load_context(self, context) -> None:
        from primer.evaluation.model_files import load_model

        saved, model = load_model(Path(context.artifacts["model_file"]), "CNN model")
        self.classes = saved["classes"]
        self.size = int(context.model_config["eval_size"])
        self.draft_oversample = int(context.model_config["draft_oversample"])
        self.device = serving_device()
        self.model = model.to(self.device)

    @torch.no_grad()
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from primer.vision.batch_augment import eval_batch
        from primer.vision.image_arrays import photo_array

        photos = column(model_input, "image")
        arrays = np.stack([photo_array(p, self.size, self.draft_oversample) for p in photos])
        x = eval_batch(torch.from_numpy(arrays).to(self.device))
        p = torch.sigmoid(self.model(x)[0].float()).cpu()
        return pd.DataFrame({f"p_{self.classes[1].lower()}": p.numpy().astype(np.float64),
                             "label": [self.classes[int(v >= 0.5)] for v in p.tolist()]})


class TextGenerator(ServedModel):
    def load_context(self, context) -> None:
        from primer.evaluation.model_files import load_model
        from primer.text.corpus import Vocab

        saved, model = load_model(Path(context.artifacts["model_file"]), "language model")
        self.vocab = Vocab.from_tokens(saved["vocab"])
        self.model = model.to(serving_device())

    @torch.no_grad()
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from primer.models.rnn import generate

        prefixes, lengths = column(model_input, "prefix"), column(model_input, "length")
        return pd.DataFrame({"text": [generate(self.model, self.vocab, str(prefix), int(length))
                                      for prefix, length in zip(prefixes, lengths)]})


class Translator(ServedModel):
    def load_context(self, context) -> None:
        from primer.evaluation.model_files import load_model
        from primer.text.corpus import Vocab

        saved, model = load_model(Path(context.artifacts["model_file"]), "Transformer model")
        self.src_vocab, self.tgt_vocab = Vocab.from_tokens(saved["src_vocab"]), Vocab.from_tokens(saved["tgt_vocab"])
        self.num_steps = int(context.model_config["num_steps"])
        self.beam_size = int(context.model_config["beam_size"])
        self.device = serving_device()
        self.model = model.to(self.device)

    @torch.no_grad()
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from primer.evaluation.translation_eval import translate_sentences

        sentences = [str(s) for s in column(model_input, "sentence")]
        if not all(s.strip() for s in sentences):
            raise PrimerError("a sentence to translate is empty; give the English text, e.g. \"i'm home .\".")
        beam_size = int((params or {}).get("beam_size") or self.beam_size)
        return pd.DataFrame({"translation": translate_sentences(self.model, sentences, self.src_vocab, self.tgt_vocab,
                                                                self.num_steps, beam_size, self.device)})


def served_signature(model_file: Path, python_model: mlflow.pyfunc.PythonModel, input_example: pd.DataFrame,
                     model_config: dict | None = None, params: dict | None = None):
    """The signature of `python_model` over `model_file`, inferred from running it on `input_example`."""
    from mlflow.models import infer_signature

    loaded = type(python_model)()  # run on the example; `python_model` itself is pickled as it came
    context = mlflow.pyfunc.PythonModelContext(artifacts={"model_file": str(model_file)}, model_config=model_config or {})
    loaded.load_context(context)
    return infer_signature(input_example, loaded.predict(context, input_example, params), params)


def log_model_args(model_file: Path, python_model: mlflow.pyfunc.PythonModel, input_example: pd.DataFrame,
                   model_config: dict | None, signature, name: str = "model") -> dict:
    """Keyword arguments of `mlflow.pyfunc.log_model` for `python_model` over `model_file`: the model
    file as an artifact, this package as code, and the pinned torch and mlflow it ran with."""
    import torchvision

    return dict(name=name, python_model=python_model, artifacts={"model_file": str(model_file)}, model_config=model_config,
                signature=signature, input_example=input_example, code_paths=[str(PACKAGE)],
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}", "pandas", "pillow", "numpy"])


def log_served_model(model_file: Path, python_model: mlflow.pyfunc.PythonModel, input_example: pd.DataFrame,
                     model_config: dict | None = None, params: dict | None = None, name: str = "model"):
    """Log `python_model` over `model_file` to the active MLflow run; returns MLflow's ModelInfo."""
    signature = served_signature(model_file, python_model, input_example, model_config, params)
    return mlflow.pyfunc.log_model(**log_model_args(model_file, python_model, input_example, model_config, signature, name))
