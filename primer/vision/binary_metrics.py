"""Test-set numbers of a binary classifier from its probabilities: accuracy, precision, recall,
ROC AUC and the confusion matrix (class 1 is the positive class, a probability >= 0.5 predicts it)."""

from __future__ import annotations

import torch


def confusion(labels: torch.Tensor, predicted: torch.Tensor) -> list[list[int]]:
    """[[tn, fp], [fn, tp]]: rows are the true class, columns the predicted one."""
    return [[int(((labels == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def roc_auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """P(a random positive scores above a random negative), ties counting one half (Mann-Whitney U)."""
    positives, negatives = scores[labels == 1].double(), scores[labels == 0].double()
    if not len(positives) or not len(negatives):
        return float("nan")
    ranks = _average_ranks(torch.cat([positives, negatives]))
    u = ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, group, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2)[group]


def binary_report(labels: torch.Tensor, probabilities: torch.Tensor) -> dict:
    """accuracy, precision, recall, roc_auc and the confusion matrix of P(class 1)."""
    labels = labels.long()
    predicted = (probabilities >= 0.5).long()
    (tn, fp), (fn, tp) = confusion(labels, predicted)
    return {
        "accuracy": (tp + tn) / max(len(labels), 1),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "roc_auc": roc_auc(labels, probabilities),
        "confusion": [[tn, fp], [fn, tp]],
    }
