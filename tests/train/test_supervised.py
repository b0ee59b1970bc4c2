"""The supervised track, score ensembles, and the streams / augmentation / FR-Head options of the
zero-shot track, end to end on tiny shapes (``ex.run``)."""
import numpy as np
import pytest
import torch

from main import ex

TINY = dict(train_mode="supervised", dataset="demo", epoch_num=1, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1)


def run(tmp_path, name, **updates):
    cfg = {**TINY, "out_dir": str(tmp_path / name), **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sup")
    joint = run(tmp, "joint", modality="joint", fr_head=True, skelemix=1.0, aug_rotate=0.3)
    bone = run(tmp, "bone", modality="bone")
    return tmp, joint, bone


def test_tiny_supervised_run_reports_top1_top5_and_saves_its_scores(two_streams):
    _, res, _ = two_streams
    assert res["train_mode"] == "supervised" and res["protocol"] == "xsub" and res["selection"] == "val"
    assert res["fr_head"] is True and res["modality"] == "joint"
    assert res["num_test_samples"] == 30 * 4 * 10  # 4 test subjects x 10 repetitions per class
    assert res["num_val_samples"] == 30 * 3  # 10% of each class's 32 training samples, rounded: 3
    assert 0.0 <= res["test_top1"] <= res["test_top5"] <= 100.0
    z = np.load(res["scores"])
    assert z["scores"].shape == (1200, 30) and str(z["modality"]) == "joint"
    pred = z["scores"].argmax(1)
    assert 100.0 * (pred == z["labels"]).mean() == pytest.approx(res["test_top1"])
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert any(k.startswith("fr_head.") for k in ckpt["model"])  # FR-Head's parameters and memory are saved
    assert ckpt["config"]["modality"] == "joint"


def test_ensemble_of_two_recorded_runs_is_the_weighted_sum_of_their_saved_scores(two_streams):
    tmp, joint, bone = two_streams
    res = ex.run(config_updates={"train_mode": "ensemble", "dataset": "demo", "out_dir": str(tmp / "ens"),
                                 "ensemble_members": [str(tmp / "joint"), bone["scores"]],
                                 "ensemble_weights": [0.3, 0.7]}, options={"--loglevel": "ERROR"}).result
    a, b = np.load(joint["scores"]), np.load(bone["scores"])
    fused = np.load(res["scores"])["scores"]
    np.testing.assert_allclose(fused, 0.3 * a["scores"].astype(np.float64) + 0.7 * b["scores"], rtol=1e-6)
    top1 = 100.0 * (fused.argmax(1) == a["labels"]).mean()
    assert res["ensemble_top1"] == pytest.approx(top1) and res["weight_rule"] == "given"
    assert [m["modality"] for m in res["members"]] == ["joint", "bone"]
    assert res["members"][1]["top1"] == pytest.approx(bone["test_top1"])


def test_ensemble_refuses_members_that_score_other_samples(two_streams, tmp_path):
    tmp, joint, _ = two_streams
    z = dict(np.load(joint["scores"]))
    np.savez(tmp_path / "other.npz", **{**z, "labels": z["labels"][::-1].copy()})
    with pytest.raises(ValueError, match="scores other samples or classes"):
        ex.run(config_updates={"train_mode": "ensemble", "out_dir": str(tmp_path / "e"),
                               "ensemble_members": [joint["scores"], str(tmp_path / "other.npz")]},
               options={"--loglevel": "ERROR"})
    assert not (tmp_path / "e").exists()  # a refused ensemble leaves no run folder behind


def test_ensemble_refuses_members_of_another_dataset_than_its_own(two_streams, tmp_path):
    tmp, joint, bone = two_streams
    z = dict(np.load(bone["scores"]))
    np.savez(tmp_path / "ucla.npz", **{**z, "dataset": np.asarray("nw_ucla")})
    with pytest.raises(ValueError, match=r"different datasets \['demo', 'nw_ucla'\]"):
        ex.run(config_updates={"train_mode": "ensemble", "out_dir": str(tmp_path / "e"),
                               "ensemble_members": [joint["scores"], str(tmp_path / "ucla.npz")]},
               options={"--loglevel": "ERROR"})
    np.savez(tmp_path / "ucla2.npz", **{**dict(np.load(joint["scores"])), "dataset": np.asarray("nw_ucla")})
    with pytest.raises(ValueError, match="members are nw_ucla runs but dataset='demo': pass dataset=nw_ucla"):
        ex.run(config_updates={"train_mode": "ensemble", "out_dir": str(tmp_path / "e"),
                               "ensemble_members": [str(tmp_path / "ucla2.npz"), str(tmp_path / "ucla.npz")]},
               options={"--loglevel": "ERROR"})
    assert not (tmp_path / "e").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is the user's: left in place
    with pytest.raises(ValueError, match="different datasets"):
        ex.run(config_updates={"train_mode": "ensemble", "out_dir": str(tmp_path / "kept"),
                               "ensemble_members": [joint["scores"], str(tmp_path / "ucla.npz")]},
               options={"--loglevel": "ERROR"})
    assert (tmp_path / "kept").is_dir()


def test_default_ensemble_weights_are_frhead_s_by_stream():
    from experiments.suite.ensemble import default_weights

    members = [{"dataset": "nw_ucla", "protocol": "xview", "modality": m}
               for m in ("bone_motion", "joint", "joint_motion", "bone")]
    assert default_weights(members) == ([0.4, 0.6, 0.4, 0.6], "FR-Head ensemble.py weights for nw_ucla xview")
    assert default_weights(members[:1] * 2)[1] == "equal weights"


@pytest.mark.parametrize("updates,match", [
    ({"selection": "best"}, "selection must be one of"),
    ({"val_fraction": 0.0}, "needs a validation part"),
    ({"modality": "velocity"}, "velocity"),
    ({"aug_crop": [0.0, 1.0]}, "aug_crop"),
])
def test_bad_supervised_settings_fail_before_training(tmp_path, updates, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, "bad", **updates)
    assert not (tmp_path / "bad" / "best.pt").exists()


def test_zero_shot_track_accepts_streams_augmentation_skelemix_and_frhead(text_root, tmp_path):
    res = ex.run(config_updates={"data_root": str(text_root), "out_dir": str(tmp_path / "zs"), "text_model": "minilm",
                                 "text_kind": "labels", "epoch_num": 1, "hidden_channels": 4, "out_channels": 16,
                                 "max_frame": 8, "batch_size": 64, "modality": "bone_motion", "fr_head": True,
                                 "skelemix": 1.0, "aug_rotate": 0.3, "aug_scale": 0.1, "aug_shear": 0.2,
                                 "aug_crop": [0.5, 1.0]}, options={"--loglevel": "ERROR"}).result
    assert 0.0 <= res["unseen_top1"] <= 100.0
    z = np.load(tmp_path / "zs" / "unseen_scores.npz")
    assert z["scores"].shape == (200, 5) and str(z["modality"]) == "bone_motion"


def test_val_seed_on_a_split_that_records_its_validation_classes_is_refused(text_root, tmp_path):
    tiny = {"data_root": str(text_root), "text_model": "minilm", "text_kind": "labels", "epoch_num": 1,
            "hidden_channels": 4, "out_channels": 16, "max_frame": 8, "batch_size": 64}
    # demo's split 1 records [3, 10, 17, 18, 25]: another val_seed would silently train the same run
    with pytest.raises(ValueError, match=r"val_seed=1 changes nothing: demo split 1 records its validation classes "
                                         r"\[3, 10, 17, 18, 25\]; .* give val_classes=\[\.\.\.\]"):
        ex.run(config_updates={**tiny, "out_dir": str(tmp_path / "x"), "val_seed": 1}, options={"--loglevel": "ERROR"})
    assert not (tmp_path / "x" / "best.pt").exists()
    # another draw is given as the classes themselves
    res = ex.run(config_updates={**tiny, "out_dir": str(tmp_path / "y"), "val_classes": [1, 2, 4, 5, 6]},
                 options={"--loglevel": "ERROR"}).result
    assert res["val_classes"] == [1, 2, 4, 5, 6]


def test_skelemix_needs_a_loss_with_mixed_targets(text_root, tmp_path):
    with pytest.raises(ValueError, match="mixed targets are defined for"):
        ex.run(config_updates={"data_root": str(text_root), "out_dir": str(tmp_path / "x"), "text_model": "minilm",
                               "text_kind": "labels", "epoch_num": 1, "hidden_channels": 4, "skelemix": 0.5,
                               "loss_type": "klv2"}, options={"--loglevel": "ERROR"})
