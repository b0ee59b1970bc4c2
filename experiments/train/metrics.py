"""Accuracy over samples, per class, and the confusion matrix (class ids in, numbers out)."""
from __future__ import annotations

import warnings

import numpy as np
import sklearn.metrics
import torch


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of samples whose prediction equals the label (over samples, not batches)."""
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set")
    return 100.0 * (pred.cpu() == labels.cpu()).double().mean().item()


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> dict[int, float]:
    """Percentage correct per class; a class without samples is left out."""
    pred, labels = pred.cpu(), labels.cpu()
    out = {}
    for c in classes:
        mask = labels == c
        if mask.any():
            out[int(c)] = 100.0 * (pred[mask] == c).double().mean().item()
    return out


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of their accuracy, in % (the per-class mean)."""
    with warnings.catch_warnings():  # a prediction of a class without samples is simply wrong
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return 100.0 * sklearn.metrics.balanced_accuracy_score(labels.cpu().numpy(), pred.cpu().numpy())


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class, in ``classes`` order (pairs
    with a class outside ``classes`` are left out)."""
    return sklearn.metrics.confusion_matrix(labels.cpu().numpy(), pred.cpu().numpy(), labels=list(classes))


def topk(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of samples whose label is among the ``k`` highest scores (over samples)."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.double().mean().item()
