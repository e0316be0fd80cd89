"""The `primer` console script (primer/cli.py) run for real from a folder laid out like the repository:
its answers equal the served models' and the evaluation code's, and every mistake is one sentence."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from primer.evaluation.translation_eval import translate_sentences
from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM, generate
from primer.serving.registry import register
from primer.serving.served_models import PhotoClassifier, TextGenerator, Translator, log_served_model
from primer.text.corpus import Vocab
from primer.vision.batch_augment import eval_batch
from primer.vision.image_arrays import resized_array

from helpers.images import photo, png_bomb
from helpers.repo import REPO
from helpers.saved_models import TEXT, save_tiny_translator

PRIMER = shutil.which("primer", path=str(Path(sys.executable).parent))


@pytest.fixture
def repo(tmp_path):
    """dvc.yaml and a params.yaml (eval size 32, beam 2, 8 steps), and tiny models where dvc.yaml puts them."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["augment"]["eval_size"] = 32
    params["train_transformer"].update(num_steps=8, beam_size=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models/lm").mkdir(parents=True)
    torch.manual_seed(0)
    args = {"arch": "primer", "width": 8}
    cnn = build_cnn(**args).eval()
    torch.save({"model": cnn.state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               tmp_path / "models/cnn.pt")
    vocab = Vocab(TEXT)
    lm_args = {"vocab_size": len(vocab), "cell": "lstm", "num_hiddens": 16, "num_layers": 1, "impl": "fused"}
    lm = RNNLM(**lm_args).eval()
    torch.save({"model": lm.state_dict(), "model_args": lm_args, "vocab": vocab.idx_to_token, "history": [],
                "best_epoch": 0}, tmp_path / "models/lm/lstm.pt")
    tf, src, tgt = save_tiny_translator(tmp_path / "models/transformer.pt")
    return tmp_path, {"cnn": cnn, "lm": (lm, vocab), "tf": (tf, src, tgt)}


def primer(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PRIMER, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


# The `primer` script's main() in a fresh interpreter that then says whether torch was imported.
MAIN_THEN_TORCH = ("import sys; from primer.cli import main; sys.argv = ['primer', *sys.argv[1:]]; code = main(); "
                   "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")


def primer_main(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MAIN_THEN_TORCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def registered(name: str, served, model_file: Path, example: dict, config: dict | None = None) -> None:
    """`served` over `model_file` logged to a run of the store MLFLOW_TRACKING_URI names and registered as
    `name`@champion, as train_* and evaluate do."""
    with mlflow.start_run() as run:
        log_served_model(model_file, served, pd.DataFrame(example), config)
    register(mlflow, name, run.info.run_id, "metric", 1.0, True)
    mlflow.end_run()


@pytest.fixture
def registry(repo, monkeypatch):
    """The repo's tiny models registered in a SQLite MLflow store: (repo, models, the env that names the store)."""
    root, models = repo
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("primer", artifact_location=(root / "art").as_uri()))
    photo(64, 48, seed=3).save(root / "pet.jpg")
    registered("primer-cnn", PhotoClassifier(), root / "models/cnn.pt", {"image": [(root / "pet.jpg").read_bytes()]},
               {"eval_size": 32, "draft_oversample": 2, "max_image_pixels": 89_478_485})
    registered("primer-lm-lstm", TextGenerator(), root / "models/lm/lstm.pt", {"prefix": ["the"], "length": [3]})
    registered("primer-translator", Translator(), root / "models/transformer.pt", {"sentence": ["go ."]},
               {"num_steps": 8, "beam_size": 2})
    return root, models, {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def test_classify_prints_p_dog_per_photo_and_names_the_unreadable_one(repo):
    root, models = repo
    good = []
    for i, fmt in enumerate(["jpg", "png"]):
        good.append(root / f"pet{i}.{fmt}")
        photo(90, 70, seed=i).save(good[-1])
    (root / "broken.jpg").write_bytes(b"not a photo")
    done = primer(root, "classify", good[0].name, "broken.jpg", good[1].name)
    assert done.returncode == 1
    assert done.stderr.strip() == ("primer classify: cannot read broken.jpg (not an image Pillow can open); "
                                   "the other photos are classified.")
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["photo", "p_dog", "label"]
    with torch.no_grad():
        expected = torch.sigmoid(
            models["cnn"](eval_batch(torch.from_numpy(np.stack([resized_array(p, 32) for p in good]))))[0])
    assert [r.split()[0] for r in rows] == [p.name for p in good]
    assert [float(r.split()[1]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-4)
    assert [r.split()[2] for r in rows] == ["Dog" if p >= 0.5 else "Cat" for p in expected.tolist()]


def test_generate_and_translate_answer_as_the_evaluation(repo):
    root, models = repo
    lm, vocab = models["lm"]
    done = primer(root, "generate", "--variant", "lstm", "--length", "25", "time traveller")
    assert done.returncode == 0, done.stderr
    assert done.stdout == generate(lm, vocab, "time traveller", 25) + "\n"
    tf, src, tgt = models["tf"]
    done = primer(root, "translate", "I see 3.", "go 4 !")
    assert done.returncode == 0, done.stderr
    french = translate_sentences(tf, ["I see 3.", "go 4 !"], src, tgt, 8, 2, torch.device("cpu"))
    assert done.stdout.splitlines() == [f"I see 3. => {french[0]}", f"go 4 ! => {french[1]}"]


def test_mistakes_are_one_sentence_each(repo):
    root, _ = repo
    (root / "models/cnn.pt").unlink()
    for args, sentence in [
        (["classify", "x.jpg"],
         "primer: error: models/cnn.pt does not exist; run `dvc repro train_cnn` first (or give --model)."),
        (["generate", "--variant", "gru", "the"],
         "primer: error: models/lm/gru.pt does not exist; run `dvc repro train_lm@gru` first (or give --model)."),
        (["translate", "  "],
         "primer: error: a sentence to translate is empty; give the English text, e.g. \"i'm home .\"."),
        (["generate", ""], "primer: error: the prefix is empty; give the text to continue, e.g. \"time traveller\"."),
    ]:
        done = primer(root, *args)
        assert (done.returncode, done.stderr.strip()) == (1, sentence)


def test_a_broken_params_file_is_one_sentence_naming_it(repo):
    root, _ = repo
    for text, sentence in [
        ("- a\n- b\n", "params file 'params.yaml' must hold a mapping of sections, not list."),
        ("42\n", "params file 'params.yaml' must hold a mapping of sections, not int."),
        ("augment: {eval_size: 32\n",
         "params file 'params.yaml' is not valid YAML at line 2: expected ',' or '}', but got '<stream end>'."),
        ("augment: {eval_size: 32}\nverify: {max_image_pixels: 100}\n",
         "params.yaml: key 'augment.draft_oversample' is missing; add it (an integer from 0 to 8)."),
        ("augment: {eval_size: 2, draft_oversample: 2}\nverify: {max_image_pixels: 100}\n",
         "params.yaml: 'augment.eval_size' is 2, but it must be an integer from 8 to 4096."),
    ]:
        (root / "params.yaml").write_text(text)
        done = primer(root, "classify", "x.jpg")
        assert (done.returncode, done.stderr.strip()) == (1, f"primer: error: {sentence}"), text
    (root / "params.yaml").write_text("[1, 2]\n")
    done = primer(root, "translate", "go .")
    assert (done.returncode, done.stderr.strip()) == (1, "primer: error: params file 'params.yaml' must hold a "
                                                         "mapping of sections, not list.")
    (root / "params.yaml").unlink()
    done = primer(root, "translate", "go .")
    assert (done.returncode, done.stderr.strip()) == (1, "primer: error: 'params.yaml' not found; run primer from the "
                                                         "repository root, or give --model.")


def test_arguments_out_of_range_are_refused_by_argparse_in_one_line(repo):
    root, _ = repo
    for args, sentence in [
        (["translate", "--beam-size", "-1", "go ."],
         "argument --beam-size: -1 is out of range; give a whole number from 1 to 64"),
        (["translate", "--beam-size", "0", "go ."],
         "argument --beam-size: 0 is out of range; give a whole number from 1 to 64"),
        (["translate", "--beam-size", "two", "go ."],
         "argument --beam-size: 'two' is not a whole number; give one from 1 to 64"),
        (["generate", "--length", "-5", "the"],
         "argument --length: -5 is out of range; give a whole number from 1 to 10,000"),
        (["generate", "--length", "0", "the"],
         "argument --length: 0 is out of range; give a whole number from 1 to 10,000"),
        (["generate", "--length", "10000000", "the"],
         "argument --length: 10000000 is out of range; give a whole number from 1 to 10,000"),
    ]:
        done = primer(root, *args)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == f"primer {args[0]}: error: {sentence}"
    done = primer(root, "translate", "--beam-size", "1", "go .")
    assert done.returncode == 0, done.stderr


def test_classify_refuses_a_png_bomb_at_the_params_limit_and_classifies_the_rest(repo):
    root, _ = repo
    (root / "bomb.png").write_bytes(png_bomb(12000, 12000))
    photo(60, 40).save(root / "pet.jpg")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["verify"]["max_image_pixels"] = 2000  # 60 x 40 = 2,400 is over it too
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = primer(root, "classify", "bomb.png", "pet.jpg")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "primer classify: cannot read bomb.png (the photo declares "
        "12000 x 12000 = 144,000,000 pixels, over the limit of 2,000 (verify.max_image_pixels); it was not decoded: "
        "send a smaller photo, or raise the limit if you trust the source); the other photos are classified.",
        "primer classify: cannot read pet.jpg (the photo declares 60 x 40 = 2,400 pixels, over the limit of 2,000 "
        "(verify.max_image_pixels); it was not decoded: send a smaller photo, or raise the limit if you trust the "
        "source); the other photos are classified."]
    params["verify"]["max_image_pixels"] = 89_478_485
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = primer(root, "classify", "bomb.png", "pet.jpg")
    assert done.returncode == 1 and [r.split()[0] for r in done.stdout.splitlines()[1:]] == ["pet.jpg"]
    assert "144,000,000 pixels, over the limit of 89,478,485" in done.stderr and "Warning" not in done.stderr


def test_help_explains_each_command():
    done = subprocess.run([PRIMER, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and all(c in done.stdout for c in ("classify", "generate", "translate", "models:/"))


def test_the_registered_champions_answer_as_the_files(registry):
    root, _, env = registry
    from_file = primer(root, "classify", "pet.jpg")
    from_registry = primer(root, "classify", "--model", "models:/primer-cnn@champion", "pet.jpg", env=env)
    assert from_registry.returncode == 0, from_registry.stderr
    assert from_registry.stdout == from_file.stdout
    from_file = primer(root, "generate", "--length", "12", "time")
    from_registry = primer(root, "generate", "--length", "12", "--model", "models:/primer-lm-lstm@champion", "time",
                           env=env)
    assert from_registry.returncode == 0, from_registry.stderr
    assert from_registry.stdout == from_file.stdout
    wrong = primer(root, "classify", "--model", "models:/primer-nothing@champion", "pet.jpg", env=env)
    assert wrong.returncode == 1 and wrong.stderr.startswith(
        "primer: error: cannot load the MLflow model 'models:/primer-nothing@champion'")


def test_a_registered_model_of_another_family_is_one_sentence_naming_both(registry):
    root, _, env = registry
    for args, sentence in [
        (["translate", "--model", "models:/primer-cnn@champion", "hi ."],
         "models:/primer-cnn@champion is primer's cat/dog classifier; `primer translate` needs a translator such "
         "as models:/primer-translator@champion."),
        (["generate", "--model", "models:/primer-translator@champion", "time"],
         "models:/primer-translator@champion is primer's English-French translator; `primer generate` needs a "
         "language model such as models:/primer-lm-lstm@champion."),
        (["classify", "--model", "models:/primer-lm-lstm@champion", "pet.jpg"],
         "models:/primer-lm-lstm@champion is a primer language model; `primer classify` needs a cat/dog classifier "
         "such as models:/primer-cnn@champion."),
    ]:
        done = primer(root, *args, env=env)
        assert (done.returncode, done.stdout, done.stderr.strip()) == (1, "", f"primer: error: {sentence}"), args


def test_a_bad_params_file_is_refused_before_torch_is_imported(repo):
    root, _ = repo
    for text, args, sentence in [
        ("", ["classify", "x.jpg"], "'params.yaml' is empty; restore it from git (`git checkout params.yaml`), or "
                                    "give --model."),
        ("# every key was here\n\n", ["translate", "go ."],
         "'params.yaml' is empty; restore it from git (`git checkout params.yaml`), or give --model."),
        ("- a\n", ["generate", "the"], "params file 'params.yaml' must hold a mapping of sections, not list."),
        ("augment: {eval_size: 32\n", ["classify", "x.jpg"],
         "params file 'params.yaml' is not valid YAML at line 2: expected ',' or '}', but got '<stream end>'."),
        ("augment: {eval_size: 32}\n", ["classify", "x.jpg"],
         "params.yaml: key 'verify' is missing; add it (a section)."),
        ("augment: 32\nverify: {}\n", ["classify", "x.jpg"],
         "params.yaml: 'augment' must be a mapping of keys, not 32."),
        ("train_lm: {epochs: 5}\n", ["translate", "go ."],
         "params.yaml: key 'train_transformer' is missing; add it (a section)."),
        ("train_lm: {epochs: 5}\n", ["generate", "the"],
         "params.yaml: key 'train_lm.variants' is missing; add it (a mapping of names to sections)."),
        ("train_lm: {variants: [lstm]}\n", ["generate", "the"],
         "params.yaml: 'train_lm.variants' must be a mapping of names to sections, not ['lstm']."),
    ]:
        (root / "params.yaml").write_text(text)
        done = primer_main(root, *args)
        assert (done.returncode, done.stderr.strip(), done.stdout) == (1, f"primer: error: {sentence}", "no torch\n"), \
            text
    (root / "params.yaml").unlink()
    done = primer_main(root, "classify", "x.jpg")
    assert (done.returncode, done.stderr.strip(), done.stdout) == (
        1, "primer: error: 'params.yaml' not found; run primer from the repository root, or give --model.",
        "no torch\n")


def test_generate_takes_only_a_variant_of_train_lm_variants(repo):
    root, _ = repo
    known = ", ".join(yaml.safe_load((root / "params.yaml").read_text())["train_lm"]["variants"])
    for variant, sentence in [
        ("transformer", f"--variant 'transformer' is not in train_lm.variants in params.yaml; give one of: {known}."),
        ("../cnn", "--variant '../cnn' is not a variant name (letters, digits and '_' only); give one of "
                   f"train_lm.variants in params.yaml: {known}."),
        ("lm/lstm", "--variant 'lm/lstm' is not a variant name (letters, digits and '_' only); give one of "
                    f"train_lm.variants in params.yaml: {known}."),
    ]:
        done = primer_main(root, "generate", "--variant", variant, "time")
        assert (done.returncode, done.stderr.strip(), done.stdout) == (1, f"primer: error: {sentence}", "no torch\n")
