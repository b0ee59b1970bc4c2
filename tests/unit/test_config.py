"""The Sacred configuration: derived entries follow dataset/split, bad values fail early."""
import pytest
from sacred.utils import ConfigAddedError

from main import ex


def config_of(**updates) -> dict:
    return ex.run("print_config", config_updates=updates, options={"--loglevel": "ERROR"}).config


def test_ntu60_split2():
    cfg = config_of(dataset="ntu60", split=2)
    assert cfg["unseen_classes"] == [12, 29, 32, 44, 59]
    assert cfg["lr"] == 0.05 and cfg["support_factor"] == 0.9
    assert len(cfg["val_classes"]) == 5 and not set(cfg["val_classes"]) & set(cfg["unseen_classes"])


def test_ntu120_switches_everything():
    cfg = config_of(dataset="ntu120", split=4)
    assert cfg["unseen_classes"] == [3, 18, 26, 38, 41, 60, 87, 99, 102, 110]
    assert cfg["lr"] == 0.005 and cfg["support_factor"] == 0.4
    assert cfg["epoch_num"] == 50 and cfg["batch_size"] == 128
    assert config_of(dataset="ntu120")["split"] == 4  # the dataset's first Setting-1 split


def test_named_config_and_overrides_win():
    cfg = ex.run("print_config", named_configs=["pku"], config_updates={"lr": 0.01}, options={"--loglevel": "ERROR"}).config
    assert cfg["dataset"] == "pku" and cfg["support_factor"] == 1.0 and cfg["lr"] == 0.01
    assert cfg["unseen_classes"] == [1, 9, 20, 34, 50]


def test_text_dim_follows_the_text_model():
    assert config_of(text_model="minilm")["text_dim"] == 384
    assert config_of()["text_dim"] == 768


def test_unknown_key_and_values_fail():
    with pytest.raises(ConfigAddedError):
        config_of(learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown train_mode 'pretraining'"):
        config_of(train_mode="pretraining")
    with pytest.raises(ValueError, match="split '1' is not defined for dataset 'ntu120'"):
        config_of(dataset="ntu120", split=1)
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        config_of(dataset="kinetics")
