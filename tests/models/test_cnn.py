"""The primer's CNN, the shared training loop, checkpoints and resume, DDP and the train_cnn stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from primer.models.cnn import PrimerCNN, ResidualCNN, build_cnn
from primer.training.checkpoint import Checkpoint, fingerprint, load_matching
from primer.training.loop import FitConfig, fit, make_optimizer
from primer.vision.augment_policy import AugmentPolicy
from primer.vision.image_batches import eval_batches, evaluate_binary, load_arrays, train_batches

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.timing import timeless
from helpers.tiny_cnn import tiny_cnn_params, write_tiny_arrays


def primer_cnnmodel() -> nn.Sequential:
    """The primer's CNNmodel layers, written out again here as the reference (Sigmoid included)."""
    blocks = []
    for cin, cout in [(3, 16), (16, 32), (32, 64), (64, 128)]:
        blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)]
    return nn.Sequential(*blocks, nn.Conv2d(128, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Sigmoid())


def test_primer_cnn_equals_the_primer_model_and_its_loss():
    torch.manual_seed(0)
    ours, reference = PrimerCNN(16), primer_cnnmodel()
    reference.load_state_dict({f"{k}": v for k, v in ours.model.state_dict().items()})  # same layer indices
    x, y = torch.randn(4, 3, 128, 128), torch.tensor([0, 1, 1, 0])
    logits, loss = ours(x, y)
    probs = reference(x)  # (4, 1)
    assert logits.shape == (4,)
    assert torch.allclose(torch.sigmoid(logits), probs.squeeze(1), atol=1e-6)
    assert torch.allclose(loss, nn.BCELoss()(probs, y.float().unsqueeze(1)), atol=1e-6)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert ours(x)[1] is None


def test_resnet_option_shapes():
    model = build_cnn("resnet", 8)
    assert isinstance(model, ResidualCNN)
    logits, loss = model(torch.randn(3, 3, 128, 128), torch.tensor([1, 0, 1]))
    assert logits.shape == (3,) and loss.ndim == 0


def train_tiny(folder, epochs: int, checkpoint=None, batches_hook=None, seed: int = 0):
    """fit() on tiny arrays, wired as the train_cnn stage wires it."""
    torch.manual_seed(seed)
    data = load_arrays(folder, 40, 32)
    (tx, ty), (vx, vy) = data["train"], data["val"]
    policy = AugmentPolicy(crop_size=32)
    model = PrimerCNN(8)
    optimizer = make_optimizer(model, "adam", 3e-3)
    device = torch.device("cpu")

    def batches(epoch):
        for i, batch in enumerate(train_batches(tx, ty, 8, policy, seed, epoch, device, channels_last=True)):
            if batches_hook:
                batches_hook(epoch, i)
            yield batch

    logged = []
    history = fit(
        model, optimizer, batches,
        lambda m, epoch: evaluate_binary(model, eval_batches(vx, vy, 8, device, True), False, device),
        FitConfig(epochs, log_every=2, best_metric="val/acc", higher_is_better=True),
        Checkpoint(checkpoint, fingerprint(seed=seed, epochs=epochs), model_args={"width": 8}) if checkpoint else None,
        SimpleNamespace(log_metrics=lambda m, s: logged.append((s, m)), flush=lambda: None),
    ).history
    return history, logged, model


def timeless_history(history: list[dict]) -> list[dict]:
    """History without throughput, epoch times and host, the things allowed to differ between equal runs."""
    return [timeless(row) for row in history]


def test_one_epoch_smoke_logs_step_loss_and_epoch_metrics(tmp_path):
    history, logged, _ = train_tiny(write_tiny_arrays(tmp_path / "arrays"), epochs=1)
    assert len(history) == 1 and {"train/epoch_loss", "val/loss", "val/acc", "train/img_per_s", "lr"} <= set(history[0])
    steps = [s for s, m in logged if "train/loss" in m]
    assert steps == [2, 4, 6]  # 48 images / batch 8 = 6 steps, logged every 2


def test_same_params_same_metrics_and_the_model_learns(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    a, _, _ = train_tiny(folder, epochs=4)
    b, _, _ = train_tiny(folder, epochs=4)
    assert timeless_history(a) == timeless_history(b)
    assert a[-1]["val/acc"] >= 0.9  # bright vs dark is easy


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    uninterrupted, _, _ = train_tiny(folder, epochs=4)

    def die_in_epoch_3(epoch, step):
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        train_tiny(folder, epochs=4, checkpoint=checkpoint, batches_hook=die_in_epoch_3)
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 2 and set(saved) >= {"model", "optimizer", "model_args", "epoch", "step", "rng", "best"}
    resumed, logged, _ = train_tiny(folder, epochs=4, checkpoint=checkpoint)
    assert timeless_history(resumed) == timeless_history(uninterrupted)
    assert min(s for s, _ in logged) > 12  # steps of epochs 1-2 were not redone


def test_checkpoint_for_other_params_is_not_loaded(tmp_path):
    folder = write_tiny_arrays(tmp_path / "arrays")
    checkpoint = tmp_path / "ckpt.pt"
    train_tiny(folder, epochs=1, checkpoint=checkpoint, seed=0)
    assert load_matching(checkpoint, fingerprint(seed=1, epochs=1)) is None
    assert load_matching(checkpoint, fingerprint(seed=0, epochs=1)) is not None


def run_stage(tmp_path, params, env, tag: str) -> subprocess.CompletedProcess:
    out = tmp_path / tag
    cmd = [sys.executable, str(REPO / "stages" / "train_cnn.py"), "--params", str(params),
           "--arrays", str(tmp_path / "arrays"),
           "--checkpoint", str(out / "ckpt.pt"), "--model", str(out / "cnn.pt"), "--metrics", str(out / "metrics.json"),
           "--curves", str(out / "curves.csv"), "--curves-png", str(out / "curves.png")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ddp_two_processes_match_one_and_rank0_alone_logs(tmp_path):
    write_tiny_arrays(tmp_path / "arrays", n_train=64)
    env = {**venv_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    results = {}
    for nproc in (1, 2):
        params = tiny_cnn_params(REPO / "params.yaml", tmp_path / f"params{nproc}.yaml", nproc=nproc, epochs=4,
                                 lr=0.003)
        done = run_stage(tmp_path, params, env, f"n{nproc}")
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = json.loads((tmp_path / f"n{nproc}" / "metrics.json").read_text())
        saved = torch.load(tmp_path / f"n{nproc}" / "cnn.pt", weights_only=True)
        assert build_cnn(**saved["model_args"]).load_state_dict(saved["model"])  # rebuilt from the plain dict
    assert abs(results[1]["val/acc"] - results[2]["val/acc"]) <= 0.1 and results[2]["val/acc"] >= 0.9
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("primer").experiment_id])
    assert sorted(r.data.tags["world_size"] for r in runs) == ["1", "2"]  # one run per stage execution
    ddp = next(r for r in runs if r.data.tags["world_size"] == "2")
    assert ddp.info.status == "FINISHED" and "val/acc" in ddp.data.metrics
    assert len(client.get_metric_history(ddp.info.run_id, "val/acc")) == 4  # rank 0 alone: one point per epoch
    artifacts = {a.path for a in client.list_artifacts(ddp.info.run_id)}
    assert {"training_curves.png", "curves.csv"} <= artifacts
    assert any(m.name == "model" and m.source_run_id == ddp.info.run_id
               for m in client.search_logged_models([ddp.info.experiment_id]))


@pytest.mark.slow
def test_stage_killed_mid_run_resumes_to_the_same_metrics(tmp_path):
    write_tiny_arrays(tmp_path / "arrays", n_train=96)
    env = {**venv_env(tmp_path), "PRIMER_TRACKING": "off"}
    params = tiny_cnn_params(REPO / "params.yaml", tmp_path / "params.yaml", epochs=8)
    whole = run_stage(tmp_path, params, env, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "stages" / "train_cnn.py"), "--params", str(params),
           "--arrays", str(tmp_path / "arrays"),
           "--checkpoint", str(out / "ckpt.pt"), "--model", str(out / "cnn.pt"), "--metrics", str(out / "metrics.json"),
           "--curves", str(out / "curves.csv"), "--curves-png", str(out / "curves.png")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "ckpt.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()  # it died before the end
    again = run_stage(tmp_path, params, env, "killed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    assert timeless(json.loads((out / "metrics.json").read_text())) == timeless(
        json.loads((tmp_path / "whole" / "metrics.json").read_text()))


def test_missing_or_stale_arrays_name_the_augment_stage(tmp_path):
    with pytest.raises(Exception, match="run the augment stage first"):
        load_arrays(tmp_path / "nothing", 40, 32)
    write_tiny_arrays(tmp_path / "arrays")
    with pytest.raises(Exception, match=r"rerun the augment stage \(dvc repro augment\)"):
        load_arrays(tmp_path / "arrays", 150, 128)
