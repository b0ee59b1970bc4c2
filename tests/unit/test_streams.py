import json

import pytest
import torch

from data.streams import MODALITIES, check_modality, to_modality
from module.graph import KINECT20

# A 4-joint chain a-b-c-d centred on b: parents a->b, b->b (root), c->b, d->c.
CHAIN = {"joints": ["a", "b", "c", "d"], "bones": [["a", "b"], ["b", "c"], ["c", "d"]], "center": "b"}

# Joint positions (x, y), frame by frame, joints a, b, c, d.
JOINTS = [
    [[0, 0], [1, 0], [1, 2], [3, 2]],
    [[0, 1], [1, 1], [2, 3], [4, 3]],
    [[1, 1], [2, 1], [2, 4], [5, 5]],
]
# joint - parent: a-b, 0, c-b, d-c
BONES = [
    [[-1, 0], [0, 0], [0, 2], [2, 0]],
    [[-1, 0], [0, 0], [1, 2], [2, 0]],
    [[-1, 0], [0, 0], [0, 3], [3, 1]],
]
# next frame - this frame, the last frame zero
JOINT_MOTION = [
    [[0, 1], [0, 1], [1, 1], [1, 1]],
    [[1, 0], [1, 0], [0, 1], [1, 2]],
    [[0, 0], [0, 0], [0, 0], [0, 0]],
]
BONE_MOTION = [
    [[0, 0], [0, 0], [1, 0], [0, 0]],
    [[0, 0], [0, 0], [-1, 1], [1, 1]],
    [[0, 0], [0, 0], [0, 0], [0, 0]],
]


def batch(frames: list, shift: float = 10.0) -> torch.Tensor:
    """(T, V, C) lists -> (1, C, T, V, 2); the second person is the first moved by ``shift``."""
    one = torch.tensor(frames, dtype=torch.float32).permute(2, 0, 1)  # (C, T, V)
    return torch.stack([one, one + shift], dim=-1)[None]  # (1, C, T, V, M)


@pytest.fixture
def chain_file(tmp_path):
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(CHAIN))
    return str(path)


@pytest.mark.parametrize("modality,expected", [
    ("joint", JOINTS), ("bone", BONES), ("joint_motion", JOINT_MOTION), ("bone_motion", BONE_MOTION)])
def test_streams_match_the_hand_computation(chain_file, modality, expected):
    x = batch(JOINTS)
    before = x.clone()
    out = to_modality(x, modality, chain_file)
    # the second person is a translate of the first: its bones and motion are the same
    want = batch(expected, shift=10.0 if modality == "joint" else 0.0)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert torch.equal(x, before)


def test_kinect20_centre_bone_and_last_motion_frame_are_zero():
    x = torch.randn(2, 3, 6, KINECT20.num_joints, 2, generator=torch.Generator().manual_seed(0))
    bones = to_modality(x, "bone", "kinect20")
    assert torch.all(bones[:, :, :, KINECT20.center] == 0)
    assert torch.count_nonzero(bones) == bones.numel() - bones[:, :, :, 0].numel()  # only the root's bone
    for modality in ("joint_motion", "bone_motion"):
        out = to_modality(x, modality, "kinect20")
        assert out.shape == x.shape and torch.all(out[:, :, -1] == 0)
    torch.testing.assert_close(to_modality(x, "joint_motion", KINECT20)[:, :, 2], x[:, :, 3] - x[:, :, 2])


def test_modality_names_are_checked():
    assert MODALITIES == ("joint", "bone", "joint_motion", "bone_motion")
    assert check_modality("bone") == "bone"
    with pytest.raises(ValueError, match="joint_motion"):
        check_modality("velocity")
    with pytest.raises(ValueError, match="bone_motion"):
        to_modality(torch.zeros(1, 3, 2, 20, 1), "motion", "kinect20")


def test_joint_count_must_match_the_layout():
    with pytest.raises(ValueError, match="25 joints"):
        to_modality(torch.zeros(1, 3, 2, 20, 1), "bone", "ntu25")
