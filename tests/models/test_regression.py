"""Linear and logistic regression against numpy least squares and torch's log-loss; the train_basics stage end to
end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from primer.models import regression as rg
from primer.params import load_params

from helpers.environment import venv_env
from helpers.repo import REPO


def random_data(seed: int, n: int = 40, d: int = 2):
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, size=(n, d))
    y = 1.5 + features @ rng.normal(0, 2, size=d) + rng.normal(0, 0.3, size=n)
    return features, y


DATASETS = {
    "primer": (rg.ICE_CREAM_FEATURES, rg.ICE_CREAM_SALES),
    "random": random_data(0),
    "random-shifted": (random_data(1)[0] * 7 + 20, random_data(1)[1]),
}


@pytest.mark.parametrize("name", DATASETS)
def test_closed_form_lines_equal_numpy_least_squares(name):
    features, y = DATASETS[name]
    x = features[:, 0]
    (w_origin,), *_ = np.linalg.lstsq(x[:, None], y, rcond=None)
    (w, b), *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)
    assert rg.fit_line_through_origin(x, y) == pytest.approx(w_origin, rel=1e-10)
    assert rg.fit_line(x, y) == pytest.approx((w, b), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", DATASETS)
def test_plane_least_squares_equals_numpy(name):
    features, y = DATASETS[name]
    expected, *_ = np.linalg.lstsq(rg.with_intercept(features), y, rcond=None)
    np.testing.assert_allclose(rg.least_squares(features, y), expected, rtol=1e-9, atol=1e-9)


def test_primer_gradient_descent_is_exactly_the_contraction_theory_predicts():
    """With the primer's lr 1e-4 and 10,000 iterations, GD is not at the least-squares plane yet.

    On a quadratic, GD's error obeys e_k = (I - lr·H)^k e_0 exactly; the Hessian's smallest eigenvalue
    (~0.011, the intercept-vs-price direction) shrinks by only 1 - 1.1e-6 per step, so after 10,000
    steps almost all of that part of the error remains. Float64 rounding over 10,000 steps stays far
    below the 1e-9 relative tolerance.
    """
    features, y, lr, k = rg.ICE_CREAM_FEATURES, rg.ICE_CREAM_SALES, 1e-4, 10_000
    exact = rg.least_squares(features, y)
    descended, losses = rg.gradient_descent(features, y, lr, k)
    design = rg.with_intercept(features)
    step = np.eye(3) - lr * 2 / len(y) * design.T @ design
    np.testing.assert_allclose(descended, exact + np.linalg.matrix_power(step, k) @ (0 - exact), rtol=1e-9)
    assert np.all(np.diff(losses) <= 1e-12)  # lr below 2/λ_max: the loss never rises
    distance = np.linalg.norm(descended - exact)
    assert distance <= rg.contraction_rates(features, lr).max() ** k * np.linalg.norm(exact)
    assert 90 < distance < 100 and losses[-1] > 9 * rg.mse(design, y, exact)  # the documented gap
    assert losses[0] == pytest.approx(np.mean(y ** 2))  # first loss is at w = 0, as the primer prints it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_descent_converges_to_least_squares_on_well_conditioned_data(seed):
    """Tolerance from the same theory: |e_k| <= rate^k |e_0|, with rate = max|1 - lr·λ| < 1."""
    features, y = random_data(seed)
    lr = 1 / rg.hessian_eigenvalues(features)[-1]
    rate = rg.contraction_rates(features, lr).max()
    exact = rg.least_squares(features, y)
    iterations = int(np.ceil(np.log(1e-10 / np.linalg.norm(exact)) / np.log(rate)))
    descended, _ = rg.gradient_descent(features, y, lr, iterations)
    assert iterations < 5_000 and np.linalg.norm(descended - exact) <= 1e-10 + 1e-12


def test_unstable_lr_is_where_theory_says():
    features, y = rg.ICE_CREAM_FEATURES, rg.ICE_CREAM_SALES
    limit = rg.largest_stable_lr(features)
    assert 1e-4 < limit < 1e-2
    _, below = rg.gradient_descent(features, y, 0.99 * limit, 3000)
    with np.errstate(over="ignore", invalid="ignore"):
        _, above = rg.gradient_descent(features, y, 1.01 * limit, 3000)
    assert below[-1] < below[0] and not above[-1] < above[0]


def test_logistic_regression_separates_the_primer_table():
    x, y = rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT
    w, b, losses = rg.fit_logistic(x, y, lr=0.1, iterations=1000)
    assert rg.accuracy(x, y, w, b) == 1.0  # separable: every cold day stays in, every warm day goes out
    assert w > 0 and losses[0] == pytest.approx(np.log(2)) and losses[-1] < 0.01
    assert np.all(np.diff(losses) < 0)


def test_logistic_gradient_descent_matches_torch_autograd():
    """Same iterates as GD on torch's binary_cross_entropy_with_logits, so loss and gradient are right."""
    x, y = torch.tensor(rg.OUTING_TEMPERATURE), torch.tensor(rg.OUTING_GOES_OUT)
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        losses.append(loss.item())
        (grad,) = torch.autograd.grad(loss, params)
        params = (params - 0.05 * grad).detach().requires_grad_(True)
    w, b, ours = rg.fit_logistic(rg.OUTING_TEMPERATURE, rg.OUTING_GOES_OUT, lr=0.05, iterations=50)
    assert torch.allclose(torch.tensor([w, b], dtype=torch.float64), params.detach(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours, losses, rtol=1e-10)


def test_repo_params_pass_the_stage_schema():
    from stages.train_basics import Params

    params = load_params(REPO / "params.yaml", Params).train_basics
    assert params.plane.model_dump() == {"lr": 1e-4, "iterations": 10_000}  # the primer's own settings


def tiny_params(tmp_path, **plane) -> object:
    params = {"train_basics": {"plane": {"lr": 1e-4, "iterations": 500, **plane},
                               "logistic": {"lr": 0.1, "iterations": 300}, "log_every": 50}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(tmp_path, params, env=None):
    cmd = [sys.executable, str(REPO / "stages" / "train_basics.py"), "--params", str(params),
           "--metrics", str(tmp_path / "out" / "basics.json"), "--plot", str(tmp_path / "out" / "basics.png")]
    return subprocess.run(cmd, cwd=tmp_path, env=env or {**venv_env(tmp_path), "PRIMER_TRACKING": "off"},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stage_writes_metrics_plot_and_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**venv_env(tmp_path), "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "basics-test"}
    done = run_stage(tmp_path, tiny_params(tmp_path), env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "basics.json").read_text())
    assert metrics["line/w_through_origin"] == pytest.approx(rg.fit_line_through_origin(
        rg.ICE_CREAM_FEATURES[:, 0], rg.ICE_CREAM_SALES))
    assert metrics["plane/lstsq_w0"] == pytest.approx(rg.least_squares(rg.ICE_CREAM_FEATURES, rg.ICE_CREAM_SALES)[0])
    assert metrics["plane/gd_distance"] > 0 and metrics["logistic/accuracy"] == 1.0
    png = (tmp_path / "out" / "basics.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("basics-test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train_basics.plane.iterations"] == "500"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "plane/loss")]
    assert sorted(steps) == [*range(0, 500, 50), 499]  # every log_every-th iteration and the last
    assert "train_basics.png" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.parametrize(
    "plane, words",
    [
        ({"lr": -1}, ["'train_basics.plane.lr' is -1", "must be a number"]),
        ({"lr": 0.01}, ["'train_basics.plane.lr' is 0.01", "diverge", "below 0.00123"]),
        ({"iterations": "many"}, ["'train_basics.plane.iterations' is 'many'", "integer"]),
        ({"momentum": 0.9}, ["unknown key 'train_basics.plane.momentum'"]),
    ],
    ids=["negative-lr", "diverging-lr", "text-iterations", "unknown-key"],
)
def test_bad_param_is_one_sentence(tmp_path, plane, words):
    params = tiny_params(tmp_path, **plane)
    done = run_stage(tmp_path, params)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert str(params) in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out").exists()  # nothing written before the check
