"""Auxiliary training classes from another dataset (data/auxiliary.py): the joint mapping between
layouts, the conversion of samples, the exclusion of classes near a held-out class, and the errors."""
import json

import numpy as np
import pytest

from data.auxiliary import AuxiliaryError, aux_names, convert, joint_map, load_auxiliary, select_classes
from module.graph import get_layout


def write_samples(root, dataset: str, labels: list[int], shape=(3, 50, 25, 2), seed: int = 0):
    """A stage-1 sample folder written by hand (what ``prepare ... raw.splits=none`` leaves)."""
    d = root / "samples" / dataset / f"T{shape[1]}"
    d.mkdir(parents=True)
    x = np.random.default_rng(seed).normal(size=(len(labels), *shape)).astype(np.float32)
    np.save(d / "shard_00000.npy", x)
    (d / "shard_00000.json").write_text(json.dumps({"rows": [{"name": f"s{i}", "label": int(c)}
                                                             for i, c in enumerate(labels)]}))
    (d / "manifest.json").write_text(json.dumps({"dataset": dataset, "shards": 1, "sample_shape": list(shape),
                                                 "protocols": ["xsub"]}))
    return x


def test_kinect_v2_joints_map_onto_kinect_v1_by_name_and_the_trunk_aliases():
    idx = joint_map("ntu25", "kinect20")
    src, dst = get_layout("ntu25").joints, get_layout("kinect20").joints
    assert len(idx) == 20 and len(set(idx)) == 20
    named = {d: src[i] for d, i in zip(dst, idx)}
    assert named["hip_center"] == "spine_base" and named["spine"] == "spine_mid"
    assert named["shoulder_center"] == "spine_shoulder" and named["head"] == "head"
    assert all(named[j] == j for j in dst if j not in ("hip_center", "spine", "shoulder_center"))
    assert joint_map("ntu25", "ntu25") == list(range(25))
    with pytest.raises(AuxiliaryError, match=r"no joint for \['neck', 'handtip_left', 'thumb_left'"):
        joint_map("kinect20", "ntu25")  # Kinect v1 has no neck, hand tips or thumbs


def test_convert_picks_joints_cuts_persons_and_recentres_on_the_first_present_frame():
    x = np.zeros((2, 3, 4, 3, 2), np.float32)
    x[0, :, 1:, :, 0] = np.arange(3 * 3 * 3, dtype=np.float32).reshape(3, 3, 3) + 1  # actor 0 from frame 1 on
    x[0, :, :, :, 1] = 7.0  # actor 1: dropped when one person is kept
    x[1, :, :, :, 0] = 2.0
    out = convert(x, joints=[2, 0], persons=1, origin=1)  # new joint 1 = old joint 0
    assert out.shape == (2, 3, 4, 2, 1)
    assert np.all(out[0, :, 0] == 0)  # the frame where actor 0 is absent stays zero
    assert np.allclose(out[0, :, 1, 1, 0], 0)  # the origin of the first present frame is (0, 0, 0)
    assert np.allclose(out[0, :, 1:, 0, 0] - out[0, :, 1:, 1, 0], x[0, :, 1:, 2, 0] - x[0, :, 1:, 0, 0])  # shape kept
    assert np.allclose(out[1], 0)  # a rigid sample at one place becomes all zero
    wide = convert(x, joints=[0, 1, 2], persons=3, origin=0)
    assert wide.shape[-1] == 3 and np.all(wide[..., 2] == 0)  # missing actors are zero-filled
    # actor 1 moves with actor 0's origin in every frame it is present
    assert np.allclose(wide[0, :, :, :, 1], 7.0 - x[0, :, 1, 0, 0][:, None, None])


def test_classes_near_a_held_out_class_are_left_out_and_the_others_kept():
    target = np.eye(4, dtype=np.float32)  # target classes 0..3
    aux = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.6, 0, 0.8, 0], [0, 0, 0, 1]], np.float32) * 3.0
    kept, excluded = select_classes(aux, target, present=[0, 1, 2, 3], held_out=[0, 2], max_similarity=0.7)
    # aux 0 = target 0 (held out); aux 2: cos 0.8 with target 2 (held out); aux 1 is target 1 (seen: kept)
    assert kept == [1, 3]
    assert excluded == {0: {"near": 0, "similarity": 1.0}, 2: {"near": 2, "similarity": 0.8}}
    kept, excluded = select_classes(aux, target, present=[1, 2], held_out=[0, 2], max_similarity=0.9)
    assert kept == [1, 2] and excluded == {}  # 0.8 < 0.9; classes absent from the samples are not considered
    assert select_classes(aux, target, present=[3, 0], held_out=[], max_similarity=0.5) == ([0, 3], {})


def test_load_auxiliary_converts_the_kept_classes_and_records_what_it_left_out(tmp_path):
    x = write_samples(tmp_path, "ntu120", [0, 0, 1, 5, 5, 5])
    rows = {"ntu120": np.eye(120, 16, dtype=np.float32), "utd_mhad": np.eye(27, 16, 1, dtype=np.float32)}
    aux = load_auxiliary(tmp_path, "ntu120", "utd_mhad", held_out=[0, 3], frames=20,  # utd 0 ~ ntu 1 here
                         labels_of=lambda ds, k: rows[ds][:k], max_similarity=0.5)
    assert aux.kept == [0, 5] and aux.excluded == {1: {"near": 0, "similarity": 1.0}}
    assert aux.y.tolist() == [0, 0, 5, 5, 5] and aux.x.shape == (5, 3, 20, 20, 1)
    assert aux.record() == {"samples": 5, "classes": 2, "excluded": {"1": aux.excluded[1]}}
    same = load_auxiliary(tmp_path, "ntu120", "utd_mhad", [0, 3], 50, lambda ds, k: rows[ds][:k], 0.5)
    ref = convert(x[[0, 1, 3, 4, 5]], joint_map("ntu25", "kinect20"), 1, 1)
    assert np.allclose(same.x, ref)  # at the prepared length, no resampling
    with pytest.raises(AuxiliaryError, match="nothing is left to train on"):
        load_auxiliary(tmp_path, "ntu120", "utd_mhad", [0, 3], 50, lambda ds, k: np.ones((k, 4), np.float32), 0.5)


def test_bad_auxiliary_requests_are_named(tmp_path):
    rows = lambda ds, k: np.eye(k, 8, dtype=np.float32)  # noqa: E731
    with pytest.raises(AuxiliaryError, match="the run's own dataset 'utd_mhad'"):
        load_auxiliary(tmp_path, "ntu120+utd_mhad", "utd_mhad", [0], 50, rows, 0.5)
    with pytest.raises(AuxiliaryError, match="names a dataset twice"):
        aux_names("ntu120+ntu120", "utd_mhad")
    assert aux_names("ntu120 + nw_ucla", "utd_mhad") == ["ntu120", "nw_ucla"]
    with pytest.raises(AuxiliaryError, match=r"aux_max_similarity must be in \(0, 1\]"):
        load_auxiliary(tmp_path, "ntu120", "utd_mhad", [0], 50, rows, 1.5)
    with pytest.raises(AuxiliaryError, match="no prepared samples.*prepare with dataset=ntu120 raw.path=.* raw.splits=none"):
        load_auxiliary(tmp_path, "ntu120", "utd_mhad", [0], 50, rows, 0.5)
    with pytest.raises(ValueError, match="unknown dataset|not a known|no dataset"):
        load_auxiliary(tmp_path, "no_such_set", "utd_mhad", [0], 50, rows, 0.5)
