"""Accuracy over samples, per class, and the confusion matrix (class ids in, numbers out)."""
from __future__ import annotations

import numpy as np
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


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class, in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), np.int64)
    for t, p in zip(labels.tolist(), pred.tolist()):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm
