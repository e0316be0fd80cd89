"""The trained models as MLflow pyfunc models that take what a person has and give back what they want.

- `PhotoClassifier`: photos in (column `image`: encoded image bytes as read from a file, the same
  base64-encoded as JSON carries them, or uint8 arrays (H, W, 3) or (H, W) of any size), P(dog) and
  the label out. Each photo is decoded upright, resized and normalised exactly as the augment and
  evaluate stages do (by Pillow and torch: torchvision is never imported), `PREDICT_BATCH` photos at a
  time, so a request's memory does not grow with its rows. Its column is declared `Any` (`PHOTO_INPUT` says why).
- `TextGenerator`: a prefix and a length in (columns `prefix`, `length`), the text out (column
  `text`): the prefix and `length` greedy characters, as the evaluate stage's samples.
- `Translator`: English sentences in (column `sentence`), French out (column `translation`), by beam
  search with the param `beam_size` (default: the one the model was evaluated with).

A request they cannot answer (a row that is not a photo, a photo over the pixel limit, more than
`MAX_PHOTOS` photos or `MAX_REQUEST_BYTES` of them, a length or beam size out of range) is refused
whole with a `ServedInputError`: `mlflow models serve` answers it with HTTP 400 and one sentence
naming each bad row, and no row of that request is answered.

Each model carries its training stage's model file (weights, vocabulary, constructor arguments) as
an artifact, its preprocessing settings in its model config, and this package as code, so it loads
wherever torch and mlflow do. It runs on the GPU when there is one, else on the CPU.
`log_served_model` logs one to the active MLflow run, with a signature and an input example.
"""

from __future__ import annotations

import base64
import binascii
import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel  # not mlflow.pyfunc.PythonModel: mlflow's lazy `pyfunc` hides it from mypy
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType
from PIL import Image

from primer.data.images import PILLOW_MAX_PIXELS
from primer.errors import PrimerError
from primer.limits import MAX_BEAM_SIZE, MAX_LENGTH, MAX_PHOTOS, MAX_REQUEST_BYTES
from primer.serving.mlflow_messages import OwnMessage

PACKAGE = Path(__file__).resolve().parents[1]  # the whole primer package
PREDICT_BATCH = 16  # photos decoded and run through the CNN at once (the CNN at 128 px holds ~2.6 MB a photo)
# One batch at a time per server process: the scoring server runs concurrent requests in threads, and
# torch already spreads one batch over every core.
ONE_BATCH_AT_A_TIME = threading.Lock()

# The CNN's column `image` is declared `Any`, so `mlflow models serve` passes each row's JSON value
# through as it came, in every request format, and the model decodes the base64 itself. Declared
# `binary`, MLflow base64-decodes it only in the `dataframe_*` formats: in `inputs` and `instances` it
# hands over the bytes of the base64 text, so a valid JPEG arrives as "not an image" (mlflow/mlflow#11170);
# and it refuses a null, a number or text that is not base64 with its own message, which echoes the
# request and names no row. Optional, so a request without the column reaches the model too.
PHOTO_INPUT = Schema([ColSpec(AnyType(), "image", required=False)])
WANTED = "where a photo is wanted: an image file's bytes, base64-encoded in JSON"


class ServedInputError(PrimerError, OwnMessage):
    """A request a served model refuses, in one sentence; `mlflow models serve` answers it with 400,
    with that sentence alone (`OwnMessage`). `reasons` maps each bad row to what is wrong with it."""

    def __init__(self, sentence: str, reasons: dict[int, str] | None = None) -> None:
        self.reasons = reasons or {}
        super().__init__(sentence, error_code=INVALID_PARAMETER_VALUE)


def refuse_rows(reasons: dict[int, str], rows: int, held_by: dict[int, str] | None = None) -> None:
    """Raise one ServedInputError naming each bad row (at most five, then a count), with what it held
    where `held_by` says."""
    if not reasons:
        return
    held_by = held_by or {}
    named = "; ".join(f"row {i}: {held_by[i] + ', ' if i in held_by else ''}{why}"
                      for i, why in list(reasons.items())[:5])
    more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
    raise ServedInputError(f"{len(reasons)} of {rows} rows cannot be answered, so none was: {named}{more}.", reasons)


def whole(value, low: int, high: int) -> bool:
    """Whether `value` is a whole number from `low` to `high` (3 and 3.0 are; True, "3" and 3.5 are not)."""
    try:
        return not isinstance(value, (bool, str)) and float(value).is_integer() and low <= value <= high
    except (TypeError, ValueError):
        return False


def photo_values(model_input) -> Sequence:
    """The values of the column `image`, one per row, as they are held (a row's Python object is made when
    it is read); a request with none is refused in one sentence."""
    if isinstance(model_input, (pd.DataFrame, dict)):
        values = model_input["image"] if "image" in model_input else []
        if isinstance(values, (str, bytes)):  # one photo, not in a list
            values = [values]
        values = values.array if isinstance(values, pd.Series) else values
        others = [str(c) for c in (model_input.columns if isinstance(model_input, pd.DataFrame) else model_input)
                  if c != "image"]
    else:
        values, others = model_input, []
    if len(values) == 1 and isinstance(values[0], list):  # `{"inputs": [...]}`: MLflow gives one row holding the list
        values = values[0]
    if len(values) == 0:
        has = f" (it has the columns {', '.join(others)})" if others else ""
        raise ServedInputError(f"the request holds no photo{has}: send one row per photo, with the column 'image' "
                               "holding an image file's bytes, base64-encoded in JSON.")
    return values


def photo_of(value) -> bytes | bytearray | memoryview | np.ndarray:
    """A row's value as a photo for `photo_array`: image-file bytes (from base64 text, or as given) or an
    array; a value that cannot be one is a `PrimerError` saying what is wanted instead."""
    if isinstance(value, (bytes, bytearray, memoryview, np.ndarray)):
        return value
    if isinstance(value, str):
        try:  # MLflow's own input example wraps its base64 lines
            return base64.b64decode(value.encode("ascii").translate(None, b" \t\r\n"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise PrimerError(f"which is not base64, {WANTED}") from None
    raise PrimerError(WANTED)  # a null, a number, a list: `held` names it


def photo_size(value) -> int:
    """The bytes of the photo a row holds, without decoding it: base64 text holds 3 bytes per 4 characters."""
    if isinstance(value, str):
        return len(value) * 3 // 4
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return value.nbytes if isinstance(value, np.ndarray) else 0


def held(value) -> str:
    """What a request row held, in a few words: the photo's bytes where it is base64 text of some."""
    try:
        value = photo_of(value)
    except PrimerError:
        pass
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value):,} bytes starting {bytes(value[:8])!r}"
    if isinstance(value, np.ndarray):
        return f"an array {value.dtype} {value.shape}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"  # a missing value: pandas turns some JSON nulls into NaN
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float, np.number)):
        return f"the number {value}"
    return f"a {type(value).__name__} {str(value)[:40]}"


def why_not_a_photo(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, PrimerError):
        return str(exc).rstrip(".")
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can open"
    return f"a broken image ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"


def serving_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def column(model_input, name: str) -> list:
    """The values of column `name` of a DataFrame (or a dict of lists, or a list for the only column)."""
    if isinstance(model_input, pd.DataFrame):
        if name not in model_input.columns:
            raise ServedInputError(
                f"the input has no column '{name}' (it has {', '.join(map(str, model_input.columns))}).")
        return model_input[name].tolist()
    if isinstance(model_input, dict):
        if name not in model_input:
            raise ServedInputError(f"the input has no column '{name}' (it has {', '.join(map(str, model_input))}).")
        return list(model_input[name])
    return list(model_input)


with warnings.catch_warnings(record=True):  # swallowed: this class's own "add type hints" warning

    class ServedModel(PythonModel):
        """mlflow 3 warns at each PythonModel subclass whose `predict` has no type hints, inside its own
        `catch_warnings` (so no filter reaches it); ours take and return DataFrames, checked by the
        signature logged with them, so their subclasses' warnings are swallowed here."""

        input_schema: Schema | None = None  # the signature's inputs; None: inferred from the input example

        def __init_subclass__(cls, **kwargs) -> None:
            with warnings.catch_warnings(record=True):
                super().__init_subclass__(**kwargs)


