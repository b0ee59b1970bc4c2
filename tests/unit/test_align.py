"""Prototype-guided alignment on constructed cases whose effect is known."""
import math

import pytest
import torch

from module.align import nearest_text, prototype_align, softmax_entropy


def at(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


TEXT = torch.tensor([at(0), at(90)])  # class 0 along x, class 1 along y


def test_prototypes_fix_a_sample_the_texts_misclassify():
    # class 0 samples sit around 30° (one stray at 50°), class 1 around 80°: the text boundary
    # is 45°, so the stray is wrong inductively; the prototypes (≈27.5° and ≈75°) put the
    # boundary near 51°, which classifies it right.
    angles = [20, 25, 30, 35, 50, 70, 75, 80, 85, 90]
    truth = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    feats = torch.tensor([at(a) for a in angles]) * torch.linspace(1, 3, 10)[:, None]  # norms must not matter
    a = prototype_align(feats, TEXT, support_factor=1.0)
    assert (a.pred_inductive == truth).sum().item() == 9
    assert a.pred_inductive[4].item() == 1
    assert torch.equal(a.pred_aligned, truth)
    assert a.support.tolist() == [4, 6]


def test_support_factor_keeps_the_lowest_entropy_samples():
    # predicted class 0: samples at 5°, 10°, 40° (40° is the least confident)
    feats = torch.tensor([at(5), at(10), at(40), at(85)])
    a = prototype_align(feats, TEXT, support_factor=0.7)  # floor(3 · 0.7) = 2 samples for class 0
    assert a.support.tolist() == [2, 0]
    expected = (torch.tensor(at(5)) + torch.tensor(at(10))) / 2
    torch.testing.assert_close(a.prototypes[0], expected)
    # class 1 has floor(1 · 0.7) = 0 samples: it keeps its text embedding
    torch.testing.assert_close(a.prototypes[1], TEXT[1])
    ent = softmax_entropy(nearest_text(feats, TEXT)[0])
    assert ent[2] > ent[0] and ent[2] > ent[1]


def test_a_class_nobody_predicts_keeps_its_text():
    feats = torch.tensor([at(10), at(20), at(30)])
    text = torch.tensor([at(0), at(90), at(180)])
    a = prototype_align(feats, text, support_factor=1.0)
    assert a.support.tolist() == [3, 0, 0]
    torch.testing.assert_close(a.prototypes[1:], text[1:])


def test_min_support_and_bad_support_factor():
    feats = torch.tensor([at(10), at(20), at(80)])
    a = prototype_align(feats, TEXT, support_factor=1.0, min_support=2)
    assert a.support.tolist() == [2, 0]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="support_factor"):
            prototype_align(feats, TEXT, support_factor=bad)
