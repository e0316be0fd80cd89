"""`primer`: use the trained models from the command line.

  primer classify PHOTO...                       P(dog) and the label of each photo, as a table
  primer generate --variant lstm "time traveller"  a language model's continuation of the prefix
  primer translate "i'm home ."                  the Transformer's French

Each reads the model the pipeline wrote under models/ (paths from dvc.yaml, preprocessing settings
from params.yaml, run from the repository root), or `--model URI` for an MLflow model such as
models:/primer-cnn@champion. The answers are the served pyfunc models' (primer/serving/served_models.py), so
they equal the evaluate stage's and `mlflow models serve`'s.

  primer sweep -S train_cnn.lr=1e-3,3e-4 train_cnn   a grid of DVC experiments on a Ray cluster (docs/cluster.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeVar

import yaml

from primer.errors import PrimerError
from primer.limits import MAX_BEAM_SIZE, MAX_LENGTH
from primer.params import Sections
from primer.stage import cli

P = TypeVar("P", bound=Sections)

DVC_YAML, PARAMS = Path("dvc.yaml"), Path("params.yaml")


def dvc_paths(dvc_yaml: Path = DVC_YAML) -> dict:
    """The `paths` of dvc.yaml's vars, where every output path is written once."""
    if not dvc_yaml.is_file():
        raise PrimerError(f"'{dvc_yaml}' not found; run primer from the repository root, or give --model.")
    for block in yaml.safe_load(dvc_yaml.read_text()).get("vars", []):
        if isinstance(block, dict) and "paths" in block:
            return block["paths"]
    raise PrimerError(f"'{dvc_yaml}' has no vars.paths; restore it from git.")


def params_file(*sections: str) -> dict:
    """params.yaml after its `profile`, checked to hold `sections` as mappings: its shape, checked before a
    command imports the torch modules whose definitions check each key (torch takes seconds to load), so a
    missing, empty or malformed file is refused at once, in one sentence naming it."""
    from ruamel.yaml import YAMLError

    from primer.params_file import apply_profile, parse_yaml, read_yaml

    if not PARAMS.is_file():
        raise PrimerError(f"'{PARAMS}' not found; run primer from the repository root, or give --model.")
    try:
        empty = parse_yaml(PARAMS.read_text(encoding="utf-8"), str(PARAMS)) is None
    except YAMLError:
        empty = False  # read_yaml names the line
    if empty:
        raise PrimerError(f"'{PARAMS}' is empty; restore it from git (`git checkout {PARAMS}`), or give --model.")
    raw = apply_profile(read_yaml(PARAMS), str(PARAMS))
    for name in sections:  # the sentences primer.params gives for them
        if name not in raw:
            raise PrimerError(f"{PARAMS}: key '{name}' is missing; add it (a section).")
        if not isinstance(raw[name], dict):
            raise PrimerError(f"{PARAMS}: '{name}' must be a mapping of keys, not {raw[name]!r}.")
    return raw


def params_of(sections: type[P]) -> P:
    """The sections of params.yaml that `sections` names, after its `profile`, checked key by key as the stages
    check them (after `params_file` checked the file's shape)."""
    from primer.params import load_params

    return load_params(PARAMS, sections)


def lm_variant(name: str) -> str:
    """`name` if it is one of params.yaml's train_lm.variants (each one a model file and a stage
    train_lm@NAME), else one sentence listing them."""
    from pydantic import TypeAdapter, ValidationError

    from primer.params import Name

    lm = params_file("train_lm")["train_lm"]
    if "variants" not in lm:
        raise PrimerError(f"{PARAMS}: key 'train_lm.variants' is missing; add it (a mapping of names to sections).")
    variants = lm["variants"]
    if not isinstance(variants, dict) or not variants:
        raise PrimerError(f"{PARAMS}: 'train_lm.variants' must be a mapping of names to sections, not {variants!r}.")
    known = ", ".join(map(str, variants))
    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError:
        raise PrimerError(f"--variant {name!r} is not a variant name (letters, digits and '_' only); give one of "
                          f"train_lm.variants in {PARAMS}: {known}.") from None
    if name not in variants:
        raise PrimerError(f"--variant {name!r} is not in train_lm.variants in {PARAMS}; give one of: {known}.")
    return name


def local_model(family: str, model_file: Path, stage: str, config: dict):
    """The served model `family` over a model file of the pipeline's, ready to predict."""
    if not model_file.is_file():
        raise PrimerError(f"{model_file} does not exist; run `dvc repro {stage}` first (or give --model).")
    import mlflow.pyfunc

    from primer.serving import served_models

    model = getattr(served_models, family)()
    context = mlflow.pyfunc.PythonModelContext(artifacts={"model_file": str(model_file)}, model_config=config)
    model.load_context(context)
    return lambda frame, params=None: model.predict(context, frame, params)


def mlflow_model(uri: str, family: str):
    """The MLflow model at `uri`, ready to predict, if it is of `family` (a class of served_models.py)."""
    import mlflow.pyfunc

    from primer.serving.registry import check_family

    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MlflowException, OSError: a wrong URI, a store that does not answer
        raise PrimerError(f"cannot load the MLflow model '{uri}' ({str(exc).splitlines()[0][:200]}); check the URI and "
                          "MLFLOW_TRACKING_URI.") from None
    check_family(model, uri, family)
    return lambda frame, params=None: model.predict(frame, params=params)


