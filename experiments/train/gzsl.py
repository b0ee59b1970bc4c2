"""Generalized zero-shot evaluation with calibrated stacking, and one-shot classification.

GZSL: test samples of seen *and* unseen classes are classified among all of those
classes. A model trained on the seen classes scores them too high, so calibrated
stacking (Chao et al., 2016) subtracts a constant ``gamma`` from the seen classes'
scores. ``gamma`` is chosen on validation data only (held-out samples of the training
classes plus the validation classes), never on the test set.

One-shot: each novel class has one labelled exemplar; samples are classified by their
cosine to the exemplars' embeddings, to the class texts, or to both combined.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from experiments.train.metrics import per_class_accuracy, top1


def harmonic_mean(seen: float, unseen: float) -> float:
    return 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)


def stacked_predict(scores: torch.Tensor, is_seen: torch.Tensor, gamma: float) -> torch.Tensor:
    """argmax over classes of ``scores - gamma · is_seen`` (scores (N, K), is_seen (K,) bool)."""
    return (scores - gamma * is_seen.to(scores.dtype)).argmax(dim=1)


def gzsl_scores(pred: torch.Tensor, labels: torch.Tensor, seen: list[int], unseen: list[int]) -> dict:
    """Seen / unseen accuracy (over samples of each group, in %) and their harmonic mean."""
    seen_mask = torch.isin(labels, torch.tensor(seen))
    unseen_mask = torch.isin(labels, torch.tensor(unseen))
    if not seen_mask.any() or not unseen_mask.any():
        raise ValueError("GZSL needs test samples of both seen and unseen classes")
    s = top1(pred[seen_mask], labels[seen_mask])
    u = top1(pred[unseen_mask], labels[unseen_mask])
    pcs = per_class_accuracy(pred, labels, seen)
    pcu = per_class_accuracy(pred, labels, unseen)
    return {"seen_top1": s, "unseen_top1": u, "H": harmonic_mean(s, u),
            "seen_per_class_mean": float(np.mean(list(pcs.values()))),
            "unseen_per_class_mean": float(np.mean(list(pcu.values())))}


def class_scores(feats: torch.Tensor, text: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """(N, K) cosine scores of embeddings against the texts of ``classes``."""
    return F.normalize(feats.float(), dim=1) @ F.normalize(text[torch.tensor(classes)].float(), dim=1).t()


def choose_gamma(scores: torch.Tensor, labels: torch.Tensor, classes: list[int], seen: list[int],
                 unseen: list[int], grid: np.ndarray | None = None) -> tuple[float, float]:
    """The calibration constant maximising H on *validation* scores; returns (gamma, H).

    Ties go to the smallest gamma, so the choice is deterministic."""
    grid = np.round(np.arange(-0.5, 1.0001, 0.01), 4) if grid is None else grid
    is_seen = torch.tensor([c in set(seen) for c in classes])
    cls = torch.tensor(classes)
    best = (float(grid[0]), -1.0)
    for g in grid:
        h = gzsl_scores(cls[stacked_predict(scores, is_seen, float(g))], labels, seen, unseen)["H"]
        if h > best[1]:
            best = (float(g), h)
    return best


def evaluate_gzsl(test_scores: torch.Tensor, test_labels: torch.Tensor, classes: list[int], seen: list[int],
                  unseen: list[int], gamma: float) -> dict:
    """GZSL numbers on the test set without calibration and with the given ``gamma``."""
    is_seen = torch.tensor([c in set(seen) for c in classes])
    cls = torch.tensor(classes)
    raw = gzsl_scores(cls[stacked_predict(test_scores, is_seen, 0.0)], test_labels, seen, unseen)
    cal = gzsl_scores(cls[stacked_predict(test_scores, is_seen, gamma)], test_labels, seen, unseen)
    return {"gamma": gamma, **{f"{k}_uncalibrated": v for k, v in raw.items()}, **cal}


def pick_exemplars(labels: torch.Tensor, classes: list[int], seed: int) -> dict[int, int]:
    """One sample index per class, drawn with ``seed`` (recorded with the result)."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        idx = np.flatnonzero(labels.numpy() == c)
        if idx.size < 2:
            raise ValueError(f"class {c} has {idx.size} samples: one-shot needs an exemplar and at least one query")
        out[int(c)] = int(rng.choice(idx))
    return out


def one_shot_eval(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], text: torch.Tensor,
                  exemplars: dict[int, int], text_weight: float = 0.5) -> dict:
    """Top-1 (%) on the non-exemplar samples by exemplar, by text, and by both.

    The combined prototype is ``(1 - w) · exemplar + w · text`` of unit vectors (w = ``text_weight``)."""
    cls = torch.tensor(classes)
    f = F.normalize(feats.float(), dim=1)
    ex = f[torch.tensor([exemplars[c] for c in classes])]                      # (K, D)
    tx = F.normalize(text[cls].float(), dim=1)                                 # (K, D)
    both = F.normalize((1 - text_weight) * ex + text_weight * tx, dim=1)
    query = torch.ones(len(labels), dtype=torch.bool)
    query[torch.tensor(list(exemplars.values()))] = False
    fq, yq = f[query], labels[query]
    out = {}
    for name, protos in (("exemplar", ex), ("text", tx), ("combined", both)):
        pred = cls[(fq @ protos.t()).argmax(dim=1)]
        out[f"one_shot_top1_{name}"] = top1(pred, yq)
        out[f"one_shot_per_class_mean_{name}"] = float(np.mean(list(per_class_accuracy(pred, yq, classes).values())))
    out["num_queries"] = int(query.sum())
    return out
