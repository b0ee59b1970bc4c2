"""Prototype-guided text feature alignment (PGFA's test-time step), as pure functions.

Inductive zero-shot classifies each test skeleton embedding by its nearest class-text
embedding (cosine). PGFA then, transductively over the whole unseen test set:

1. predicts every sample against the texts and scores its confidence by the entropy
   of the softmax over the cosine logits;
2. per predicted class, takes the ``support_factor`` fraction of its samples with the
   lowest entropy and averages their (L2-normalised) embeddings into a prototype;
   a class predicted for too few samples (``floor(n · support_factor) < min_support``)
   keeps its text embedding;
3. re-classifies every sample against the prototypes.

``class_centred`` is a second transductive step: each class's mean cosine over the test set is
subtracted from its column, so no class text that sits near every sample (a hub) takes them all.

``seen_mixture`` is ConSE's test-time step: an embedding replaced by its mix of the seen
classes' texts before it is compared with the unseen ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(N,) entropy of softmax(logits) per row."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


@dataclass
class Alignment:
    pred_inductive: torch.Tensor   # (N,) index into the candidate classes
    pred_aligned: torch.Tensor     # (N,)
    prototypes: torch.Tensor       # (K, D) what each class was re-classified against
    support: torch.Tensor          # (K,) samples averaged per class (0 = kept its text)
    entropy: torch.Tensor          # (N,)


def nearest_text(feats: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine logits (N, K) of embeddings against class texts, and the inductive prediction (N,)."""
    logits = F.normalize(feats.float(), dim=1) @ F.normalize(text.float(), dim=1).t()
    return logits, logits.argmax(dim=1)


def prototype_align(feats: torch.Tensor, text: torch.Tensor, support_factor: float,
                    min_support: int = 1, entropy_scale: float = 1.0) -> Alignment:
    """Inductive and prototype-aligned predictions.

    Args:
        feats: (N, D) skeleton embeddings of the whole test set.
        text: (K, D) text embeddings of the K candidate classes.
        support_factor: fraction (0, 1] of each predicted class used for its prototype.
        min_support: fewest samples a prototype may average; fewer keeps the text.
        entropy_scale: multiplies the cosine logits before the entropy (1 = the original).
    """
    if not 0.0 < support_factor <= 1.0:
        raise ValueError(f"support_factor must be in (0, 1], got {support_factor}")
    f = F.normalize(feats.float(), dim=1)
    logits, pred = nearest_text(feats, text)  # (N, K) cosine, (N,)
    ent = softmax_entropy(entropy_scale * logits)
    protos, support = [], []
    for k in range(text.shape[0]):
        idx = torch.nonzero(pred == k).flatten()
        n_keep = int(idx.numel() * support_factor)
        if n_keep < max(1, min_support):
            protos.append(text[k].float())
            support.append(0)
            continue
        # lowest entropy first; stable sort so ties keep sample order (deterministic)
        order = torch.sort(ent[idx], stable=True).indices[:n_keep]
        protos.append(f[idx[order]].mean(dim=0))
        support.append(n_keep)
    prototypes = torch.stack(protos)
    aligned = (f @ F.normalize(prototypes, dim=1).t()).argmax(dim=1)
    return Alignment(pred, aligned, prototypes, torch.tensor(support), ent)


def seen_mixture(feats: torch.Tensor, seen_text: torch.Tensor, temperature: float, top_k: int = 0) -> torch.Tensor:
    """ConSE (Norouzi et al., ICLR 2014): each embedding replaced by the convex combination of the seen
    classes' unit text embeddings, weighted by its softmax over the cosines to them at ``temperature``.

    An unseen class is then scored by how close its text is to the seen classes the sample resembles,
    not by where the projection puts samples no training class pulled on.

    Args:
        feats: (N, D) skeleton embeddings. seen_text: (S, D) text embeddings of the training classes.
        top_k: mix only each sample's ``top_k`` most similar seen classes (0: all; ties with the
            ``top_k``-th are kept).

    Returns:
        (N, D) embeddings in the text space (unit rows of ``seen_text`` mixed; not normalised).
    """
    if temperature <= 0:
        raise ValueError(f"conse_temperature must be > 0, got {temperature}")
    if not 0 <= top_k:
        raise ValueError(f"conse_top_k must be >= 0 (0: every seen class), got {top_k}")
    text = F.normalize(seen_text.float(), dim=1)
    logits = nearest_text(feats, text)[0] / temperature
    if 0 < top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(dim=1) @ text


def class_centred(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) cosine logits less each class's mean over the N samples (transductive: it reads the
    whole unlabelled test set). A class text near every sample (a hub) no longer wins by that alone."""
    return logits - logits.mean(dim=0, keepdim=True)
