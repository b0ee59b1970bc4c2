import json

import pytest
import torch
import torch.nn.functional as F

from data.augment import (Augmentation, draw_skelemix, random_rotation, random_scale, random_shear,
                          rotation_matrices, skelemix, temporal_crop_resize)
from data.streams import to_modality
from module.graph import LAYOUTS, NTU25
from module.parts import PARTS, body_parts

AUGMENTS = {
    "rotation": lambda x, g: random_rotation(x, 0.3, g),
    "scale": lambda x, g: random_scale(x, 0.2, g),
    "shear": lambda x, g: random_shear(x, 0.5, g),
    "crop": lambda x, g: temporal_crop_resize(x, (0.5, 1.0), g),
    "skelemix": lambda x, g: draw_skelemix(x, body_parts("ntu25"), g)[0],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(n: int = 4, t: int = 32, v: int = 25, m: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, t, v, m, generator=gen(123))


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_augmentation_is_seeded_shape_preserving_and_pure(name):
    fn, x = AUGMENTS[name], sample()
    before = x.clone()
    a, b, c = fn(x, gen(0)), fn(x, gen(0)), fn(x, gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_rotation_is_proper_and_keeps_bone_lengths():
    r = rotation_matrices(torch.rand(8, 3, dtype=torch.float64, generator=gen(0)) * 6 - 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(8, dtype=torch.float64))
    # about z alone (CTR-GCN's rz): x' = cos·x + sin·y
    rz = rotation_matrices(torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64))[0]
    c, s = torch.cos(torch.tensor(0.5, dtype=torch.float64)), torch.sin(torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(rz, torch.tensor([[c, s, 0], [-s, c, 0], [0, 0, 1]], dtype=torch.float64))

    x = sample()
    out = random_rotation(x, 0.3, gen(0))
    lengths = [to_modality(y, "bone", NTU25).norm(dim=1) for y in (x, out)]  # (N, T, V, M)
    torch.testing.assert_close(lengths[1], lengths[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, x)


def test_scale_is_one_factor_per_sequence_and_axis():
    x = sample()
    ratio = random_scale(x, 0.2, gen(0)) / x  # (N, C, T, V, M)
    per_axis = ratio.flatten(2)
    torch.testing.assert_close(per_axis, per_axis[:, :, :1].expand_as(per_axis))
    assert per_axis.min() >= 0.8 - 1e-6 and per_axis.max() <= 1.2 + 1e-6


def test_shear_is_a_per_sequence_linear_map_with_unit_diagonal():
    # every point at (1, 0, 0): the output reads column 0 of each sequence's shear matrix
    x = torch.zeros(2, 3, 4, 5, 2)
    x[:, 0] = 1
    col = random_shear(x, 0.5, gen(0))  # (N, C, T, V, M)
    assert torch.all(col == col[:, :, :1, :1, :1])  # one matrix for all frames, joints, persons
    assert torch.all(col[:, 0] == 1) and torch.all(col[:, 1:].abs() <= 0.5)
    assert not torch.equal(col[0], col[1])  # drawn per sequence


def test_crop_with_full_interval_is_the_identity():
    x = sample()
    assert torch.equal(temporal_crop_resize(x, (1.0, 1.0), gen(0)), x)


def test_crop_is_ctrgcn_window_then_linear_resize():
    x = sample(n=1, t=8)
    out = temporal_crop_resize(x, (0.5, 0.5), gen(3))  # a window of 4 of the 8 frames
    flat = lambda y: y.permute(0, 1, 3, 4, 2).reshape(1, -1, y.shape[2])  # (1, C·V·M, T)
    resized = [F.interpolate(flat(x[:, :, s:s + 4]), size=8, mode="linear", align_corners=False)
               for s in range(5)]
    errors = [(r - flat(out)).abs().max().item() for r in resized]
    assert min(errors) < 1e-5


def test_skelemix_pastes_exactly_the_named_joints_and_frames():
    x_a, x_b = torch.zeros(2, 3, 6, 5, 2), torch.ones(2, 3, 6, 5, 2)
    out = skelemix(x_a, x_b, [1, 3], (2, 4))
    want = torch.zeros(6, 5)
    want[2:4, [1, 3]] = 1
    assert torch.equal(out, want[None, None, :, :, None].expand_as(out))
    assert torch.equal(x_a, torch.zeros_like(x_a))


def test_draw_skelemix_mixes_body_parts_over_a_span_and_weighs_the_rest():
    parts = body_parts("kinect20")
    x = sample(n=5, t=64, v=20)
    for seed in range(6):
        mixed, partner, lam = draw_skelemix(x, parts, gen(seed))
        assert sorted(partner.tolist()) == list(range(5)) and not torch.any(partner == torch.arange(5))
        changed = (mixed != x).any(dim=(1, 4))  # (N, T, V)
        assert torch.equal(changed, changed[:1].expand_as(changed))  # one draw per batch
        # every entry is the sample's own or, on the changed joints × frames, its partner's
        assert torch.equal(mixed, torch.where(changed[:, None, :, :, None], x[partner], x))
        in_frames, in_joints = changed[0].any(dim=1), changed[0].any(dim=0)  # (T,), (V,)
        assert torch.equal(changed[0], in_frames[:, None] & in_joints[None, :])  # a joints × frames block
        frames, joints = in_frames.nonzero().flatten().tolist(), in_joints.nonzero().flatten().tolist()
        assert frames == list(range(frames[0], frames[-1] + 1))
        assert frames[0] % 4 == 0 and 7 * 4 <= len(frames) <= 11 * 4 and len(frames) % 4 == 0  # 4-frame blocks
        pasted = [name for name, js in parts.items() if set(js) <= set(joints)]
        assert sorted(j for name in pasted for j in parts[name]) == joints and 2 <= len(pasted) <= 3
        torch.testing.assert_close(lam, torch.full((5,), 1 - len(frames) * len(joints) / (64 * 20)))


def test_draw_skelemix_lam_by_hand():
    # 4 parts of one joint each on a 4-joint, 16-frame grid: 2 or 3 parts × 7..11 frames
    parts = {"p": (0,), "q": (1,), "r": (2,), "s": (3,)}
    x = torch.arange(2 * 16 * 4, dtype=torch.float32).reshape(2, 1, 16, 4, 1)
    mixed, partner, lam = draw_skelemix(x, parts, gen(0))
    n_changed = int((mixed[0] != x[0]).sum())
    assert n_changed in {k * f for k in (2, 3) for f in range(7, 12)}
    assert lam[0].item() == pytest.approx(1 - n_changed / 64)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_body_parts_partition_every_layout(name):
    parts = body_parts(name)
    assert tuple(parts) == PARTS and all(parts.values())
    joints = sorted(j for js in parts.values() for j in js)
    assert joints == list(range(LAYOUTS[name].num_joints))
    names = LAYOUTS[name].joints
    assert all("left" in names[j] for j in parts["left_arm"] + parts["left_leg"])
    assert "head" in [names[j] for j in parts["torso"]]


def test_body_parts_of_ntu25_are_skelemixclr_s():
    # SkeleMixCLR net/skeletonclr_multi_swap.py, 1-based NTU joints
    table = [[4, 3, 21, 2, 1], [9, 10, 11, 12, 24, 25], [5, 6, 7, 8, 22, 23], [17, 18, 19, 20], [13, 14, 15, 16]]
    assert {frozenset(j - 1 for j in part) for part in table} == {frozenset(p) for p in body_parts("ntu25").values()}


def test_body_parts_need_sides_and_limbs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"joints": ["j1", "j2", "j3"], "bones": [[1, 2], [2, 3]], "center": "j2"}))
    with pytest.raises(ValueError, match="left_arm"):
        body_parts(str(bad))
    unsided = tmp_path / "unsided.json"
    unsided.write_text(json.dumps({"joints": ["neck", "hand"], "bones": [[1, 2]], "center": "neck"}))
    with pytest.raises(ValueError, match="'hand'"):
        body_parts(str(unsided))
    camel = tmp_path / "camel.json"
    joints = ["Head", "ShoulderLeft", "HandLeft", "ShoulderRight", "HandRight", "HipLeft", "HipRight"]
    camel.write_text(json.dumps({"joints": joints, "bones": [[1, j] for j in range(2, 8)], "center": "Head"}))
    assert body_parts(str(camel))["right_arm"] == (3, 4)


