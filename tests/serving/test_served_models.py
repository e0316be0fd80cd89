"""The pyfunc models (primer/serving/served_models.py), logged to a real SQLite MLflow store and loaded back
with `mlflow.pyfunc.load_model`, against the code the evaluate stage scores the same models with."""

from __future__ import annotations

import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from mlflow.types import ColSpec, Schema
from PIL import Image

from primer.errors import PrimerError
from primer.evaluation.translation_eval import translate_sentences
from primer.limits import MAX_REQUEST_BYTES
from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM, generate
from primer.serving.served_models import PhotoClassifier, ServedInputError, TextGenerator, Translator, log_served_model
from primer.text.corpus import Vocab
from primer.vision.batch_augment import eval_batch
from primer.vision.image_arrays import photo_array, resized_array

from helpers.images import photo, png_bomb
from helpers.saved_models import TEXT, save_tiny_translator

EVAL_SIZE = 32
CNN_CONFIG = {"eval_size": EVAL_SIZE, "draft_oversample": 2, "max_image_pixels": 89_478_485}  # as train_cnn logs it


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("served", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("served")
    yield tmp_path
    mlflow.end_run()


def logged(store, model_file, python_model, example, config=None, params=None):
    with mlflow.start_run():
        info = log_served_model(model_file, python_model, example, config, params)
    return mlflow.pyfunc.load_model(info.model_uri), info


def test_the_classifier_gives_the_evaluation_probability_for_photo_bytes_and_arrays(store):
    torch.manual_seed(0)
    args = {"arch": "primer", "width": 8}
    cnn = build_cnn(**args).eval()
    torch.save({"model": cnn.state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               store / "cnn.pt")
    files = []
    for i, (size, fmt) in enumerate([((80, 60), "JPEG"), ((50, 90), "PNG"), ((300, 200), "JPEG")]):
        files.append(store / f"photo{i}.{fmt.lower()}")
        photo(*size, seed=i).save(files[-1], fmt)
    grey = store / "grey.png"
    photo(40, 40, seed=9).convert("L").save(grey)
    files.append(grey)

    example = pd.DataFrame({"image": [files[0].read_bytes()]})
    model, info = logged(store, store / "cnn.pt", PhotoClassifier(), example, CNN_CONFIG)
    got = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))

    with torch.no_grad():  # the evaluate stage: the augment stage's arrays, eval_batch, sigmoid of the logits
        arrays = torch.from_numpy(np.stack([resized_array(f, EVAL_SIZE) for f in files]))
        expected = torch.sigmoid(cnn(eval_batch(arrays))[0]).numpy()
    assert list(got.columns) == ["p_dog", "label"]
    np.testing.assert_allclose(got["p_dog"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert got["label"].tolist() == ["Dog" if p >= 0.5 else "Cat" for p in expected]
    assert info.signature.inputs.to_dict() == [{"type": "any", "name": "image", "required": False}]

    pixels = [np.array(Image.open(f).convert("RGB")) for f in files[:2]] + [np.array(Image.open(grey))]
    direct = PhotoClassifier()  # arrays go through Python (a JSON request carries bytes as base64)
    direct.load_context(mlflow.pyfunc.PythonModelContext({"model_file": str(store / "cnn.pt")},
                                                         CNN_CONFIG))
    from_arrays = direct.predict(None, pd.DataFrame({"image": pixels}))
    # PNGs exact, JPEG decode
    np.testing.assert_allclose(from_arrays["p_dog"].to_numpy(), expected[[0, 1, 3]], atol=2e-3)
    assert from_arrays["p_dog"].to_numpy()[1] == pytest.approx(float(expected[1]), abs=1e-6)


def test_the_classifier_names_a_bad_array_in_one_sentence():
    with pytest.raises(PrimerError, match=r"uint8 of shape \(H, W, 3\) or \(H, W\), not float32 \(4, 4, 3\)"):
        photo_array(np.zeros((4, 4, 3), np.float32), 8)


def test_the_generator_writes_what_the_evaluation_samples(store):
    torch.manual_seed(1)
    vocab = Vocab(TEXT)
    args = {"vocab_size": len(vocab), "cell": "gru", "num_hiddens": 16, "num_layers": 1, "impl": "fused"}
    lm = RNNLM(**args).eval()
    torch.save({"model": lm.state_dict(), "model_args": args, "vocab": vocab.idx_to_token, "history": [],
                "best_epoch": 0}, store / "lm.pt")
    example = pd.DataFrame({"prefix": ["time traveller"], "length": [20]})
    model, info = logged(store, store / "lm.pt", TextGenerator(), example)
    got = model.predict(pd.DataFrame({"prefix": ["time traveller", "the "], "length": [30, 5]}))
    assert got["text"].tolist() == [generate(lm, vocab, "time traveller", 30), generate(lm, vocab, "the ", 5)]
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["prefix", "length"]


def test_the_translator_translates_as_the_evaluation_with_its_beam_size(store):
    torch.manual_seed(2)
    tf, src, tgt = save_tiny_translator(store / "tf.pt")
    example = pd.DataFrame({"sentence": ["I see 3."]})
    model, info = logged(store, store / "tf.pt", Translator(), example, {"num_steps": 8, "beam_size": 2},
                         {"beam_size": 2})
    sentences = ["I see 3.", "Go 7!", "i see 12 ."]
    got = model.predict(pd.DataFrame({"sentence": sentences}))
    assert got["translation"].tolist() == translate_sentences(tf, sentences, src, Vocab.from_tokens(tgt.idx_to_token),
                                                              8, 2, torch.device("cpu"))
    greedy = model.predict(pd.DataFrame({"sentence": sentences}), params={"beam_size": 1})
    assert greedy["translation"].tolist() == translate_sentences(tf, sentences, src, tgt, 8, 1, torch.device("cpu"))
    assert info.signature.params.to_dict() == [{"name": "beam_size", "default": 2, "shape": None, "type": "long"}]
    with pytest.raises(ServedInputError,
                       match=r"^1 of 2 rows cannot be answered, so none was: row 1: the sentence is empty\.$"):
        model.predict(pd.DataFrame({"sentence": ["I see 3.", "  "]}))
    for beam in (0, -1, 65):
        with pytest.raises(ServedInputError,
                           match=rf"^beam_size is {beam}, but it must be a whole number from 1 to 64\.$"):
            model.predict(pd.DataFrame({"sentence": sentences}), params={"beam_size": beam})


def test_the_generator_refuses_a_length_out_of_range_and_an_empty_prefix_naming_the_row(store):
    vocab = Vocab(TEXT)
    args = {"vocab_size": len(vocab), "cell": "gru", "num_hiddens": 16, "num_layers": 1, "impl": "fused"}
    torch.save({"model": RNNLM(**args).state_dict(), "model_args": args, "vocab": vocab.idx_to_token, "history": [],
                "best_epoch": 0}, store / "lm.pt")
    model, _ = logged(store, store / "lm.pt", TextGenerator(), pd.DataFrame({"prefix": ["the "], "length": [5]}))
    with pytest.raises(ServedInputError) as refused:
        model.predict(pd.DataFrame({"prefix": ["the ", "", "time ", "a"], "length": [5, 3, -5, 10_000_000]}))
    assert str(refused.value) == ("3 of 4 rows cannot be answered, so none was: row 2: the length is -5, but it must "
                                  "be a whole number from 1 to 10,000; row 3: the length is 10000000, but it must be a "
                                  "whole number from 1 to 10,000; row 1: the prefix is empty.")
    assert model.predict(pd.DataFrame({"prefix": ["the "], "length": [10_000]}))["text"][0].startswith("the ")


@pytest.fixture
def classifier(store):
    torch.manual_seed(0)
    args = {"arch": "primer", "width": 8}
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               store / "cnn.pt")
    example = pd.DataFrame({"image": [png_bomb(8, 8)]})
    model, _ = logged(store, store / "cnn.pt", PhotoClassifier(), example,
                      {"eval_size": EVAL_SIZE, "draft_oversample": 2, "max_image_pixels": 89_478_485})
    return model


def jpeg_of(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG")
    return out.getvalue()


def test_the_served_classifier_never_imports_torchvision(store):
    """torchvision holds ~160 MiB of each server process; the served CNN decodes and resizes without it."""
    import subprocess
    import sys

    args = {"arch": "primer", "width": 8}
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               store / "cnn.pt")
    photos = [jpeg_of(photo(90, 60, seed=1)), base64.b64encode(jpeg_of(photo(40, 50, seed=2))).decode()]
    (store / "photos.json").write_text(json.dumps([base64.b64encode(photos[0]).decode(), photos[1]]))
    script = f"""
import json, sys
import mlflow.pyfunc, pandas as pd
from primer.serving.served_models import PhotoClassifier
model = PhotoClassifier()
model.load_context(mlflow.pyfunc.PythonModelContext({{"model_file": {str(store / "cnn.pt")!r}}}, {CNN_CONFIG!r}))
out = model.predict(None, pd.DataFrame({{"image": json.load(open({str(store / "photos.json")!r}))}}))
print(len(out), "torchvision" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False"]


def test_the_classifier_refuses_a_png_bomb_from_its_header_without_decoding_it(classifier):
    with pytest.raises(ServedInputError) as refused:
        classifier.predict(pd.DataFrame({"image": [jpeg_of(photo(40, 30)), png_bomb(12000, 12000)]}))
    assert str(refused.value) == (
        "1 of 2 rows cannot be answered, so none was: row 1: 17,582 bytes starting b'\\x89PNG\\r\\n\\x1a\\n', "
        "the photo declares 12000 x 12000 = 144,000,000 pixels, over the limit of 89,478,485 "
        "(verify.max_image_pixels); it was not decoded: send a smaller photo, or raise the limit if you trust the "
        "source.")
    assert refused.value.reasons.keys() == {1}
    far_over = png_bomb(20000, 20000)  # over twice Pillow's own limit, which Pillow refuses at open
    with pytest.raises(ServedInputError, match=r"row 0: .* over the limit of 89,478,485 \(verify\.max_image_pixels\)"):
        classifier.predict(pd.DataFrame({"image": [far_over]}))


def test_the_classifier_names_each_row_that_is_not_a_photo(classifier):
    good = jpeg_of(photo(40, 30))
    with pytest.raises(ServedInputError) as refused:
        classifier.predict(pd.DataFrame({"image": [good, b"hello world", good, good[:200]]}))
    message = str(refused.value)
    assert message.startswith("2 of 4 rows cannot be answered, so none was: row 1: 11 bytes starting b'hello wo', "
                              "not an image Pillow can open; row 3: 200 bytes starting b'\\xff\\xd8\\xff")
    assert "\n" not in message and "Traceback" not in message
    assert len(classifier.predict(pd.DataFrame({"image": [good, good]}))) == 2


def test_the_classifier_refuses_a_request_over_its_size_before_decoding(classifier):
    big = [b"\0" * (MAX_REQUEST_BYTES // 2), b"\0" * (MAX_REQUEST_BYTES // 2 + 1)]
    with pytest.raises(ServedInputError, match=r"^the request holds 64\.0 MiB of photos in 2 rows, over the limit of "
                                               r"64 MiB per request; send them in smaller batches\.$"):
        classifier.predict(pd.DataFrame({"image": big}))


def test_a_photo_column_of_bytes_round_trips_through_json_as_the_server_reads_it(store):
    """What `mlflow models serve` does with a JSON body: base64 strings in a binary column are decoded."""
    jpeg = io.BytesIO()
    photo(40, 30).save(jpeg, "JPEG")
    body = json.dumps({"dataframe_records": [{"image": base64.b64encode(jpeg.getvalue()).decode()}]})
    parsed = infer_and_parse_data(json.loads(body), Schema([ColSpec("binary", "image")]))
    assert parsed["image"][0] == jpeg.getvalue()


def test_the_classifier_runs_the_cnn_in_batches_with_the_all_at_once_result(classifier):
    from primer.serving.served_models import PREDICT_BATCH

    rng = np.random.default_rng(3)
    photos = [rng.integers(0, 256, (int(rng.integers(8, 64)), int(rng.integers(8, 64)), 3), dtype=np.uint8)
              for _ in range(2 * PREDICT_BATCH + 7)]
    photos[5] = png_bytes_of(photos[5])  # bytes and arrays in one request
    cnn = classifier.unwrap_python_model().model
    batches = []
    hook = cnn.register_forward_hook(lambda _module, args, _out: batches.append(len(args[0])))
    try:
        got = classifier.predict(pd.DataFrame({"image": photos}))
    finally:
        hook.remove()
    assert batches == [PREDICT_BATCH, PREDICT_BATCH, 7]
    with torch.no_grad():  # every photo through the CNN at once, as predict did before it batched
        arrays = torch.from_numpy(np.stack([photo_array(p, EVAL_SIZE) for p in photos]))
        expected = torch.sigmoid(cnn(eval_batch(arrays))[0])
    assert torch.allclose(torch.from_numpy(got["p_dog"].to_numpy()).float(), expected, rtol=1e-5, atol=1e-6)
    assert got["label"].tolist() == ["Dog" if p >= 0.5 else "Cat" for p in expected.tolist()]


def png_bytes_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def test_the_classifier_refuses_more_photos_than_its_limit_before_decoding_any(classifier):
    from primer.limits import MAX_PHOTOS

    with pytest.raises(ServedInputError, match=rf"^the request holds {MAX_PHOTOS + 1:,} photos, over the limit of "
                                               rf"{MAX_PHOTOS:,} per request; send them in batches of at most "
                                               rf"{MAX_PHOTOS:,}\.$"):
        classifier.predict(pd.DataFrame({"image": [b"not decoded"] * (MAX_PHOTOS + 1)}))


def test_mlflow_still_hands_a_binary_column_over_as_base64_text_in_the_inputs_format():
    """Why the served CNN declares its column `Any` and decodes base64 itself (`PHOTO_INPUT` in
    primer/serving/served_models.py): this fails once MLflow base64-decodes a `binary` column in the `inputs`
    format too (mlflow/mlflow#11170)."""
    text = base64.b64encode(jpeg_of(photo(20, 10))).decode()
    parsed = infer_and_parse_data({"inputs": {"image": [text]}}, Schema([ColSpec("binary", "image")]))
    assert bytes(parsed["image"][0]) == text.encode()
