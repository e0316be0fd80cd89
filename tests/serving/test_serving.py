"""`mlflow models serve -m models:/NAME@champion --env-manager local` for real, on 127.0.0.1: a photo
in (base64 in JSON, as docs/models.md's curl line sends it), P(dog) out; a sentence in, French out."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from primer.models.cnn import build_cnn
from primer.serving.registry import register
from primer.serving.served_models import PhotoClassifier, Translator, log_served_model
from primer.vision.image_arrays import png_bytes

from helpers.environment import venv_env
from helpers.images import photo, png_bomb
from helpers.repo import SHARED_DATASETS
from helpers.saved_models import save_tiny_translator

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.create_experiment("primer", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("primer")
    torch.manual_seed(0)
    args = {"arch": "primer", "width": 8}
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": []},
               tmp_path / "cnn.pt")
    save_tiny_translator(tmp_path / "tf.pt")
    with mlflow.start_run() as cnn_run:
        log_served_model(tmp_path / "cnn.pt", PhotoClassifier(),
                         pd.DataFrame({"image": [png_bytes(np.zeros((8, 8, 3), np.uint8))]}),
                         {"eval_size": 32, "draft_oversample": 2, "max_image_pixels": 89_478_485})
    with mlflow.start_run() as tf_run:
        log_served_model(tmp_path / "tf.pt", Translator(), pd.DataFrame({"sentence": ["I see 3."]}),
                         {"num_steps": 8, "beam_size": 2}, {"beam_size": 2})
    register(mlflow, "primer-cnn", cnn_run.info.run_id, "test_acc", 0.5, True)
    register(mlflow, "primer-translator", tf_run.info.run_id, "test_bleu", 0.1, True)
    yield tmp_path, uri
    mlflow.end_run()


def serve(model_uri: str, tracking_uri: str, cwd: Path):
    port = free_port()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    env = {**venv_env(cwd), "MLFLOW_TRACKING_URI": tracking_uri}  # the venv's bin on PATH: the server runs uvicorn
    server = subprocess.Popen([mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, f"http://127.0.0.1:{port}/invocations"
        except OSError:
            if server.poll() is not None:
                raise AssertionError(server.stdout.read().decode(errors="replace")[-3000:])
            time.sleep(0.5)
    server.kill()
    raise AssertionError("mlflow models serve did not answer /ping within 120 s")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def refused(url: str, body: dict) -> tuple[int, dict]:
    """The status and JSON body of a request the server refuses."""
    try:
        post(url, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    raise AssertionError("the server answered a request it should refuse")


def stop(server) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def test_the_champion_cnn_answers_a_photo_over_http_with_p_dog(registry):
    tmp_path, uri = registry
    real = sorted((SHARED_DATASETS / "petimages/Dog").glob("*.jpg"))[:1]  # a real photo where ../shared has them
    jpeg = real[0] if real else tmp_path / "dog.jpg"
    if not real:
        photo(120, 90, seed=4).save(jpeg)
    server, url = serve("models:/primer-cnn@champion", uri, tmp_path)
    try:
        answer = post(url, {"dataframe_records": [{"image": base64.b64encode(jpeg.read_bytes()).decode()}]})
    finally:
        stop(server)
    expected = mlflow.pyfunc.load_model("models:/primer-cnn@champion").predict(
        pd.DataFrame({"image": [jpeg.read_bytes()]}))
    (row,) = answer["predictions"]
    assert row["label"] == expected["label"][0] and row["p_dog"] == pytest.approx(float(expected["p_dog"][0]), abs=1e-6)


def test_the_champion_translator_answers_a_sentence_with_its_beam_size(registry):
    tmp_path, uri = registry
    server, url = serve("models:/primer-translator@champion", uri, tmp_path)
    try:
        answer = post(url, {"dataframe_records": [{"sentence": "I see 7."}], "params": {"beam_size": 1}})
    finally:
        stop(server)
    expected = mlflow.pyfunc.load_model("models:/primer-translator@champion").predict(
        pd.DataFrame({"sentence": ["I see 7."]}), params={"beam_size": 1})
    assert answer["predictions"] == [{"translation": expected["translation"][0]}]


def test_the_champion_cnn_refuses_a_bomb_and_a_row_that_is_not_a_photo_with_400_and_one_sentence(registry):
    tmp_path, uri = registry
    good = tmp_path / "cat.jpg"
    photo(60, 40, seed=5).save(good)
    rows = [good.read_bytes(), png_bomb(12000, 12000), b"not a photo"]
    server, url = serve("models:/primer-cnn@champion", uri, tmp_path)
    try:
        status, body = refused(url, {"dataframe_records": [{"image": base64.b64encode(r).decode()} for r in rows]})
        ok = post(url, {"dataframe_records": [{"image": base64.b64encode(rows[0]).decode()}]})
    finally:
        stop(server)
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert body["message"] == (
        "2 of 3 rows cannot be answered, so none was: row 1: 17,582 bytes starting b'\\x89PNG\\r\\n\\x1a\\n', "
        "the photo declares 12000 x 12000 = 144,000,000 pixels, over the limit of 89,478,485 "
        "(verify.max_image_pixels); it was not decoded: send a smaller photo, or raise the limit if you trust the "
        "source; row 2: 11 bytes starting b'not a ph', not an image Pillow can open.")
    assert "stack_trace" not in body
    assert len(ok["predictions"]) == 1


def test_the_champion_cnn_answers_a_base64_jpeg_in_the_inputs_and_instances_formats(registry):
    tmp_path, uri = registry
    jpeg = tmp_path / "dog.jpg"
    photo(120, 90, seed=6).save(jpeg)
    text = base64.b64encode(jpeg.read_bytes()).decode()
    bodies = [{"inputs": {"image": [text]}}, {"inputs": [text]},
              {"instances": [{"image": text}]}, {"instances": [text]}]
    server, url = serve("models:/primer-cnn@champion", uri, tmp_path)
    try:
        answers = [post(url, body)["predictions"] for body in bodies]
    finally:
        stop(server)
    expected = mlflow.pyfunc.load_model("models:/primer-cnn@champion").predict(
        pd.DataFrame({"image": [jpeg.read_bytes()]}))
    for (row,) in answers:
        assert row["label"] == expected["label"][0] and row["p_dog"] == pytest.approx(float(expected["p_dog"][0]),
                                                                                      abs=1e-6)


def test_the_champion_cnn_names_each_row_that_is_not_base64_of_a_photo_and_refuses_too_many_photos(registry):
    from primer.limits import MAX_PHOTOS

    tmp_path, uri = registry
    good = base64.b64encode(png_bytes(np.zeros((1, 1, 3), np.uint8))).decode()
    wanted = "where a photo is wanted: an image file's bytes, base64-encoded in JSON"
    server, url = serve("models:/primer-cnn@champion", uri, tmp_path)
    try:
        wrong_column = refused(url, {"dataframe_records": [{"photo": good}]})
        empty = refused(url, {"dataframe_records": []})
        bad_rows = refused(url, {"dataframe_records": [{"image": v} for v in (good, None, 5, "hello world!")]})
        too_many = refused(url, {"dataframe_records": [{"image": good}] * (MAX_PHOTOS + 1)})
        at_the_limit = post(url, {"dataframe_records": [{"image": good}] * MAX_PHOTOS})
    finally:
        stop(server)
    no_photo = ("the request holds no photo: send one row per photo, with the column 'image' holding an image file's "
                "bytes, base64-encoded in JSON.")
    assert [status for status, _ in (wrong_column, empty, bad_rows, too_many)] == [400] * 4
    assert wrong_column[1]["message"] == no_photo and empty[1]["message"] == no_photo
    assert bad_rows[1]["message"] == (f"3 of 4 rows cannot be answered, so none was: row 1: null, {wanted}; "
                                      f"row 2: the number 5, {wanted}; row 3: the text 'hello world!', which is not "
                                      f"base64, {wanted}.")
    assert too_many[1]["message"] == (f"the request holds {MAX_PHOTOS + 1:,} photos, over the limit of {MAX_PHOTOS:,} "
                                      f"per request; send them in batches of at most {MAX_PHOTOS:,}.")
    assert len(at_the_limit["predictions"]) == MAX_PHOTOS
