"""The built-in demo dataset: deterministic, valid, and zero-shot by construction."""
import numpy as np
import pytest

from data import demo
from data.arrays import ArraySpec, load_part
from data.catalog import dataset_splits, split_dir


def test_generation_is_deterministic_and_seeded():
    a, b, c = demo.generate(0, frames=20), demo.generate(0, frames=20), demo.generate(1, frames=20)
    np.testing.assert_array_equal(a["data"], b["data"])
    assert not np.array_equal(a["data"], c["data"])
    n = demo.NUM_CLASSES * (len(demo.TRAIN_SUBJECTS) * demo.REPS_TRAIN + len(demo.TEST_SUBJECTS) * demo.REPS_TEST)
    assert a["data"].shape == (n, 3, 20, 25, 1) and a["data"].dtype == np.float32
    assert np.isfinite(a["data"]).all()
    # translated so the first frame's spine-middle joint is the origin
    np.testing.assert_allclose(a["data"][:, :, 0, demo.SPINE_MID, 0], 0, atol=1e-6)
    assert np.bincount(a["label"]).min() == np.bincount(a["label"]).max()


def test_the_moving_part_moves_most():
    rng = np.random.default_rng(0)
    subj = demo.make_subject(rng)
    for part, joint in (("left_arm", 7), ("right_arm", 11), ("left_leg", 15), ("right_leg", 19)):
        seq = demo.render(part, "swing", subj, 50, rng)
        travel = np.linalg.norm(np.diff(seq, axis=0), axis=-1).sum(axis=0)  # (25,)
        ends = [7, 11, 15, 19]
        assert travel[joint] == max(travel[ends]), part


@pytest.mark.parametrize("split", sorted(dataset_splits("demo")))
def test_every_unseen_class_recombines_seen_parts_and_movements(split):
    spec = dataset_splits("demo")[split]
    train = set(range(demo.NUM_CLASSES)) - set(spec["unseen"]) - set(spec["val"])
    parts = {demo.class_of(c)[0] for c in train}
    moves = {demo.class_of(c)[1] for c in train}
    for c in spec["unseen"] + spec["val"]:
        p, m = demo.class_of(c)
        assert p in parts and m in moves
    assert not set(spec["unseen"]) & set(spec["val"])


def test_prepared_splits_pass_validation(demo_root):
    spec = ArraySpec(demo.NUM_CLASSES, 3, 25, 1)
    for key, s in dataset_splits("demo").items():
        assert demo.is_prepared(demo_root, key)
        d = split_dir(demo_root, "demo", key)
        unseen = set(s["unseen"])
        _, y = load_part(d, "seen_train", spec, allowed=set(range(30)) - unseen)
        _, uy = load_part(d, "unseen", spec, allowed=unseen, required=unseen)
        assert len(y) == 25 * len(demo.TRAIN_SUBJECTS) * demo.REPS_TRAIN
        assert len(uy) == 5 * len(demo.TEST_SUBJECTS) * demo.REPS_TEST