class PhotoClassifier(ServedModel):
    input_schema = PHOTO_INPUT

    def load_context(self, context) -> None:
        from primer.evaluation.model_files import load_model

        saved, model = load_model(Path(context.artifacts["model_file"]), "CNN model")
        self.classes = saved["classes"]
        self.size = int(context.model_config["eval_size"])
        self.draft_oversample = int(context.model_config["draft_oversample"])
        self.max_pixels = int(context.model_config["max_image_pixels"])
        Image.MAX_IMAGE_PIXELS = max(self.max_pixels, PILLOW_MAX_PIXELS)  # Pillow's own check never refuses first
        self.device = serving_device()
        self.model = model.to(self.device)

    @torch.no_grad()
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from primer.vision.batch_augment import eval_batch
        from primer.vision.image_arrays import photo_array

        photos = photo_values(model_input)
        if len(photos) > MAX_PHOTOS:
            raise ServedInputError(f"the request holds {len(photos):,} photos, over the limit of {MAX_PHOTOS:,} "
                                   f"per request; send them in batches of at most {MAX_PHOTOS:,}.")
        size = sum(photo_size(p) for p in photos)
        if size > MAX_REQUEST_BYTES:
            raise ServedInputError(f"the request holds {size / 2**20:.1f} MiB of photos in {len(photos)} rows, "
                                   f"over the limit of {MAX_REQUEST_BYTES // 2**20} MiB per request; "
                                   "send them in smaller batches.")
        probabilities, reasons = [], {}
        for start in range(0, len(photos), PREDICT_BATCH):
            with ONE_BATCH_AT_A_TIME:
                arrays = []
                for i in range(start, min(start + PREDICT_BATCH, len(photos))):
                    try:
                        arrays.append(photo_array(photo_of(photos[i]), self.size, self.draft_oversample,
                                                  self.max_pixels, fast_jpeg=False))
                    except Exception as exc:  # anything a row can hold that is not a decodable photo
                        reasons[i] = why_not_a_photo(exc)
                if not reasons:  # once a row is bad none is answered: the rest are only checked
                    x = eval_batch(torch.from_numpy(np.stack(arrays)).to(self.device))  # (B, 3, S, S)
                    probabilities.append(torch.sigmoid(self.model(x)[0].float()).cpu())
        refuse_rows(reasons, len(photos), {i: held(photos[i]) for i in reasons})
        p = torch.cat(probabilities)
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
        refuse_rows({i: f"the length is {n!r}, but it must be a whole number from 1 to {MAX_LENGTH:,}"
                     for i, n in enumerate(lengths) if not whole(n, 1, MAX_LENGTH)}
                    | {i: "the prefix is empty" for i, p in enumerate(prefixes) if not str(p)}, len(prefixes))
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
        refuse_rows({i: "the sentence is empty" for i, s in enumerate(sentences) if not s.strip()}, len(sentences))
        beam_size = (params or {}).get("beam_size")
        beam_size = self.beam_size if beam_size is None else beam_size
        if not whole(beam_size, 1, MAX_BEAM_SIZE):
            raise ServedInputError(
                f"beam_size is {beam_size!r}, but it must be a whole number from 1 to {MAX_BEAM_SIZE}.")
        beam_size = int(beam_size)
        return pd.DataFrame({"translation": translate_sentences(self.model, sentences, self.src_vocab, self.tgt_vocab,
                                                                self.num_steps, beam_size, self.device)})


def served_signature(model_file: Path, python_model: PythonModel, input_example: pd.DataFrame,
                     model_config: dict | None = None, params: dict | None = None):
    """The signature of `python_model` over `model_file`, inferred from running it on `input_example`
    (its inputs are the model's `input_schema` where it declares one)."""
    from mlflow.models import ModelSignature, infer_signature

    loaded = type(python_model)()  # run on the example; `python_model` itself is pickled as it came
    context = mlflow.pyfunc.PythonModelContext(artifacts={"model_file": str(model_file)},
                                               model_config=model_config or {})
    loaded.load_context(context)
    inferred = infer_signature(input_example, loaded.predict(context, input_example, params), params)
    inputs = getattr(python_model, "input_schema", None) or inferred.inputs
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)


def log_model_args(model_file: Path, python_model: PythonModel, input_example: pd.DataFrame,
                   model_config: dict | None, signature, name: str = "model") -> dict:
    """Keyword arguments of `mlflow.pyfunc.log_model` for `python_model` over `model_file`: the model
    file as an artifact, this package as code, and the pinned torch and mlflow it ran with."""
    import torchvision

    return dict(name=name, python_model=python_model, artifacts={"model_file": str(model_file)},
                model_config=model_config, signature=signature, input_example=input_example, code_paths=[str(PACKAGE)],
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}", "pandas", "pillow", "numpy"])


def log_served_model(model_file: Path, python_model: PythonModel, input_example: pd.DataFrame,
                     model_config: dict | None = None, params: dict | None = None, name: str = "model"):
    """Log `python_model` over `model_file` to the active MLflow run; returns MLflow's ModelInfo."""
    signature = served_signature(model_file, python_model, input_example, model_config, params)
    return mlflow.pyfunc.log_model(
        **log_model_args(model_file, python_model, input_example, model_config, signature, name))
