"""Setting 2 (train_mode="sota"): SynSE splits with their validation classes, 64 frames,
Shift-GCN by default, the same training loop; a tiny run end to end on the demo data."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.loading import resample_time
from main import ex


def config_of(**updates) -> dict:
    return ex.run("print_config", config_updates=updates, options={"--loglevel": "ERROR"}).config


@pytest.mark.parametrize("dataset,split,unseen,val", [
    ("ntu60", 5, [10, 11, 19, 26, 56], [16, 21, 25, 31, 48]),
    ("ntu60", 12, [3, 5, 9, 12, 15, 40, 42, 47, 51, 56, 58, 59], [4, 8, 10, 13, 17, 22, 30, 33, 39, 46, 50, 54]),
    ("ntu120", 10, [4, 13, 37, 43, 49, 65, 88, 95, 99, 106], [5, 10, 32, 61, 72, 74, 76, 77, 83, 96]),
    ("ntu120", 24, [5, 9, 11, 16, 18, 20, 22, 29, 35, 39, 45, 49, 59, 68, 70, 81, 84, 87, 93, 94, 104, 113, 114, 119],
     [1, 3, 4, 10, 17, 19, 27, 47, 48, 53, 58, 63, 66, 79, 83, 86, 89, 92, 97, 98, 100, 103, 105, 108]),
])
def test_synse_splits_with_their_validation_classes(dataset, split, unseen, val):
    cfg = config_of(train_mode="sota", dataset=dataset, split=split)
    assert cfg["unseen_classes"] == unseen and cfg["val_classes"] == val
    assert cfg["backbone"] == "shiftgcn" and cfg["hidden_channels"] == 64 and cfg["out_channels"] == 256
    assert cfg["max_frame"] == 64 and cfg["num_person"] == 2 and cfg["selection"] == "val"


def test_defaults_follow_dataset_and_backbone():
    cfg = config_of(train_mode="sota", dataset="ntu120")
    assert cfg["split"] == 10 and cfg["lr"] == 0.005 and cfg["support_factor"] == 0.4
    assert config_of(train_mode="sota", dataset="ntu60")["split"] == 5
    stgcn = config_of(train_mode="sota", dataset="ntu60", backbone="stgcn")
    assert stgcn["hidden_channels"] == 16 and stgcn["max_frame"] == 64
    named = ex.run("print_config", named_configs=["sota"], config_updates={"dataset": "ntu60"},
                   options={"--loglevel": "ERROR"}).config
    assert named["train_mode"] == "sota" and named["split"] == 5
    # Setting 1 is unchanged
    main = config_of(dataset="ntu60")
    assert main["backbone"] == "stgcn" and main["max_frame"] == 50 and main["hidden_channels"] == 16


def test_sota_refuses_a_split_that_is_not_synse():
    with pytest.raises(ValueError, match=r"SynSE splits of ntu60: \['5', '12'\]; got split=1"):
        config_of(train_mode="sota", dataset="ntu60", split=1)


def test_the_64_frame_stretch_is_the_originals():
    # PGFA stretches every batch with F.interpolate(scale_factor=(1.28, 1, 1), trilinear);
    # the loader resamples once, to max_frame, with the same interpolation
    x = np.random.default_rng(0).standard_normal((4, 3, 50, 25, 2)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), scale_factor=(1.28, 1, 1), mode="trilinear", align_corners=False)
    assert torch.equal(torch.from_numpy(resample_time(x, 64)), want)


@pytest.mark.slow
def test_tiny_sota_run_end_to_end(demo_root, tmp_path):
    cfg = dict(train_mode="sota", data_root=str(demo_root), out_dir=str(tmp_path / "ckpt"), text_model="minilm",
               text_kind="labels", epoch_num=2, hidden_channels=4, out_channels=32, batch_size=64, warmup_epochs=1,
               shift_impl="ref")
    run = ex.run(config_updates=cfg, options={"--loglevel": "ERROR"})
    res = run.result
    assert run.config["num_person"] == 1 and run.config["max_frame"] == 64  # demo arrays: one actor, 50 frames
    assert res["train_mode"] == "sota" and res["selection"] == "val"
    assert res["val_classes"] == [3, 10, 17, 18, 25] and res["unseen_classes"] == [0, 7, 14, 21, 28]
    for key in ("best_val_top1", "unseen_top1", "unseen_per_class_mean", "unseen_top1_aligned"):
        assert 0.0 <= res[key] <= 100.0, key
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert ckpt["config"]["backbone"] == "shiftgcn"
    ypos = ckpt["model"]["backbone.units.0.tcn.shift_in.ypos"]
    assert ypos.shape == (4,) and "backbone.units.0.gcn.shift_in" not in ckpt["model"]
