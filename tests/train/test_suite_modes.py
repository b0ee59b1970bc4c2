"""The experiment-suite tracks: checkpoint evaluation, one-shot, GZSL, and kill -9 + resume."""
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from main import ex
from tracking_support import cli_args, cli_env, free_port, start_cli

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=2, hidden_channels=4, out_channels=32,
            batch_size=64, warmup_epochs=1)
HEADLINE = ("unseen_top1", "unseen_per_class_mean", "unseen_top1_aligned", "unseen_per_class_mean_aligned",
            "unseen_per_class", "best_epoch")


def run(demo_root, out, **updates):
    cfg = {"data_root": str(demo_root), "out_dir": str(out), **TINY, **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


@pytest.mark.slow
def test_test_mode_reproduces_the_training_runs_numbers(demo_root, tmp_path):
    trained = run(demo_root, tmp_path / "train")
    # the checkpoint's config supplies the model entries and the dataset/split: only the reference is given
    res = ex.run(config_updates={"train_mode": "test", "checkpoint": str(tmp_path / "train"),
                                 "data_root": str(demo_root), "out_dir": str(tmp_path / "eval")},
                 options={"--loglevel": "ERROR"})
    assert res.config["hidden_channels"] == 4 and res.config["text_model"] == "minilm"
    for key in HEADLINE:
        assert res.result[key] == trained[key], key
    assert res.result["evaluated_checkpoint"] == trained["checkpoint"]
    assert res.result["trained_on"]["train_mode"] == "main" and res.result["selection"] == "val"
    assert (tmp_path / "train" / "unseen_per_class.csv").is_file()


def test_test_mode_needs_a_usable_checkpoint(demo_root, tmp_path):
    with pytest.raises(ValueError, match="needs checkpoint="):
        run(demo_root, tmp_path, train_mode="test")
    with pytest.raises(ValueError, match="no such file or run folder"):
        run(demo_root, tmp_path, train_mode="test", checkpoint=str(tmp_path / "nope"))
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        run(demo_root, tmp_path, train_mode="test", checkpoint=str(bad))


@pytest.mark.slow
def test_one_shot_on_the_demo(demo_root, tmp_path):
    res = run(demo_root, tmp_path, train_mode="one_shot", exemplar_seed=3)
    assert sorted(int(c) for c in res["exemplars"]) == res["unseen_classes"]
    assert res["num_queries"] == res["num_unseen_samples"] - len(res["unseen_classes"])
    for name in ("exemplar", "text", "combined"):
        assert 0.0 <= res[f"one_shot_top1_{name}"] <= 100.0
    again = run(demo_root, tmp_path / "again", train_mode="one_shot", exemplar_seed=3)
    assert again["exemplars"] == res["exemplars"]  # a fixed, seeded choice


@pytest.mark.slow
def test_gzsl_numbers_and_validation_calibration(demo_root, tmp_path):
    res = run(demo_root, tmp_path, gzsl=True)
    assert res["gzsl_calibration"] == "gamma chosen on validation data only"
    for key in ("gzsl_seen_top1", "gzsl_unseen_top1", "H", "gzsl_seen_top1_uncalibrated", "gzsl_val_H"):
        assert 0.0 <= res[key] <= 100.0, key
    s, u = res["gzsl_seen_top1"], res["gzsl_unseen_top1"]
    assert res["H"] == pytest.approx(0.0 if s + u == 0 else 2 * s * u / (s + u))


def _result_of(tracking: Path, out_dir: Path) -> dict:
    for run_json in (tracking / "records").glob("*/run.json"):
        cfg = json.loads((run_json.parent / "config.json").read_text())
        doc = json.loads(run_json.read_text())
        if cfg["out_dir"] == str(out_dir) and doc["status"] == "COMPLETED":
            return doc["result"]
    raise AssertionError(f"no completed run for {out_dir}")


@pytest.mark.slow
def test_kill_9_and_resume_end_with_the_uninterrupted_metrics(demo_root, tmp_path):
    tracking = tmp_path / "tracking"
    env = cli_env(tracking, free_port())
    upd = dict(epoch_num=3, offline=True)
    ref = start_cli(cli_args(demo_root, tmp_path / "ref", **upd), env, tmp_path / "ref.log")
    victim = tmp_path / "victim"
    proc = start_cli(cli_args(demo_root, victim, **upd), env, tmp_path / "victim.log")
    deadline = time.time() + 600
    while time.time() < deadline:  # kill it in the middle of the second epoch
        state = victim / "last.pt"
        if state.is_file() and torch.load(state, weights_only=True)["next_epoch"] >= 1:
            break
        assert proc.poll() is None, (tmp_path / "victim.log").read_text()[-2000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    resumed = start_cli(cli_args(demo_root, victim, resume=str(victim), **upd), env, tmp_path / "resumed.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    a, b = _result_of(tracking, tmp_path / "ref"), _result_of(tracking, victim)
    drop = {"checkpoint", "train_seconds"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert "resuming" in (tmp_path / "resumed.log").read_text()


def test_resume_refuses_another_config(demo_root, tmp_path):
    run(demo_root, tmp_path / "a", epoch_num=1)
    with pytest.raises(ValueError, match=r"config differs.*lr: 0.05 → 0.1"):
        run(demo_root, tmp_path / "a", epoch_num=1, lr=0.1, resume=str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        run(demo_root, tmp_path / "b", resume=str(tmp_path / "b"))
