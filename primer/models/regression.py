"""The primer's first models: linear regression (closed form and gradient descent) and logistic regression.

The data are the primer's own tables. Its one-variable section derives the fit from "derivative = 0"
without a table of its own, so the one-variable fits use the ice-cream table's temperature column.
Everything is plain numpy: these models are a few numbers, and the point is the equations.
"""

from __future__ import annotations

import numpy as np

# The primer's multivariate example: temperature, price (yuan) -> ice creams sold.
ICE_CREAM_FEATURES = np.array([[10, 3], [20, 3], [25, 3], [28, 2.5], [30, 2], [35, 2.5], [40, 2.5]], dtype=np.float64)
ICE_CREAM_SALES = np.array([60, 85, 100, 120, 140, 145, 163], dtype=np.float64)

# The primer's one-variable logistic example: temperature -> goes out (1) or stays in (0).
OUTING_TEMPERATURE = np.array([-10, 3, -3, 5, -4, 7, -6, 8], dtype=np.float64)
OUTING_GOES_OUT = np.array([0, 1, 0, 1, 0, 1, 0, 1], dtype=np.float64)


def fit_line_through_origin(x: np.ndarray, y: np.ndarray) -> float:
    """y ≈ w·x: d/dw Σ(y - wx)² = -2Σx(y - wx) = 0 gives w = Σxy / Σx²."""
    return float(np.sum(x * y) / np.sum(x * x))


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ≈ w·x + b: both partial derivatives of Σ(y - wx - b)² set to 0, the two equations solved.

    ∂/∂b = 0 gives b = (Σy - wΣx) / n; put into ∂/∂w = 0: w = (nΣxy - ΣxΣy) / (nΣx² - (Σx)²).
    """
    n = len(x)
    w = (n * np.sum(x * y) - np.sum(x) * np.sum(y)) / (n * np.sum(x * x) - np.sum(x) ** 2)
    b = (np.sum(y) - w * np.sum(x)) / n
    return float(w), float(b)


def with_intercept(features: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, 1 + d): a column of ones first, so that w[0] is the primer's intercept w0."""
    return np.column_stack([np.ones(len(features)), features])


