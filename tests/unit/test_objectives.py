"""Mixed targets of SkeleMix in the two objectives, on hand-computed cases."""
import torch
import torch.nn.functional as F

from module.losses import kl, kl_soft_target, mixed_same_label, same_label_matrix


def test_mixed_same_label_by_hand():
    y = torch.tensor([0, 1, 0])
    partner = torch.tensor([1, 0, 0])
    lam = torch.tensor([0.75, 0.5, 1.0])
    expected = torch.tensor([[0.75, 0.25, 0.75],   # own class 0 (0.75), partner class 1 (0.25)
                             [0.5, 0.5, 0.5],      # own class 1 (0.5), partner class 0 (0.5)
                             [1.0, 0.0, 1.0]])     # not mixed
    torch.testing.assert_close(mixed_same_label(y, partner, lam), expected)


def test_an_unmixed_batch_gives_the_paper_s_loss():
    torch.manual_seed(0)
    skel, text, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 1, 1, 2])
    lam = torch.ones(4)
    torch.testing.assert_close(kl_soft_target(skel, text, mixed_same_label(y, y.flip(0), lam), torch.tensor(14.0)),
                               kl(skel, text, y, torch.tensor(14.0)))
    torch.testing.assert_close(mixed_same_label(y, y, lam * 0.3), same_label_matrix(y))


def test_lam_weighted_cross_entropy_equals_cross_entropy_with_the_mixed_soft_target():
    torch.manual_seed(0)
    logits = torch.randn(3, 4)
    y, partner, lam = torch.tensor([0, 2, 3]), torch.tensor([1, 2, 0]), torch.tensor([0.6, 0.9, 0.2])
    weighted = (lam * F.cross_entropy(logits, y, reduction="none")
                + (1 - lam) * F.cross_entropy(logits, partner, reduction="none")).mean()
    target = lam[:, None] * F.one_hot(y, 4) + (1 - lam[:, None]) * F.one_hot(partner, 4)
    torch.testing.assert_close(weighted, F.cross_entropy(logits, target.float()))
