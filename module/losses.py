"""Skeleton–text alignment losses as pure functions, selected by name.

Every loss has the signature ``(skel, text, labels, scale, *, alpha, beta, margin) → scalar``:

* ``skel``   (B, D) projected skeleton embeddings,
* ``text``   (B, D) the text embedding of each sample's class,
* ``labels`` (B,)   class ids (samples of one class are all positives of each other),
* ``scale``  ()     the softmax inverse temperature ``exp(logit_scale)``.

``kl`` is the paper's loss: the symmetric KL divergence between the softmax of the
scaled cosine logits and the same-label target (each row of the 0/1 same-label matrix,
sharpened by 10 and softmaxed, as in ActionCLIP/PGFA). The other names are the
variants of the original code; their weights come from the config
(``loss_alpha``, ``loss_beta``, ``loss_margin``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

TARGET_SHARPNESS = 10.0  # softmax(10 · same-label matrix) as the target distribution
KD_TEACHER_MARGIN = 0.5  # kl+kd: teacher logits = text–text cosine − 0.5 off the positives


def same_label_matrix(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, B) with 1 where two samples share a class (vectorised; the original looped in Python)."""
    return (labels[:, None] == labels[None, :]).to(dtype)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, Nb) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()


def soft_target_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_rows KL(softmax(10·target_row) ‖ softmax(logits_row)) / B.

    Equals the original ``KLDivLoss(mean)(log_softmax(logits), softmax(10·target)) · B``.
    """
    log_p = F.log_softmax(logits, dim=1)
    q = F.softmax(target * TARGET_SHARPNESS, dim=1)
    return F.kl_div(log_p, q, reduction="sum") / logits.shape[0]


def _symmetric(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (soft_target_kl(logits, target) + soft_target_kl(logits.t(), target)) / 2


def kl(skel, text, labels, scale, **_) -> torch.Tensor:
    """The paper's loss: symmetric KL, skeleton→text and text→skeleton."""
    gt = same_label_matrix(labels, skel.dtype)
    return _symmetric(scale * cosine(skel, text), gt)


def mixed_same_label(labels: torch.Tensor, partner_labels: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(B, B) soft same-label matrix of a mixed batch: row i is ``lam_i`` times sample i's own
    class row plus ``1 - lam_i`` times its mixing partner's (a SkeleMix sample shows both)."""
    own = same_label_matrix(labels, lam.dtype)
    other = (partner_labels[:, None] == labels[None, :]).to(lam.dtype)
    return lam[:, None] * own + (1 - lam[:, None]) * other


def kl_soft_target(skel, text, target, scale) -> torch.Tensor:
    """The paper's symmetric KL towards a given (B, B) target matrix (``kl`` uses the 0/1
    same-label matrix; a mixed batch uses ``mixed_same_label``)."""
    return _symmetric(scale * cosine(skel, text), target)


def klv2(skel, text, labels, scale, *, alpha=1.0, beta=1.0, **_) -> torch.Tensor:
    """``alpha · kl + beta · KL`` of the skeleton–skeleton logits to the same target."""
    gt = same_label_matrix(labels, skel.dtype)
    return alpha * _symmetric(scale * cosine(skel, text), gt) + beta * soft_target_kl(scale * cosine(skel, skel), gt)


def _sim_mse(skel, text) -> torch.Tensor:
    # match the skeleton–text cosine matrix to the text–text cosine matrix
    return F.mse_loss(cosine(skel, text), cosine(text, text))


def mse(skel, text, labels, scale, **_) -> torch.Tensor:
    """Similarity-matrix MSE, times the batch size (as in the original ``mse`` track)."""
    return _sim_mse(skel, text) * skel.shape[0]


def kl_mse(skel, text, labels, scale, *, alpha=1.0, beta=1.0, **_) -> torch.Tensor:
    return alpha * kl(skel, text, labels, scale) + beta * _sim_mse(skel, text)


def _kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, dim=1), reduction="batchmean")


def kl_kd(skel, text, labels, scale, *, alpha=1.0, beta=1.0, **_) -> torch.Tensor:
    """``alpha · kl + beta · KD`` towards teacher logits built from text–text similarity."""
    gt = same_label_matrix(labels, skel.dtype)
    student = cosine(skel, text)  # unscaled, as in the original
    teacher = cosine(text, text) + (gt - 1) * KD_TEACHER_MARGIN
    kd = (_kd(student, teacher) + _kd(student.t(), teacher)) / 2
    return alpha * kl(skel, text, labels, scale) + beta * kd


def kl_cosface(skel, text, labels, scale, *, margin=1.0, **_) -> torch.Tensor:
    """``kl`` with an additive margin subtracted from the positive logits.

    The original subtracted in place from a tensor and its transposed view, so the
    positives lost 2·margin; here each direction loses ``margin`` once, as intended.
    """
    gt = same_label_matrix(labels, skel.dtype)
    return _symmetric(scale * cosine(skel, text) - gt * margin, gt)


_CHEBYSHEV = [lambda x: x ** 0, lambda x: x, lambda x: 2 * x ** 2 - 1, lambda x: 4 * x ** 3 - 3 * x,
              lambda x: 8 * x ** 4 - 8 * x ** 2 + 1, lambda x: 16 * x ** 5 - 20 * x ** 3 + 5 * x]


def m_theta(cos_theta: torch.Tensor, m: int) -> torch.Tensor:
    """SphereFace's ψ(θ) = (−1)^k cos(mθ) − 2k for θ in [kπ/m, (k+1)π/m]."""
    m = int(m)
    if not 0 <= m < len(_CHEBYSHEV):
        raise ValueError(f"sphereface margin m must be an integer in 0..{len(_CHEBYSHEV) - 1}, got {m}")
    theta = torch.acos(cos_theta.detach().clamp(-1 + 1e-6, 1 - 1e-6))
    k = (theta * m / torch.pi).floor()
    sign = 1 - 2 * torch.remainder(k, 2)
    return sign * _CHEBYSHEV[m](cos_theta) - 2 * k


def kl_sphereface(skel, text, labels, scale, *, margin=1.0, **_) -> torch.Tensor:
    """``kl`` with SphereFace's multiplicative angular margin on the positives (as the original,
    applied to the scaled logits)."""
    gt = same_label_matrix(labels, skel.dtype)
    logits = scale * cosine(skel, text)
    s2t = m_theta(logits, margin) * gt + (1 - gt) * logits
    t2s = m_theta(logits.t(), margin) * gt + (1 - gt) * logits.t()
    return (soft_target_kl(s2t, gt) + soft_target_kl(t2s, gt)) / 2


def kl_margin(skel, text, labels, scale, *, margin=1.0, **_) -> torch.Tensor:
    """``kl`` with the positive logits capped at ``1 − margin``."""
    gt = same_label_matrix(labels, skel.dtype)
    logits = scale * cosine(skel, text)
    cap = torch.full_like(logits, 1.0 - margin)
    capped = torch.where(gt > 0, torch.minimum(logits, cap), logits)
    return _symmetric(capped, gt)


LossFn = Callable[..., torch.Tensor]
LOSSES: dict[str, LossFn] = {
    "kl": kl,
    "klv2": klv2,
    "mse": mse,
    "kl+mse": kl_mse,
    "kl+kd": kl_kd,
    "kl+cosface": kl_cosface,
    "kl+sphereface": kl_sphereface,
    "kl+margin": kl_margin,
}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss_type {name!r}; choose one of {sorted(LOSSES)}") from None