def mse(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The primer's loss: 1/n Σ(w0 + x1·w1 + ... - y)²."""
    return float(np.mean((design @ w - y) ** 2))


def least_squares(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The exact minimiser of the MSE (all partial derivatives = 0): solves XᵀX w = Xᵀy, w = (w0, w1, ...)."""
    design = with_intercept(features)
    return np.linalg.solve(design.T @ design, design.T @ y)


def gradient_descent(features: np.ndarray, y: np.ndarray, lr: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """The primer's loop: w from zeros, w -= lr · ∂MSE/∂w each iteration; returns (w, loss per iteration).

    ∂MSE/∂w_j = 2/n Σ(ŷ - y)·x_j (x_0 = 1). The loss is the one before each update, as the primer prints it.
    """
    design = with_intercept(features)  # (n, 1 + d)
    n = len(y)
    w = np.zeros(design.shape[1])
    losses = np.empty(iterations)
    for i in range(iterations):
        error = design @ w - y  # (n,)
        losses[i] = np.mean(error ** 2)
        w = w - lr * (2 / n) * (design.T @ error)
    return w, losses


def hessian_eigenvalues(features: np.ndarray) -> np.ndarray:
    """Eigenvalues of the MSE's Hessian 2/n XᵀX (it is constant: the loss is quadratic), smallest first."""
    design = with_intercept(features)
    return np.linalg.eigvalsh(2 / len(design) * design.T @ design)


def largest_stable_lr(features: np.ndarray) -> float:
    """Gradient descent on a quadratic converges iff lr < 2 / λ_max; at or above it, it diverges."""
    return float(2 / hessian_eigenvalues(features)[-1])


def contraction_rates(features: np.ndarray, lr: float) -> np.ndarray:
    """|1 - lr·λ| per eigenvalue λ of the Hessian H, in the order of `hessian_eigenvalues`.

    On a quadratic loss the error of gradient descent is exactly e_k = (I - lr·H)^k e_0, so each
    eigen-direction of the error shrinks by its rate per step: the largest rate bounds the distance
    to the least-squares solution after k steps by rate^k · |e_0|.
    """
    return np.abs(1 - lr * hessian_eigenvalues(features))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def log_loss(x: np.ndarray, y: np.ndarray, w: float, b: float) -> float:
    """Mean binary cross-entropy of p = sigmoid(w·x + b), written with logaddexp so that it never takes log(0)."""
    z = w * x + b
    # -[y log p + (1-y) log(1-p)] = log(1 + e^z) - y·z
    return float(np.mean(np.logaddexp(0, z) - y * z))


def fit_logistic(x: np.ndarray, y: np.ndarray, lr: float, iterations: int) -> tuple[float, float, np.ndarray]:
    """p = sigmoid(w·x + b) by gradient descent on the mean log-loss from w = b = 0; returns (w, b, losses).

    The log-loss's gradient is the linear one without the 2: ∂/∂w = 1/n Σ(p - y)·x, ∂/∂b = 1/n Σ(p - y).
    """
    w = b = 0.0
    losses = np.empty(iterations)
    for i in range(iterations):
        losses[i] = log_loss(x, y, w, b)
        error = sigmoid(w * x + b) - y  # (n,)
        w, b = w - lr * float(np.mean(error * x)), b - lr * float(np.mean(error))
    return w, b, losses


def accuracy(x: np.ndarray, y: np.ndarray, w: float, b: float) -> float:
    """Share of samples where p >= 0.5 (w·x + b >= 0) matches the label."""
    return float(np.mean((w * x + b >= 0) == (y == 1)))


def fit_primer_tables(plane_lr: float, plane_iterations: int, logistic_lr: float,
                      logistic_iterations: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every fit on the primer's tables (the plane's and the logistic regression's gradient descent with these
    step sizes and counts); returns the summary and the two per-iteration loss curves."""
    temperature, sales = ICE_CREAM_FEATURES[:, 0], ICE_CREAM_SALES
    w0 = fit_line_through_origin(temperature, sales)
    w, b = fit_line(temperature, sales)
    design = with_intercept(ICE_CREAM_FEATURES)
    exact = least_squares(ICE_CREAM_FEATURES, sales)
    descended, plane_losses = gradient_descent(ICE_CREAM_FEATURES, sales, plane_lr, plane_iterations)
    lw, lb, logistic_losses = fit_logistic(OUTING_TEMPERATURE, OUTING_GOES_OUT, logistic_lr, logistic_iterations)
    summary = {
        "line/w_through_origin": w0, "line/mse_through_origin": float(np.mean((w0 * temperature - sales) ** 2)),
        "line/w": w, "line/b": b, "line/mse": float(np.mean((w * temperature + b - sales) ** 2)),
        **{f"plane/gd_w{i}": float(v) for i, v in enumerate(descended)},
        **{f"plane/lstsq_w{i}": float(v) for i, v in enumerate(exact)},
        "plane/gd_loss": mse(design, sales, descended), "plane/lstsq_loss": mse(design, sales, exact),
        "plane/gd_distance": float(np.linalg.norm(descended - exact)),
        # the slowest direction's shrink factor per step: how far the primer's lr is from converging
        "plane/slowest_rate": float(contraction_rates(ICE_CREAM_FEATURES, plane_lr).max()),
        "logistic/w": lw, "logistic/b": lb,
        "logistic/loss": log_loss(OUTING_TEMPERATURE, OUTING_GOES_OUT, lw, lb),
        "logistic/accuracy": accuracy(OUTING_TEMPERATURE, OUTING_GOES_OUT, lw, lb),
    }
    return summary, plane_losses, logistic_losses
