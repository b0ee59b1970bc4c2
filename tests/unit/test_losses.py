"""Each loss against values computed independently (numpy, float64, written from the definitions)."""
import math

import numpy as np
import pytest
import torch

from module.losses import LOSSES, get_loss, m_theta, same_label_matrix


def test_kl_on_two_orthogonal_pairs_by_hand():
    # skeleton i coincides with text i, two classes, scale 1: logits = identity
    e = torch.eye(2)
    q = [math.exp(10) / (math.exp(10) + 1), 1 / (math.exp(10) + 1)]   # softmax(10 · [1, 0])
    logp = [1 - math.log(math.e + 1), -math.log(math.e + 1)]          # log_softmax([1, 0])
    row = sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, logp))     # both rows (and directions) alike
    got = get_loss("kl")(e, e, torch.tensor([0, 1]), torch.tensor(1.0))
    assert got.item() == pytest.approx(row, rel=1e-6)


# ---- an independent numpy reference of every loss


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _kl_rows(logits, target):  # Σ_rows KL(q_row ‖ p_row) / B with q = softmax(10 target)
    logq, logp = _log_softmax(10 * target), _log_softmax(logits)
    return float((np.exp(logq) * (logq - logp)).sum() / logits.shape[0])


def _kd(student, teacher):
    logq, logp = _log_softmax(teacher), _log_softmax(student)
    return float((np.exp(logq) * (logq - logp)).sum() / student.shape[0])


def _psi(x, m):
    theta = np.arccos(np.clip(x, -1 + 1e-6, 1 - 1e-6))
    k = np.floor(theta * m / np.pi)
    return (-1) ** k * np.cos(m * np.arccos(np.clip(x, -1, 1))) - 2 * k


def reference(name, s, t, y, scale, alpha, beta, margin):
    g = (y[:, None] == y[None, :]).astype(float)
    c = _cos(s, t)
    kl = (_kl_rows(scale * c, g) + _kl_rows(scale * c.T, g)) / 2
    if name == "kl":
        return kl
    if name == "klv2":
        return alpha * kl + beta * _kl_rows(scale * _cos(s, s), g)
    sim_mse = float(((c - _cos(t, t)) ** 2).mean())
    if name == "mse":
        return sim_mse * len(y)
    if name == "kl+mse":
        return alpha * kl + beta * sim_mse
    if name == "kl+kd":
        teacher = _cos(t, t) + (g - 1) * 0.5
        return alpha * kl + beta * (_kd(c, teacher) + _kd(c.T, teacher)) / 2
    if name == "kl+cosface":
        return (_kl_rows(scale * c - g * margin, g) + _kl_rows(scale * c.T - g * margin, g)) / 2
    if name == "kl+sphereface":
        lo = scale * c
        a = np.where(g > 0, _psi(lo, margin), lo)
        b = np.where(g > 0, _psi(lo.T, margin), lo.T)
        return (_kl_rows(a, g) + _kl_rows(b, g)) / 2
    if name == "kl+margin":
        lo = scale * c
        return (_kl_rows(np.where(g > 0, np.minimum(lo, 1 - margin), lo), g)
                + _kl_rows(np.where(g > 0, np.minimum(lo.T, 1 - margin), lo.T), g)) / 2
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_reference(name):
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    y = np.array([0, 1, 0, 2, 1])
    t = np.stack([t[c] for c in y])  # per-sample text = its class's text
    # sphereface's margin m is an integer; scale 0.9 keeps its logits inside [-1, 1] where ψ is defined
    scale, margin = (0.9, 2) if name == "kl+sphereface" else (3.0, 0.35)
    kw = dict(alpha=0.7, beta=1.3, margin=margin)
    got = get_loss(name)(torch.tensor(s), torch.tensor(t), torch.tensor(y), torch.tensor(scale, dtype=torch.float64), **kw)
    assert got.item() == pytest.approx(reference(name, s, t, y, scale, **kw), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gives_gradients(name):
    s = torch.randn(6, 8, requires_grad=True)
    t = torch.randn(6, 8)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = get_loss(name)(s, t, torch.tensor([0, 0, 1, 1, 2, 2]), scale, alpha=1.0, beta=1.0,
                          margin=2 if name == "kl+sphereface" else 0.2)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_same_label_matrix_is_the_pairwise_equality():
    y = torch.tensor([3, 1, 3, 2])
    expected = [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    assert same_label_matrix(y).tolist() == expected


def test_sphereface_psi_is_cos_m_theta_on_its_first_interval():
    x = torch.tensor([0.9, 0.8])  # θ < π/2, so k = 0 for m = 2
    np.testing.assert_allclose(m_theta(x, 2).numpy(), np.cos(2 * np.arccos(x.numpy())), rtol=1e-5)
    with pytest.raises(ValueError):
        m_theta(x, 7)


def test_unknown_loss_is_named():
    with pytest.raises(KeyError, match="unknown loss_type 'focal'"):
        get_loss("focal")
