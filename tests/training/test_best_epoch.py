"""fit keeps the best epoch: its weights end in the model and the model file, a resumed run still
knows them and the patience count, early stopping stops at the right epoch, and each lr schedule is
PyTorch's own."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from primer.training.checkpoint import Checkpoint
from primer.training.loop import FitConfig, fit
from primer.training.schedule import lr_factor

from helpers.environment import venv_env
from helpers.repo import REPO
from helpers.tiny_cnn import tiny_cnn_params, write_tiny_arrays
from helpers.toy_fit import Toy, toy_fit


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_model_ends_with_the_best_epochs_weights_bit_for_bit(tmp_path):
    result, weights, model = toy_fit(tmp_path, [0.5, 0.8, 0.6, 0.7, 0.75])
    assert (result.best_epoch, result.best, result.stopped_early) == (2, 0.8, False)
    assert len(result.history) == 5
    assert same(model.state_dict(), weights[2]) and not same(model.state_dict(), weights[5])
    summary = result.summary("val/acc")
    assert summary["best/epoch"] == 2 and summary["val/acc"] == 0.8 and summary["epochs"] == 5


def test_early_stopping_stops_after_patience_epochs_without_a_gain(tmp_path, capsys):
    result, weights, model = toy_fit(tmp_path, [0.5, 0.9, 0.85, 0.88, 0.9, 0.99, 0.99], patience=3)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5] and result.stopped_early
    assert result.best_epoch == 2 and same(model.state_dict(), weights[2])
    assert ("stopped early after epoch 5: val/acc has not improved by more than 0 for 3 epochs; keeping epoch 2"
            in capsys.readouterr().out)


def test_min_delta_is_the_least_gain_that_counts(tmp_path):
    result, _, _ = toy_fit(tmp_path, [0.5, 0.6, 0.61, 0.62, 0.9], patience=2, min_delta=0.05)
    assert result.best_epoch == 2 and [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_a_resumed_run_keeps_the_best_weights_and_the_patience_count(tmp_path):
    scores = [0.5, 0.9, 0.85, 0.88, 0.87, 0.99]
    whole, _, whole_model = toy_fit(tmp_path, scores, checkpoint=tmp_path / "a.pt", patience=3)
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 4: the checkpoint holds epochs 1-3
        toy_fit(tmp_path, scores, checkpoint=tmp_path / "b.pt", patience=3, die_in_epoch=3)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert (saved["epoch"], saved["best_epoch"], saved["bad_epochs"]) == (3, 2, 1)
    resumed, _, resumed_model = toy_fit(tmp_path, scores, checkpoint=tmp_path / "b.pt", patience=3)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5] and resumed.stopped_early
    assert resumed.best_epoch == whole.best_epoch == 2
    assert same(resumed_model.state_dict(), whole_model.state_dict())
    again, _, _ = toy_fit(tmp_path, scores, checkpoint=tmp_path / "b.pt", patience=3)  # stopped runs stay stopped
    assert len(again.history) == 5


def torch_lrs(make, total: int, base: float) -> torch.Tensor:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    scheduler, lrs = make(optimizer), []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return torch.tensor(lrs, dtype=torch.float64)


SCHEDULES = {  # (schedule, warmup steps) -> PyTorch's own scheduler over `total` steps
    ("constant", 0): lambda o, total, w: lr_scheduler.LambdaLR(o, lambda step: 1.0),
    ("constant", 10): lambda o, total, w: lr_scheduler.LinearLR(o, start_factor=1 / (w + 1), end_factor=1.0,
                                                                total_iters=w),
    ("cosine", 0): lambda o, total, w: lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0),
    ("cosine", 10): lambda o, total, w: lr_scheduler.SequentialLR(o, [
        lr_scheduler.LinearLR(o, start_factor=1 / (w + 1), end_factor=1.0, total_iters=w),
        lr_scheduler.CosineAnnealingLR(o, T_max=total - w, eta_min=0)], milestones=[w]),
    ("onecycle", 30): lambda o, total, w: lr_scheduler.OneCycleLR(o, max_lr=o.param_groups[0]["lr"], total_steps=total,
                                                                  pct_start=w / total),
}


@pytest.mark.parametrize("kind, warmup", list(SCHEDULES))
def test_each_schedule_equals_pytorchs_own(kind, warmup):
    total, base = 100, 0.1
    ours = torch.tensor([base * lr_factor(kind, k, total, warmup) for k in range(total)], dtype=torch.float64)
    theirs = torch_lrs(lambda o: SCHEDULES[(kind, warmup)](o, total, warmup), total, base)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_fit_steps_with_the_scheduled_lr_and_logs_it(tmp_path):
    logged = []
    toy_fit(tmp_path, [0.1] * 5, schedule="onecycle", warmup_epochs=1.5, log_every=1,
            log=lambda m, s: logged.append((s, m)))
    used = torch.tensor([m["lr"] for s, m in logged if "train/loss" in m], dtype=torch.float64)
    theirs = torch_lrs(lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20, pct_start=6 / 20), 20, 0.1)
    assert torch.allclose(used, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_train_cnn_writes_the_best_epoch_and_evaluate_scores_it(tmp_path):
    """Validation and test labels are flipped against training, so every epoch of learning makes
    val/acc worse: the best epoch is the first, and the last weights score differently."""
    from stages.evaluate import Arrays, evaluate_cnn

    arrays = write_tiny_arrays(tmp_path / "arrays")
    for split in ("val", "test"):
        labels = np.load(arrays / f"{split}_labels.npy")
        np.save(arrays / f"{split}_labels.npy", 1 - labels)
    params = tiny_cnn_params(REPO / "params.yaml", tmp_path / "params.yaml", epochs=4, lr=1e-4)
    out = {name: tmp_path / name for name in ("ckpt.pt", "cnn.pt", "metrics.json", "curves.csv", "curves.png")}
    done = subprocess.run([sys.executable, str(REPO / "stages" / "train_cnn.py"), "--params", str(params),
                           "--arrays", str(arrays), "--checkpoint", str(out["ckpt.pt"]), "--model", str(out["cnn.pt"]),
                           "--metrics", str(out["metrics.json"]),
                           "--curves", str(out["curves.csv"]), "--curves-png", str(out["curves.png"])],
                          cwd=tmp_path, env={**venv_env(tmp_path), "PRIMER_TRACKING": "off"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(out["ckpt.pt"], weights_only=True)
    history = checkpoint["history"]
    best = max(range(4), key=lambda i: (history[i]["val/acc"], -i)) + 1
    assert checkpoint["best_epoch"] == best < 4 and history[best - 1]["val/acc"] > history[-1]["val/acc"]
    metrics = json.loads(out["metrics.json"].read_text())
    assert (metrics["best/epoch"] == best and metrics["val/acc"] == history[best - 1]["val/acc"]
            and metrics["epochs"] == 4)
    saved = torch.load(out["cnn.pt"], weights_only=True)
    assert same(saved["model"], checkpoint["best_model"]) and not same(saved["model"], checkpoint["model"])

    args = Namespace(cnn_model=out["cnn.pt"], arrays=arrays)
    sizes = Arrays(train_size=40, eval_size=32)
    report, *_ = evaluate_cnn(args, sizes, torch.device("cpu"), 8)
    torch.save({**saved, "model": checkpoint["model"]}, tmp_path / "last.pt")
    last, *_ = evaluate_cnn(Namespace(cnn_model=tmp_path / "last.pt", arrays=arrays), sizes, torch.device("cpu"), 8)
    assert report["accuracy"] > last["accuracy"]  # scoring the last epoch would show this lower number


def test_val_every_validates_every_nth_epoch_and_the_last_and_keeps_the_best_validated(tmp_path):
    scores = [0.9, 0.5, 0.6, 0.7, 0.65]  # epoch 1 is best but never validated with val_every 2
    result, weights, model = toy_fit(tmp_path, scores, val_every=2)
    assert sorted(weights) == [2, 4, 5]
    assert [("val/acc" in row) for row in result.history] == [False, True, False, True, True]
    assert result.best_epoch == 4 and same(model.state_dict(), weights[4])


def test_patience_counts_epochs_between_validations(tmp_path):
    # validated at 2 (the best), 4 and 6: at epoch 6 it has gone 4 epochs without a gain, past patience 3
    result, _, _ = toy_fit(tmp_path, [0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], val_every=2, patience=3)
    # 4 epochs since the best
    assert result.best_epoch == 2 and result.stopped_early and result.history[-1]["epoch"] == 6


def test_checkpoint_every_writes_every_nth_epoch_and_a_resumed_run_ends_the_same(tmp_path):
    scores = [0.1, 0.2, 0.3, 0.25, 0.4, 0.35]
    checkpoint = tmp_path / "toy.ckpt"
    whole, _, whole_model = toy_fit(tmp_path, scores, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        toy_fit(tmp_path, scores, checkpoint, die_in_epoch=3, checkpoint_every=2)  # dies in the 4th epoch
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2  # written after epoch 2, not after epoch 3
    resumed, _, model = toy_fit(tmp_path, scores, checkpoint, checkpoint_every=2)
    assert resumed.best_epoch == whole.best_epoch == 5 and same(model.state_dict(), whole_model.state_dict())
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 6  # the last epoch always has one


def test_a_failing_log_still_gets_its_epoch_checkpointed_between_cadence_points(tmp_path):
    """checkpoint_every spaces checkpoints out, but a tracking store that dies mid-run must not cost the
    epochs since the last one: the epoch in which `log` failed is written before its error is raised."""
    torch.manual_seed(0)
    model = Toy()
    x, y = torch.randn(16, 4), torch.randn(16)
    checkpoint = tmp_path / "toy.ckpt"

    def log(metrics, step):
        if step > 8:  # the store dies during epoch 3 (4 steps per epoch)
            raise ConnectionError("store gone")

    with pytest.raises(ConnectionError):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1),
            lambda e: [(x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]) for i in range(4)],
            lambda m, e: {"val/loss": 1.0 / e}, FitConfig(6, log_every=1, checkpoint_every=5),
            Checkpoint(checkpoint, "toy"),
            SimpleNamespace(log_metrics=log, flush=lambda: None))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3