def why_unreadable(exc: Exception) -> str:
    """Why a photo was not classified: the file cannot be read, or the served model's reason for its row."""
    from primer.serving.served_models import ServedInputError, why_not_a_photo

    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a photo"
    if isinstance(exc, ServedInputError) and exc.reasons:
        return next(iter(exc.reasons.values()))
    return why_not_a_photo(exc)


def classify(args) -> int:
    if args.model:
        predict = mlflow_model(args.model, "PhotoClassifier")
    else:
        params_file("augment", "verify")
        from primer.training.cnn_training import ClassifierParams, classifier_config

        p = params_of(ClassifierParams)
        config = classifier_config(p.augment.eval_size, p.augment.draft_oversample, p.verify.max_image_pixels)
        predict = local_model("PhotoClassifier", Path(dvc_paths()["cnn_model"]), "train_cnn", config)
    import pandas as pd
    from tqdm import tqdm

    rows, failed = [], []
    for photo in tqdm(args.photos, desc="classify", unit="photo", disable=len(args.photos) < 10 or None,
                      file=sys.stderr):
        try:
            answer = predict(pd.DataFrame({"image": [Path(photo).read_bytes()]}))
        except Exception as exc:  # unreadable: missing, not an image, truncated
            failed.append(photo)
            print(f"primer classify: cannot read {photo} ({why_unreadable(exc)}); the other photos are classified.",
                  file=sys.stderr)
            continue
        rows.append((photo, float(answer.iloc[0, 0]), str(answer["label"].iloc[0])))
    if rows:
        width = max(len(str(p)) for p, _, _ in rows)
        print(f"{'photo':<{width}}  p_dog   label")
        for photo, probability, label in rows:
            print(f"{str(photo):<{width}}  {probability:.4f}  {label}")
    return 1 if failed else 0


def generate(args) -> int:
    if not args.prefix:
        raise PrimerError("the prefix is empty; give the text to continue, e.g. \"time traveller\".")
    if args.model:
        predict = mlflow_model(args.model, "TextGenerator")
    else:
        variant = lm_variant(args.variant)
        folder = Path(dvc_paths()["lm_models"])
        predict = local_model("TextGenerator", folder / f"{variant}.pt", f"train_lm@{variant}", {})
    import pandas as pd

    print(predict(pd.DataFrame({"prefix": [args.prefix], "length": [args.length]}))["text"].iloc[0])
    return 0


def translate(args) -> int:
    sentences = args.sentences
    if not sentences or not all(s.strip() for s in sentences):
        raise PrimerError("a sentence to translate is empty; give the English text, e.g. \"i'm home .\".")
    params = {"beam_size": args.beam_size} if args.beam_size is not None else None
    if args.model:
        predict = mlflow_model(args.model, "Translator")
    else:
        params_file("train_transformer")
        from primer.training.translation_training import TranslatorParams

        decoding = params_of(TranslatorParams).train_transformer
        predict = local_model("Translator", Path(dvc_paths()["transformer_model"]), "train_transformer",
                              decoding.model_dump())
    import pandas as pd

    for sentence, french in zip(sentences, predict(pd.DataFrame({"sentence": sentences}), params)["translation"]):
        print(f"{sentence} => {french}")
    return 0


def whole(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, else argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; give one from {low} to {high:,}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give a whole number from {low} to {high:,}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="primer", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    model_help = "an MLflow model URI instead of the file under models/, e.g. models:/primer-cnn@champion"

    c = commands.add_parser("classify", help="P(dog) and the label of each photo")
    c.add_argument("photos", nargs="+", help="image files (JPEG, PNG, ...), any size")
    c.add_argument("--model", help=model_help)
    c.set_defaults(run=classify)

    g = commands.add_parser("generate", help="continue a prefix with a language model")
    g.add_argument("prefix", help='the text to continue, e.g. "time traveller"')
    g.add_argument("--variant", default="lstm", help="which of train_lm.variants (default: lstm)")
    g.add_argument("--length", type=whole(1, MAX_LENGTH), default=100,
                   help=f"characters to add, 1 to {MAX_LENGTH:,} (default: 100)")
    g.add_argument("--model", help=model_help.replace("primer-cnn", "primer-lm-lstm"))
    g.set_defaults(run=generate)

    t = commands.add_parser("translate", help="English sentences to French")
    t.add_argument("sentences", nargs="+", help='English sentences, e.g. "i\'m home ."')
    t.add_argument("--beam-size", type=whole(1, MAX_BEAM_SIZE),
                   help=f"beams, 1 to {MAX_BEAM_SIZE} (default: train_transformer.beam_size, the evaluated one)")
    t.add_argument("--model", help=model_help.replace("primer-cnn", "primer-translator"))
    t.set_defaults(run=translate)

    commands.add_parser("sweep", add_help=False, help="a grid of DVC experiments on a Ray cluster; `primer sweep "
                        "--help` (primer/sweep/submit.py) tells the rest")
    return top


def run(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:  # its own options and --help
        from primer.sweep.submit import run as sweep

        return sweep(argv[1:])
    args = parser().parse_args(argv)
    code = args.run(args)
    if code:
        raise SystemExit(code)


def main() -> int:
    return cli(run)
