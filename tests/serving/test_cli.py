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
from primer.serving.served_models import PhotoClassifier, log_served_model
from primer.text.corpus import Vocab
from primer.vision.batch_augment import eval_batch
from primer.vision.image_arrays import resized_array

from conftest import REPO, photo, png_bomb
from test_evaluate import TEXT, save_tiny_translator

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
        ("augment: {eval_size: 32}\n",
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


def test_classify_with_the_registered_champion_answers_as_with_the_file(repo, monkeypatch):
    root, _ = repo
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("primer", artifact_location=(root / "art").as_uri()))
    pet = root / "pet.jpg"
    photo(64, 48, seed=3).save(pet)
    with mlflow.start_run() as run:
        log_served_model(root / "models/cnn.pt", PhotoClassifier(), pd.DataFrame({"image": [pet.read_bytes()]}),
                         {"eval_size": 32, "draft_oversample": 2, "max_image_pixels": 89_478_485})
    register(mlflow, "primer-cnn", run.info.run_id, "test_acc", 0.5, True)
    mlflow.end_run()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    from_file = primer(root, "classify", "pet.jpg")
    from_registry = primer(root, "classify", "--model", "models:/primer-cnn@champion", "pet.jpg", env=env)
    assert from_registry.returncode == 0, from_registry.stderr
    assert from_registry.stdout == from_file.stdout
    wrong = primer(root, "classify", "--model", "models:/primer-nothing@champion", "pet.jpg", env=env)
    assert wrong.returncode == 1 and wrong.stderr.startswith(
        "primer: error: cannot load the MLflow model 'models:/primer-nothing@champion'")
