"""Mixed targets of SkeleMix in the two objectives, on hand-computed cases."""
import pytest
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


def test_minmax_per_sequence_by_hand_and_absent_persons_stay_zero():
    from module.head import InputStream, minmax_per_sequence

    x = torch.zeros(1, 2, 2, 2, 2)  # (N, C, T, V, M); the second person absent
    x[0, 0, :, :, 0] = torch.tensor([[1.0, 3.0], [2.0, 5.0]])      # axis 0: range 1..5
    x[0, 1, :, :, 0] = torch.tensor([[-2.0, -2.0], [0.5, -1.0]])   # axis 1: range -2..0.5
    out = minmax_per_sequence(x)
    torch.testing.assert_close(out[0, 0, :, :, 0], torch.tensor([[-1.0, 0.0], [-0.5, 1.0]]))
    torch.testing.assert_close(out[0, 1, :, :, 0], torch.tensor([[-1.0, -1.0], [1.0, -0.2]]))
    assert out[..., 1].abs().sum() == 0
    x[0, :, 0, 0, 0] = 0.0  # a joint at the origin (the centring joint of frame 0) is normalised too
    torch.testing.assert_close(minmax_per_sequence(x)[0, 0, 0, 0, 0], torch.tensor(-1.0))  # range 0..5
    # the stream is computed after the normalisation (bone of a normalised skeleton)
    with pytest.raises(ValueError, match="unknown input_norm 'zscore'"):
        InputStream("joint", "ntu25", "zscore")


def test_rotation_about_x_and_y_only_leaves_the_z_free_rotation_out():
    from data.augment import random_rotation

    x = torch.randn(4, 3, 5, 25, 1)
    rx = random_rotation(x, 1.0, torch.Generator().manual_seed(0), axes="x")
    torch.testing.assert_close(rx[:, 0], x[:, 0])  # a rotation about x keeps x coordinates
    xy = random_rotation(x, 1.0, torch.Generator().manual_seed(0), axes="xy")
    xyz = random_rotation(x, 1.0, torch.Generator().manual_seed(0))
    assert not torch.allclose(xy, xyz) and torch.allclose(xy.norm(dim=1), x.norm(dim=1), atol=1e-5)
