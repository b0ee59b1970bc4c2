"""GZSL with calibrated stacking, and one-shot classification, on constructed cases."""
import math

import numpy as np
import pytest
import torch

from experiments.train.gzsl import (choose_gamma, evaluate_gzsl, gzsl_scores, harmonic_mean, one_shot_eval,
                              pick_exemplars, stacked_predict)

CLASSES = [0, 1, 2, 3]
SEEN, UNSEEN = [0, 1], [2, 3]


def biased_scores(labels: torch.Tensor, bias: float, margin: float = 0.1) -> torch.Tensor:
    """The true class scores 0.5 + margin, others 0.5; seen classes get +bias (a seen-biased model)."""
    s = torch.full((len(labels), 4), 0.5)
    s[torch.arange(len(labels)), labels] += margin
    s[:, :2] += bias
    return s


def test_harmonic_mean():
    assert harmonic_mean(50.0, 50.0) == 50.0
    assert harmonic_mean(100.0, 0.0) == 0.0
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)


def test_calibration_removes_a_known_seen_bias():
    y = torch.tensor([0, 1, 2, 3] * 5)
    scores = biased_scores(y, bias=0.3)
    # uncalibrated: every unseen sample goes to a seen class
    raw = gzsl_scores(torch.tensor(CLASSES)[stacked_predict(scores, torch.tensor([1, 1, 0, 0]).bool(), 0.0)], y, SEEN, UNSEEN)
    assert raw["seen_top1"] == 100.0 and raw["unseen_top1"] == 0.0 and raw["H"] == 0.0
    # any gamma in (0.2, 0.4) makes every prediction right: bias 0.3 ± margin 0.1
    gamma, h = choose_gamma(scores, y, CLASSES, SEEN, UNSEEN)
    assert 0.2 < gamma < 0.4 and h == 100.0


def test_gamma_comes_from_validation_not_test():
    yv = torch.tensor([0, 1, 2, 3] * 5)
    gamma, _ = choose_gamma(biased_scores(yv, bias=0.1, margin=0.05), yv, CLASSES, SEEN, UNSEEN)
    assert 0.05 < gamma < 0.15
    # the test set is more biased (0.5): the validation gamma cannot fix it, and must not be re-chosen
    yt = torch.tensor([0, 1, 2, 3] * 3)
    res = evaluate_gzsl(biased_scores(yt, bias=0.5), yt, CLASSES, SEEN, UNSEEN, gamma)
    assert res["gamma"] == gamma
    assert res["unseen_top1"] == 0.0 and res["unseen_top1_uncalibrated"] == 0.0


def test_gzsl_needs_both_groups():
    with pytest.raises(ValueError, match="both seen and unseen"):
        gzsl_scores(torch.tensor([0, 1]), torch.tensor([0, 1]), SEEN, UNSEEN)


def at(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_one_shot_exemplar_beats_a_misleading_text():
    # class 5 samples at 10–16°, class 7 at 100–106°; texts: class 5 at 0°, class 7 at 20° (misleading)
    feats = torch.tensor([at(a) for a in (10, 12, 14, 16, 100, 102, 104, 106)])
    labels = torch.tensor([5, 5, 5, 5, 7, 7, 7, 7])
    text = torch.zeros(8, 2)
    text[5], text[7] = torch.tensor(at(0)), torch.tensor(at(20))
    r = one_shot_eval(feats, labels, [5, 7], text, exemplars={5: 0, 7: 4})
    assert r["num_queries"] == 6  # the exemplars are not queries
    # by exemplar (10°, 100°): all right. By text (boundary 10°): class-5 queries 12–16° go to class 7.
    assert r["one_shot_top1_exemplar"] == 100.0
    assert r["one_shot_top1_text"] == 50.0
    # combined prototypes sit at 5° and 60°: boundary 32.5°, all right again
    assert r["one_shot_top1_combined"] == 100.0


def test_exemplars_are_seeded_and_need_a_query():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert pick_exemplars(labels, [0, 1], seed=4) == pick_exemplars(labels, [0, 1], seed=4)
    picks = {tuple(pick_exemplars(labels, [0, 1], seed=s).values()) for s in range(20)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="class 2 has 1 samples"):
        pick_exemplars(torch.tensor([0, 0, 2]), [0, 2], seed=0)


def test_balanced_accuracy_is_the_per_class_mean():
    import torch

    from experiments.train.metrics import balanced_accuracy, per_class_accuracy

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 3, 1, 0, 2])  # class 3 has no samples: its prediction is just wrong
    per_class = per_class_accuracy(pred, labels, [0, 1, 2, 3])
    assert per_class == {0: 50.0, 1: 50.0, 2: 100.0}
    assert abs(balanced_accuracy(pred, labels) - sum(per_class.values()) / 3) < 1e-9
