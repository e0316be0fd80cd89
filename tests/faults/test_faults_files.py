"""Corrupt, truncated, empty or other-kind files: one PrimerError sentence naming the file and the fix, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from primer.errors import PrimerError
from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM
from primer.training.checkpoint import load_matching
from primer.vision.image_batches import load_arrays

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.tiny_cnn import tiny_cnn_params, write_tiny_arrays


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _load_arrays_error(folder) -> str:
    with pytest.raises(PrimerError) as caught:
        load_arrays(folder, 40, 32)
    return str(caught.value)


def _assert_one_sentence(message: str, path, fix: str):
    assert "\n" not in message and str(path) in message and fix in message, message
    assert "weights_only" not in message, message


def _save_cnn_model(path):
    """What train_cnn saves."""
    args = {"arch": "primer", "width": 4}
    torch.save({"model": build_cnn(**args).state_dict(), "model_args": args, "classes": ["Cat", "Dog"], "history": [],
                "mlflow_run_id": ""}, path)
    return path


def _save_lm_model(path):
    """What train_lm saves."""
    args = {"vocab_size": 6, "cell": "gru", "num_hiddens": 4, "num_layers": 1, "impl": "fused"}
    history = [{"epoch": 1, "train/ppl": 5.0, "val/ppl": 5.5}]
    torch.save({"model": RNNLM(**args).state_dict(), "model_args": args, "vocab": ["<unk>", " ", "a", "b", "c", "d"],
                "history": history, "best_epoch": 1, "mlflow_run_id": ""}, path)
    return path


def _cnn_model_error(path) -> str:
    from stages.evaluate import Arrays, evaluate_cnn

    args = SimpleNamespace(cnn_model=path, arrays=path.parent / "arrays")
    with pytest.raises(PrimerError) as caught:
        evaluate_cnn(args, Arrays(train_size=40, eval_size=32), torch.device("cpu"), 8)
    return str(caught.value)


# --- the augment stage's arrays -------------------------------------------------------------------------------------


def test_truncated_train_images_npy_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = _truncate(folder / "train_images.npy")
    message = _load_arrays_error(folder)
    _assert_one_sentence(message, path, "rerun `dvc repro augment`")
    assert "truncated or corrupt" in message


def test_truncated_val_labels_npy_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = _truncate(folder / "val_labels.npy", keep=0.9)
    _assert_one_sentence(_load_arrays_error(folder), path, "rerun `dvc repro augment`")


def test_zero_byte_val_images_npy_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = folder / "val_images.npy"
    path.write_bytes(b"")
    message = _load_arrays_error(folder)
    _assert_one_sentence(message, path, "rerun `dvc repro augment`")
    assert "empty" in message


def test_zero_byte_meta_json_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = folder / "meta.json"
    path.write_text("")
    _assert_one_sentence(_load_arrays_error(folder), path, "rerun `dvc repro augment`")


def test_truncated_meta_json_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = _truncate(folder / "meta.json")
    _assert_one_sentence(_load_arrays_error(folder), path, "rerun `dvc repro augment`")


def test_meta_json_holding_a_list_names_the_file_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = folder / "meta.json"
    path.write_text("[1, 2]")
    _assert_one_sentence(_load_arrays_error(folder), path, "rerun `dvc repro augment`")


def test_meta_json_missing_counts_names_the_key_and_augment(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    del meta["counts"]
    path.write_text(json.dumps(meta))
    message = _load_arrays_error(folder)
    _assert_one_sentence(message, path, "rerun `dvc repro augment`")
    assert "counts.train" in message


FOREIGN_ARRAYS = {  # a file from somewhere else in place of augment's: (file, its array, what the message says)
    "val labels of another length": ("val_labels.npy", np.arange(7, dtype=np.int64), "(7,)"),
    "val labels of floats": ("val_labels.npy", np.zeros(16, dtype=np.float32), "float32"),
    "val labels of another class count": ("val_labels.npy", np.arange(16, dtype=np.int64), "from 0 to 15"),
    "val images of another size": ("val_images.npy", np.zeros((16, 20, 20, 3), np.uint8), "(16, 20, 20, 3)"),
    "train images of floats": ("train_images.npy", np.zeros((48, 40, 40, 3), np.float32), "float32"),
}


@pytest.mark.parametrize("case", FOREIGN_ARRAYS)
def test_foreign_array_names_that_file_not_another(tmp_path, case):
    name, array, detail = FOREIGN_ARRAYS[case]
    folder = write_tiny_arrays(tmp_path / "arrays")
    np.save(folder / name, array)
    message = _load_arrays_error(folder)
    _assert_one_sentence(message, folder / name, "rerun `dvc repro augment`")
    assert detail in message and "meta.json" in message, message
    others = {"val_images.npy", "val_labels.npy", "train_images.npy", "train_labels.npy"} - {name}
    assert not any(other in message for other in others), message


def test_meta_json_counting_other_images_than_both_arrays_hold_names_meta_json(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    meta = json.loads((folder / "meta.json").read_text())
    meta["counts"]["val"] = 20
    (folder / "meta.json").write_text(json.dumps(meta))
    message = _load_arrays_error(folder)
    _assert_one_sentence(message, folder / "meta.json", "rerun `dvc repro augment`")
    assert "counts 20 val images" in message and "hold 16" in message, message


def test_train_cnn_stage_with_truncated_array_prints_one_line_and_exits_1(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    path = _truncate(folder / "train_images.npy")
    params = tiny_cnn_params(REPO / "params.yaml", tmp_path / "params.yaml")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "stages" / "train_cnn.py"), "--params", str(params), "--arrays", str(folder),
           "--checkpoint", str(out / "ckpt.pt"), "--model", str(out / "cnn.pt"), "--metrics", str(out / "metrics.json"),
           "--curves", str(out / "curves.csv"), "--curves-png", str(out / "curves.png")]
    done = subprocess.run(cmd, cwd=tmp_path, env={**venv_env(tmp_path), "PRIMER_TRACKING": "off"},
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("train_cnn: error: ") and str(path) in lines[0] and "dvc repro augment" in lines[0]


# --- model files given to evaluate ------------------------------------------------------------------------------------


def test_truncated_cnn_model_names_the_file_and_train_cnn(tmp_path):
    path = _truncate(_save_cnn_model(tmp_path / "cnn.pt"))
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "truncated or corrupt" in message


def test_zero_byte_cnn_model_names_the_file_and_train_cnn(tmp_path):
    path = tmp_path / "cnn.pt"
    path.write_bytes(b"")
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "empty" in message


def test_cnn_model_that_is_not_a_pytorch_file_names_the_file_and_train_cnn(tmp_path):
    path = tmp_path / "cnn.pt"
    path.write_text('{"model": "not weights"}')
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "not a PyTorch file" in message


def test_cnn_model_holding_objects_is_refused_without_weights_only_advice(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(Namespace(model={}, model_args={}, classes=[]), path)  # a pickled class: weights_only refuses it
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "objects other than tensors" in message


def test_language_model_given_as_cnn_model_names_the_file_and_train_cnn(tmp_path):
    path = _save_lm_model(tmp_path / "cnn.pt")
    message = _cnn_model_error(path)
    assert message == f"{path} is not a CNN model file (it holds a language model); rerun `dvc repro train_cnn`."


def test_cnn_model_with_weights_of_another_width_does_not_match(tmp_path):
    path = _save_cnn_model(tmp_path / "cnn.pt")
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "model_args": {"arch": "primer", "width": 8}}, path)  # weights of width 4
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "does not match" in message


def test_cnn_model_with_an_unknown_model_arg_does_not_match(tmp_path):
    path = _save_cnn_model(tmp_path / "cnn.pt")
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "model_args": {"arch": "primer", "width": 4, "depth": 3}}, path)
    message = _cnn_model_error(path)
    _assert_one_sentence(message, path, "rerun `dvc repro train_cnn`")
    assert "does not match" in message and "depth" in message


def test_truncated_language_model_names_the_file_and_its_train_lm_stage(tmp_path):
    from stages.evaluate import LmTest, evaluate_lms

    (tmp_path / "lm").mkdir()
    path = _truncate(_save_lm_model(tmp_path / "lm" / "gru.pt"))
    (tmp_path / "corpus.txt").write_text("abcd " * 50)
    params = LmTest(val_fraction=0.2, num_steps=4, prefix="a", sample_chars=3)
    with pytest.raises(PrimerError) as caught:
        evaluate_lms(SimpleNamespace(lm_models=tmp_path / "lm", corpus=tmp_path / "corpus.txt"), params,
                     torch.device("cpu"))
    _assert_one_sentence(str(caught.value), path, "rerun `dvc repro train_lm@gru`")


def test_cnn_model_given_as_transformer_model_names_the_file_and_train_transformer(tmp_path):
    from stages.evaluate import evaluate_transformer

    path = _save_cnn_model(tmp_path / "tf.pt")
    with pytest.raises(PrimerError) as caught:
        evaluate_transformer(SimpleNamespace(transformer_model=path, pairs=tmp_path / "fra.txt"), {}, 0,
                             torch.device("cpu"), 1)
    assert str(caught.value) == (f"{path} is not a Transformer model file (it holds a CNN model); "
                                 "rerun `dvc repro train_transformer`.")


def test_evaluate_stage_with_language_model_as_cnn_model_prints_one_line_and_exits_1(tmp_path):
    path = _save_lm_model(tmp_path / "cnn.pt")
    missing = tmp_path / "absent"
    cmd = [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(REPO / "params.yaml"),
           "--cnn-model", str(path)]
    for flag in ("--arrays", "--lm-models", "--corpus", "--transformer-model", "--pairs", "--verify-summary",
                 "--preview", "--cnn-curves", "--lm-plots", "--basics-plot", "--metrics", "--confusion", "--plots",
                 "--report"):
        cmd += [flag, str(missing)]
    done = subprocess.run(cmd, cwd=tmp_path, env={**venv_env(tmp_path), "PRIMER_TRACKING": "off"},
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0] == (f"evaluate: error: {path} is not a CNN model file (it holds a language model); "
                        "rerun `dvc repro train_cnn`.")


# --- training checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_holding_a_bare_tensor_starts_fresh(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save(torch.zeros(3), path)
    assert load_matching(path, "abc") is None
    note = capsys.readouterr().out
    assert str(path) in note and "training starts fresh" in note and "weights_only" not in note


def test_checkpoint_holding_a_list_starts_fresh(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save([1, 2, 3], path)
    assert load_matching(path, "abc") is None
    note = capsys.readouterr().out
    assert str(path) in note and "training starts fresh" in note and "weights_only" not in note


def test_checkpoint_that_is_not_a_pytorch_file_starts_fresh_without_weights_only_advice(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    path.write_text('{"fingerprint": "abc"}')
    assert load_matching(path, "abc") is None
    note = capsys.readouterr().out.strip()
    assert note == f"checkpoint {path} is unreadable (not a PyTorch file); training starts fresh"


def test_missing_test_labels_npy_names_the_file_and_augment(tmp_path):
    from primer.vision.image_batches import data_identity

    folder = write_tiny_arrays(tmp_path / "arrays")
    (folder / "test_labels.npy").unlink()  # train_cnn fingerprints every split's labels, the test split's too
    with pytest.raises(PrimerError) as err:
        data_identity(folder)
    _assert_one_sentence(str(err.value), folder / "test_labels.npy", "rerun `dvc repro augment`")


TIME_MACHINE_OPENING = ("The Time Traveller (for so it will be convenient to speak of him)\n"
                        "was expounding a recondite matter to us. His grey eyes shone and\n"
                        "twinkled, and his usually pale face was flushed and animated.\n")
UTF16_ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be"]  # with a byte-order mark, then without one either way round


@pytest.mark.parametrize("encoding", UTF16_ENCODINGS)
def test_utf16_corpus_is_named_utf16_not_binary(tmp_path, encoding):
    from primer.text.corpus import load_corpus

    path = tmp_path / "timemachine.txt"
    path.write_bytes(TIME_MACHINE_OPENING.encode(encoding))
    with pytest.raises(PrimerError) as caught:
        load_corpus(path)
    assert str(caught.value) == f"text file {path} is UTF-16 text, not UTF-8; re-save it as UTF-8."


@pytest.mark.parametrize("encoding", UTF16_ENCODINGS)
def test_utf16_sentence_pair_file_is_named_utf16_not_binary(tmp_path, encoding):
    from primer.text.sentence_pairs import read_pairs

    path = tmp_path / "fra.txt"
    path.write_bytes("Go.\tVa !\nHi.\tSalut !\nRun!\tCours\u202f!\n".encode(encoding))
    with pytest.raises(PrimerError) as caught:
        read_pairs(path)
    assert str(caught.value) == f"sentence-pair file {path} is UTF-16 text, not UTF-8; re-save it as UTF-8."


@pytest.mark.parametrize("content", [b"\x00\x01PK\x03\x04" * 50, bytes(range(256)) * 8, b"\x00" * 64])
def test_binary_with_nul_bytes_is_still_called_binary_not_utf16(tmp_path, content):
    from primer.text.corpus import load_corpus

    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(PrimerError, match="so it is binary"):
        load_corpus(path)
