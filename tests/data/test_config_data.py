"""Config entries of the new datasets and of the data commands."""
import pytest
from sacred.utils import ConfigAddedError

from conftest import shared
from data.prepare import prepare_dataset
from main import ex

OPTS = {"--loglevel": "ERROR"}


def config_of(**updates) -> dict:
    return ex.run("print_config", config_updates=updates, options=OPTS).config


@pytest.mark.parametrize("dataset,unseen,persons", [("utd_mhad", [0, 10, 12, 18, 24], 1), ("nw_ucla", [3, 4, 7], 1)])
def test_kinect_v1_datasets(dataset, unseen, persons):
    cfg = config_of(dataset=dataset)
    assert cfg["graph_layout"] == "kinect20" and cfg["split"] == 1 and cfg["unseen_classes"] == unseen
    assert cfg["batch_size"] == 32 and not set(cfg["val_classes"]) & set(unseen)
    assert cfg["raw"]["path"] == "" and cfg["new_split"]["seeds"] == [1, 2, 3]


def test_unknown_raw_keys_fail():
    with pytest.raises(ConfigAddedError):
        config_of(**{"raw.folder": "/x"})
    with pytest.raises(ConfigAddedError):
        config_of(**{"new_split.count": 3})


def test_prepare_command_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="set raw.path"):
        ex.run("prepare", config_updates={"dataset": "utd_mhad", "data_root": str(tmp_path)}, options=OPTS)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ex.run("prepare", config_updates={"dataset": "nw_ucla", "data_root": str(tmp_path),
                                          "raw.path": str(tmp_path / "nope")}, options=OPTS)
    with pytest.raises(ValueError, match="prepare_demo"):
        ex.run("prepare", config_updates={"data_root": str(tmp_path)}, options=OPTS)
    with pytest.raises(ValueError, match=r"raw.protocol='xset': utd_mhad supports \['xsub'\]"):
        prepare_dataset("utd_mhad", tmp_path, {"path": str(tmp_path), "protocol": "xset"})
    with pytest.raises(ValueError, match=r"split '7' is not defined for dataset 'utd_mhad'"):
        prepare_dataset("utd_mhad", tmp_path, {"path": str(tmp_path), "splits": [7]})


@pytest.mark.slow
def test_tiny_zero_shot_run_on_prepared_utd_mhad(tmp_path):
    """The prepared real arrays go through a whole run (1 epoch, a tiny model)."""
    prepare_dataset("utd_mhad", tmp_path, {"path": str(shared("utd_mhad")), "splits": ["2"]}, log=lambda m: None)
    res = ex.run(config_updates={"dataset": "utd_mhad", "split": 2, "data_root": str(tmp_path), "epoch_num": 1,
                                 "hidden_channels": 4, "out_channels": 32, "text_model": "minilm",
                                 "warmup_epochs": 1, "out_dir": str(tmp_path / "ckpt")}, options=OPTS).result
    assert res["unseen_classes"] == [2, 6, 7, 11, 19] and res["val_classes"] == [5, 14, 18, 20, 25]
    assert res["num_unseen_samples"] == 80 and 0 <= res["unseen_top1_aligned"] <= 100
    # the training part's performers (UTD-MHAD's subjects; xsub trains on the odd ones) for SkeletonX's pairing
    import numpy as np

    from data.arrays import performer_path
    from data.catalog import split_dir

    perf = np.load(performer_path(split_dir(tmp_path, "utd_mhad", 2), "seen_train"))
    labels = np.load(split_dir(tmp_path, "utd_mhad", 2) / "seen_train_label.npy")
    assert perf.shape == labels.shape and len(np.unique(perf)) == 4  # subjects 1, 3, 5, 7


def test_small_dataset_defaults_and_paper_defaults_elsewhere():
    """NW-UCLA's default text is the ensemble, UTD-MHAD's text model MiniLM, both small datasets' selection the
    snapshot ensemble, NW-UCLA's with trainval (chosen on validation classes: docs/zeroshot_small.md); an
    override still wins; a dataset's selection is a zero-shot default only; the NTU/demo configs keep the
    paper's settings."""
    assert config_of(dataset="nw_ucla")["text_kind"] == "labels+des+parts"
    assert config_of(dataset="utd_mhad")["text_model"] == "minilm"
    assert config_of(dataset="nw_ucla")["text_model"] == "mpnet"
    assert config_of(dataset="utd_mhad", text_model="mpnet")["text_model"] == "mpnet"
    assert config_of(dataset="nw_ucla", text_kind="des")["text_kind"] == "des"
    assert config_of(dataset="utd_mhad")["selection"] == config_of(dataset="nw_ucla")["selection"] == "snapshot"
    assert config_of(dataset="utd_mhad", selection="val")["selection"] == "val"
    assert config_of(dataset="utd_mhad", train_mode="supervised")["selection"] == "val"
    assert config_of(dataset="utd_mhad", train_mode="pretrain")["selection"] == "last"
    # NW-UCLA trains on its validation classes too, with the snapshot ensemble only (nothing else to pick on)
    assert config_of(dataset="nw_ucla")["trainval"] is True and config_of(dataset="utd_mhad")["trainval"] is False
    assert config_of(dataset="nw_ucla", selection="val")["trainval"] is False
    assert config_of(dataset="nw_ucla", train_mode="supervised")["trainval"] is False
    for ds in ("utd_mhad", "ntu60", "demo"):
        cfg = config_of(dataset=ds)
        assert cfg["part_align"] is False and cfg["text_kind"] == "des" and cfg["weight_average"] == "none"
        assert (cfg["text_model"] == "mpnet") == (ds != "utd_mhad")
        assert cfg["conse"] is False and (cfg["selection"] == "val") == (ds != "utd_mhad")
