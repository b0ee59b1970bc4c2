"""UTD-MHAD and NW-UCLA readers on the real recordings, and the Kinect v1 layout."""
import collections
import json
import re

import numpy as np
import pytest
import scipy.io

from conftest import shared
from data.kinect_v1 import (NWUCLA_ACTIONS, UTD_TO_KINECT20, NWUCLASource, UTDMHADSource, read_nwucla, read_utd)
from data.raw import RawFormatError, Sequence, Skip
from module.graph import KINECT20, hop_distance


def test_kinect20_is_a_connected_tree():
    assert KINECT20.num_joints == 20 and len(KINECT20.edges) == 19
    assert np.isfinite(hop_distance(20, KINECT20.edges, 20)).all()
    assert KINECT20.joints[KINECT20.center] == "shoulder_center"


def test_utd_joint_order_file_maps_onto_kinect20():
    text = shared("utd_mhad", "Skeleton_joint_order.txt").read_text()
    utd = [m.group(1) for m in re.finditer(r"^\s*\d+\.\s*([a-z_]+);", text, re.M)]
    assert len(utd) == 20
    # UTD's "left_shoulder" is kinect20's "shoulder_left", "spine" is "spine", ...
    canon = [n if "_" not in n or n.split("_")[0] not in ("left", "right") else f"{n.split('_', 1)[1]}_{n.split('_')[0]}"
             for n in utd]
    assert [canon[UTD_TO_KINECT20[k]] for k in range(20)] == list(KINECT20.joints)


def test_utd_reader_on_every_real_file():
    src = UTDMHADSource(str(shared("utd_mhad")))
    items = src.items()
    assert len(items) == 861 and not src.excluded
    per_action, lengths = collections.Counter(), []
    for it in items:
        (seq,) = src.read(it)
        assert isinstance(seq, Sequence), getattr(seq, "reason", "")
        raw = scipy.io.loadmat(it.path)["d_skel"]  # (20, 3, T), UTD order
        assert seq.joints.shape == (1, raw.shape[2], 20, 3)
        np.testing.assert_array_equal(seq.joints[0, :, 3], raw[0].T)   # UTD joint 1 (head) → kinect20 head
        np.testing.assert_array_equal(seq.joints[0, :, 0], raw[3].T)   # UTD joint 4 (hip centre) → hip_center
        np.testing.assert_array_equal(seq.joints[0, :, 4:], raw[4:].transpose(2, 0, 1))
        a, s, t = (int(g) for g in re.match(r"a(\d+)_s(\d+)_t(\d+)", it.key).groups())
        assert seq.label == a - 1 and seq.meta == {"subject": s, "trial": t}
        assert seq.train == {"xsub": s in (1, 3, 5, 7)}
        per_action[a] += 1
        lengths.append(raw.shape[2])
    assert min(lengths) == 41 and max(lengths) == 125
    assert sorted(a for a, n in per_action.items() if n == 31) == [8, 23, 27]
    assert all(n == 32 for a, n in per_action.items() if a not in (8, 23, 27))
    # the head is above the shoulders, the shoulders above the hips (y is up)
    y = seq.joints[0, 0, :, 1]
    assert y[3] > y[2] > y[1] > y[0] > y[14]


def test_nwucla_reader_on_every_real_file():
    src = NWUCLASource(str(shared("nw_ucla", "all_sqe")))
    items = src.items()
    assert len(items) == 1484 and not src.excluded
    lengths, views = [], collections.Counter()
    for it in items:
        (seq,) = src.read(it)
        assert isinstance(seq, Sequence), getattr(seq, "reason", "")
        doc = json.loads(open(it.path).read())
        assert seq.joints.shape == (1, len(doc["skeletons"]), 20, 3)
        a, s, e, v = (int(g) for g in re.match(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)", it.key).groups())
        assert NWUCLA_ACTIONS[seq.label] == a and doc["label"] == seq.label + 1
        assert seq.train == {"xview": v in (1, 2)} and seq.meta["view"] == v
        lengths.append(seq.joints.shape[1])
        views[v] += 1
    assert min(lengths) == 1 and max(lengths) == 201 and sum(n < 10 for n in lengths) == 10
    assert views == {1: 516, 2: 504, 3: 464}


def test_bad_kinect_v1_files(tmp_path):
    scipy.io.savemat(tmp_path / "a1_s1_t1_skeleton.mat", {"d_skel": np.zeros((25, 3, 10))})
    with pytest.raises(RawFormatError, match=r"d_skel has shape \(25, 3, 10\), expected \(20, 3, T\)"):
        read_utd(tmp_path / "a1_s1_t1_skeleton.mat")
    scipy.io.savemat(tmp_path / "a2_s1_t1_skeleton.mat", {"other": np.zeros(3)})
    (tmp_path / "a3_s1_t1_skeleton.mat").write_bytes(b"not a mat file")
    scipy.io.savemat(tmp_path / "a28_s1_t1_skeleton.mat", {"d_skel": np.ones((20, 3, 10))})
    (tmp_path / "readme_skeleton.mat").write_bytes(b"")
    src = UTDMHADSource(str(tmp_path))
    items = src.items()
    assert [s.name for s in src.excluded] == ["readme_skeleton"]
    reasons = {it.key: r.reason for it in items for r in src.read(it) if isinstance(r, Skip)}
    assert "no 'd_skel' array" in reasons["a2_s1_t1_skeleton"]
    assert "not a readable MATLAB file" in reasons["a3_s1_t1_skeleton"]
    assert "action 28 outside 1..27" in reasons["a28_s1_t1_skeleton"]

    (tmp_path / "a01_s01_e00_v01.json").write_text(json.dumps({"skeletons": [[[0, 0, 0]] * 20] * 3, "label": 2}))
    (tmp_path / "a07_s01_e00_v01.json").write_text(json.dumps({"skeletons": []}))
    (tmp_path / "a02_s01_e00_v01.json").write_text("{broken")
    (tmp_path / "a03_s01_e00_v01.json").write_text(json.dumps({"skeletons": [[[1, 2]] * 20]}))
    src = NWUCLASource(str(tmp_path))
    items = src.items()
    assert [s.reason for s in src.excluded] == ["action a07 is not one of NW-UCLA's 10"]
    reasons = {it.key: r.reason for it in items for r in src.read(it) if isinstance(r, Skip)}
    assert "'label' 2 does not match action a01" in reasons["a01_s01_e00_v01"]
    assert "invalid JSON" in reasons["a02_s01_e00_v01"]
    assert "expected (T, 20, 3)" in reasons["a03_s01_e00_v01"]
    assert read_nwucla(tmp_path / "a07_s01_e00_v01.json")[0].shape == (1, 0, 20, 3)
