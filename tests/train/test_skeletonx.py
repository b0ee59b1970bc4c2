"""SkeletonX's cross-sample aggregation (module/skeletonx.py): the pairing rule, the decoupled
classifier, and a tiny limited-scale run with it."""
import numpy as np
import pytest
import torch

from main import ex
from module import build_backbone
from module.skeletonx import DecoupleClassifier, pair_partners

OPTS = {"--loglevel": "ERROR"}


def test_partners_share_the_action_or_the_performer_and_fall_back_where_none_exists():
    # action, performer: class 0 by performers 1 and 2; class 1 only by performer 1; class 2 only by performer 3
    labels = np.array([0, 0, 0, 1, 1, 2])
    performers = np.array([1, 1, 2, 1, 1, 3])
    rng = np.random.default_rng(0)
    for _ in range(20):
        sadp, dasp, fell = pair_partners(labels, performers, np.arange(6), choose=rng.choice)
        assert (labels[sadp] == labels).all()  # SADP: always the same action
        assert (performers[sadp[:3]] != performers[:3]).all()  # ... by another performer where one exists
        assert (performers[sadp[3:]] == performers[3:]).all()  # class 1, class 2: only their own performer
        mine = [0, 1, 3, 4]  # DASP: the same performer, another action
        assert (performers[dasp[mine]] == performers[mine]).all() and (labels[dasp[mine]] != labels[mine]).all()
        assert labels[dasp[2]] == 0 and labels[dasp[5]] == 2  # performers 2 and 3 did one action: the same action
        assert fell == {"sadp_same_performer": 3, "dasp_same_action": 2}
    sadp_a = pair_partners(labels, performers, np.arange(6), choose=np.random.default_rng(5).choice)[0]
    sadp_b = pair_partners(labels, performers, np.arange(6), choose=np.random.default_rng(5).choice)[0]
    assert np.array_equal(sadp_a, sadp_b)  # the draw follows its generator


def test_the_decoupled_classifier_classifies_swapped_performer_and_action_features():
    torch.manual_seed(0)
    model = DecoupleClassifier(build_backbone("stgcn", graph_layout="ntu25", hidden_channels=4, out_channels=16),
                               num_classes=5).eval()
    x = torch.randn(3, 3, 8, 25, 2)
    subject, action = model.decouple(x)
    assert subject.shape == action.shape == (3, 8)
    assert torch.allclose(model(x), model.from_parts(subject, action))
    swapped = model.from_parts(subject[[1, 0, 2]], action)  # [subject of another sample, own action]
    assert torch.allclose(swapped[2], model(x)[2]) and not torch.allclose(swapped[0], model(x)[0])


@pytest.mark.slow
def test_a_limited_scale_run_with_aggregation(tmp_path):
    res = ex.run(config_updates={"train_mode": "supervised", "dataset": "demo", "epoch_num": 1, "hidden_channels": 4,
                                 "out_channels": 16, "max_frame": 8, "batch_size": 16, "warmup_epochs": 1,
                                 "samples_per_class": 3, "aggregation": True, "out_dir": str(tmp_path / "x")},
                 options=OPTS).result
    assert res["aggregation"] is True and res["num_train_samples"] == 90 and res["aggregation_weight"] == 0.1
    assert set(res["pair_fallbacks"]) == {"sadp_same_performer", "dasp_same_action"}
    assert 0.0 <= res["test_top1"] <= 100.0
    sd = torch.load(res["checkpoint"], weights_only=True)["model"]
    assert any(k.startswith("subject_branch.") for k in sd) and any(k.startswith("action_branch.") for k in sd)


@pytest.mark.slow
def test_zero_shot_and_one_shot_runs_with_aggregation_and_its_checkpoint_evaluated(text_root, tmp_path):
    from data.arrays import performer_path
    from data.catalog import split_dir

    assert performer_path(split_dir(text_root, "demo", 1), "seen_train").is_file()  # the demo names performers
    base = {"dataset": "demo", "data_root": str(text_root), "epoch_num": 1, "hidden_channels": 4, "out_channels": 16,
            "max_frame": 8, "batch_size": 32, "warmup_epochs": 1, "text_model": "minilm", "text_kind": "labels",
            "monitor_unseen": False, "aggregation": True, "samples_per_class": 4}
    res = ex.run(config_updates={**base, "out_dir": str(tmp_path / "zs")}, options=OPTS).result
    assert res["aggregation"] is True and set(res["train_per_class"].values()) == {4}
    assert set(res["pair_fallbacks"]) == {"sadp_same_performer", "dasp_same_action"}
    sd = torch.load(res["checkpoint"], weights_only=True)["model"]
    assert any(k.startswith("action_branch.") for k in sd)
    again = ex.run(config_updates={"train_mode": "test", "checkpoint": res["checkpoint"], "data_root": str(text_root),
                                   "out_dir": str(tmp_path / "t")}, options=OPTS).result
    assert again["unseen_top1"] == pytest.approx(res["unseen_top1"])  # the decoupled model rebuilt from its config
    one = ex.run(config_updates={**base, "train_mode": "one_shot", "out_dir": str(tmp_path / "os")}, options=OPTS).result
    assert one["aggregation"] is True and 0.0 <= one["one_shot_top1_exemplar"] <= 100.0
