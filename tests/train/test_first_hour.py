"""What a new user meets first: a small own dataset that learns with the defaults, clear
one-line errors, refused stray entries, progress lines in logs, run names, the summary."""
from __future__ import annotations

import csv
import subprocess
import sys
import types

import numpy as np
import pytest
from sacred.utils import ConfigAddedError

from experiments.files import PROJECT_ROOT
from experiments.tracking.observer import run_config, run_name
from experiments.tracking.tracker import NullTracker
from experiments.train import tracks
from experiments.train.steps import auto_batch_size, log_progress
from main import ex, resume_command

OPTS = {"--loglevel": "ERROR"}


def make_learnable(folder, classes: int = 10, per_class: int = 15):
    """``classes`` classes of ``per_class`` sequences (5 subjects x 3 takes): class c swings joint
    ``c`` (of 25) with its own frequency, the rest of the body still, plus noise."""
    rng = np.random.default_rng(0)
    (folder / "seq").mkdir(parents=True)
    with open(folder / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "description"])
        for c in range(classes):
            w.writerow([f"swing joint {c}", f"The person swings body joint number {c} back and forth."])
    base = rng.normal(size=(25, 3)) * 0.3
    rows = []
    for c in range(classes):
        for i in range(per_class):
            t = np.linspace(0, 2 * np.pi, 40)[:, None]
            joints = np.repeat(base[None], 40, axis=0) + rng.normal(scale=0.02, size=(40, 25, 3))
            joints[:, 2 * c + 1] += 0.4 * np.sin((1 + c % 3) * t + rng.uniform(0, 6)) * np.array([1.0, 0.5, 0.2])
            name = f"seq/c{c}_{i}.npy"
            np.save(folder / name, joints.astype(np.float32))
            rows.append([name, f"swing joint {c}", f"subject-{i % 5}"])  # subjects are any string
    with open(folder / "sequences.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "subject"])
        w.writerows(rows)
    return folder


@pytest.mark.slow
def test_a_small_generic_dataset_learns_with_the_defaults(tmp_path):
    root = tmp_path / "root"
    ex.run("prepare_generic", config_updates={
        "data_root": str(root), "raw.name": "small", "raw.path": str(make_learnable(tmp_path / "raw")),
        "raw.layout": "ntu25", "raw.train_subjects": ["subject-0", "subject-1", "subject-2"],
        "new_split.num_unseen": 3, "new_split.seeds": [1]}, options=OPTS)
    cfg = ex.run("print_config", config_updates={"dataset": "small", "data_root": str(root)}, options=OPTS).config
    assert cfg["batch_size"] == "auto" and len(cfg["val_classes"]) == 2  # 5 of 7 seen classes left to train on
    tracker = NullTracker()
    # only the schedule is shortened and the small text model chosen; batch size and validation are defaults
    res = tracks.run_zero_shot({**cfg, "epoch_num": 6, "text_model": "minilm", "text_dim": 384,
                                "out_dir": str(tmp_path / "run")}, tracker)
    n_train = 5 * 9  # 5 training classes x 3 training subjects x 3 takes
    assert res["batch_size"] == auto_batch_size(n_train) == 8 and n_train // res["batch_size"] >= 4
    val = [v for _, v in tracker.scalars["val_top1"]]
    assert len(set(val)) > 1, f"the validation curve does not move: {val}"
    assert tracker.info["run_folder"] == str(tmp_path / "run")


def test_auto_batch_size_gives_several_steps():
    assert auto_batch_size(37000) == 128 and auto_batch_size(1000) == 64 and auto_batch_size(142) == 16
    assert auto_batch_size(50) == 8 and auto_batch_size(5) == 8
    assert all(n // auto_batch_size(n) >= 8 for n in range(64, 5000, 37))


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigAddedError, match=r"unknown config entry 'learning_rate' \(did you mean 'lr'\?\)"):
        ex.run(config_updates={"learning_rate": 0.1}, options=OPTS)
    with pytest.raises(ConfigAddedError, match=r"'epoch_nums' \(did you mean 'epoch_num'\?\)"):
        ex.run(config_updates={"epoch_nums": 3}, options=OPTS)


def test_command_entries_are_refused_on_a_training_run():
    with pytest.raises(ValueError, match=r"sweep.datasets: entries of the `sweep` command, not of a training run"):
        ex.run(config_updates={"sweep": {"datasets": ["demo"]}}, options=OPTS)


def test_a_missing_text_kind_is_refused_before_the_run(demo_root):
    with pytest.raises(ValueError, match="no text kind 'gloss'"):
        ex.run(config_updates={"data_root": str(demo_root), "text_kind": "gloss"}, options=OPTS)


def test_project_errors_are_one_line_on_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "main.py", "with", "dataset=utd_mhad", "split=7"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={"PGFA_TRACKING_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: split '7' is not defined for dataset 'utd_mhad'")
    assert "Traceback" in (tmp_path / "last_error.txt").read_text()


def test_progress_lines_in_a_log(caplog):
    ticks = iter(range(0, 1000, 10))  # each batch takes 10 s
    with caplog.at_level("INFO", logger="pgfa"):
        assert list(log_progress(range(12), 12, "epoch 1/2", every=30, clock=lambda: next(ticks))) == list(range(12))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "epoch 1/2: batch 3/12 (25%), 10.00 s/batch, about 1 min 30 s left"
    assert len(lines) == 3  # about every 30 s, none after the last batch


def test_run_names_and_a_run_config_without_command_entries():
    cfg = {"dataset": "utd_mhad", "split": 2, "train_mode": "main", "seed": 1, "tag": "", "raw": {}, "sweep": {}}
    assert run_name(cfg) == "utd_mhad-split2-main-seed1"
    assert run_name({**cfg, "tag": "labels"}) == "utd_mhad-split2-main-seed1-labels"
    assert set(run_config(cfg)) == {"dataset", "split", "train_mode", "seed", "tag"}


def test_the_resume_command_repeats_the_settings():
    run = types.SimpleNamespace(meta_info={"config_updates": {"dataset": "utd_mhad", "lr_steps": [30, 40],
                                                              "out_dir": "runs/x"}, "named_configs": ["sota"]})
    assert resume_command(run, "runs/x") == ("python main.py with sota dataset=utd_mhad 'lr_steps=[30, 40]' "
                                             "resume=runs/x")