def test_augmentation_off_draws_nothing_and_returns_the_input():
    aug, g, x = Augmentation(), gen(0), sample()
    state = g.get_state()
    out, partner, lam = aug.apply(x, g, "ntu25")
    assert not aug.enabled and out is x and partner is None and lam is None
    assert torch.equal(g.get_state(), state)


def test_augmentation_apply_is_seeded_and_mixes_with_probability_one():
    aug, x = Augmentation(rotate=0.3, scale=0.1, shear=0.2, crop=[0.5, 1.0], skelemix=1.0), sample()
    assert aug.enabled and aug.crop == (0.5, 1.0)
    out, partner, lam = aug.apply(x, gen(0), "ntu25")
    again = aug.apply(x, gen(0), NTU25)
    assert torch.equal(out, again[0]) and torch.equal(partner, again[1]) and torch.equal(lam, again[2])
    assert out.shape == x.shape and partner.shape == lam.shape == (4,)
    plain = Augmentation(rotate=0.3).apply(x, gen(0), "ntu25")
    assert plain[1] is None and plain[2] is None and not torch.equal(plain[0], x)


@pytest.mark.parametrize("kwargs,key", [
    ({"rotate": -0.1}, "aug_rotate"), ({"rotate": 4.0}, "aug_rotate"), ({"scale": 1.0}, "aug_scale"),
    ({"shear": -1.0}, "aug_shear"), ({"crop": (0.0, 1.0)}, "aug_crop"), ({"crop": (0.9, 0.5)}, "aug_crop"),
    ({"crop": (0.5, 1.2)}, "aug_crop"), ({"crop": 0.5}, "aug_crop"), ({"skelemix": 1.5}, "skelemix")])
def test_augmentation_ranges_are_checked(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Augmentation(**kwargs)
