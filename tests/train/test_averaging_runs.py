"""Weight averaging end to end (``ex.run``): the averaged weights are evaluated, selected, saved as
best.pt and recorded in the result; a resumed averaging run equals an uninterrupted one."""
import pytest
import torch

from main import ex

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=2, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1)
DROP = {"checkpoint", "train_seconds"}


def run(root, out, **updates):
    cfg = {"data_root": str(root), "out_dir": str(out), **TINY, **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


def load(path):
    return torch.load(path, weights_only=True)


def is_statistic(key: str) -> bool:
    return "running_" in key or "num_batches_tracked" in key


@pytest.mark.slow
def test_ema_run_selects_and_saves_the_averaged_weights(text_root, tmp_path):
    res = run(text_root, tmp_path / "ema", weight_average="ema", ema_decay=0.99)
    assert res["weight_average"] == "ema" and res["ema_decay"] == 0.99 and "swa_start" not in res
    best, last = load(res["checkpoint"]), load(tmp_path / "ema" / "last.pt")
    assert best["metrics"]["weights"] == "ema" and best["epoch"] == res["best_epoch"]
    assert [h["averaged"] for h in last["history"]] == [1.0, 1.0]  # every epoch evaluated the EMA
    assert last["average"]["kind"] == "ema" and last["average"]["updates"] > 1
    for k, v in best["model"].items():  # best.pt: the selected averaged weights, not the raw ones
        torch.testing.assert_close(v, last["best"]["state"][k])
        if res["best_epoch"] == 1:
            torch.testing.assert_close(v, last["average"]["model"][k])
    assert any(not torch.equal(v, last["model"][k]) for k, v in best["model"].items() if v.is_floating_point())


@pytest.mark.slow
def test_swa_run_averages_the_end_of_epoch_weights(text_root, tmp_path):
    # epoch 1's raw weights (the learning rate does not depend on epoch_num here), then the SWA run over 2 epochs
    first = run(text_root, tmp_path / "first", weight_average="swa", swa_start=0.0, epoch_num=1)
    res = run(text_root, tmp_path / "swa", weight_average="swa", swa_start=0.0)
    assert res["weight_average"] == "swa" and res["swa_start"] == 0.0 and "ema_decay" not in res
    assert first["weight_average"] == "swa"
    raw1, last = load(tmp_path / "first" / "last.pt")["model"], load(tmp_path / "swa" / "last.pt")
    assert last["average"]["updates"] == 2
    swa = last["average"]["model"]
    for k, v in swa.items():
        if v.is_floating_point() and not is_statistic(k):
            torch.testing.assert_close(v, (raw1[k] + last["model"][k]) / 2, msg=k)
    # BatchNorm statistics were recomputed for the averaged weights (not averaged, not copied)
    stats = [k for k in swa if k.endswith("running_mean")]
    assert stats and any(not torch.equal(swa[k], last["model"][k]) for k in stats)
    best = load(res["checkpoint"])
    assert best["metrics"]["weights"] == "swa"
    if res["best_epoch"] == 1:
        for k, v in best["model"].items():
            torch.testing.assert_close(v, swa[k])


@pytest.mark.slow
def test_swa_epochs_before_the_start_are_evaluated_raw_and_not_selected(text_root, tmp_path):
    res = run(text_root, tmp_path / "swa", weight_average="swa", swa_start=0.5)
    last = load(tmp_path / "swa" / "last.pt")
    assert [h["averaged"] for h in last["history"]] == [0.0, 1.0]
    assert res["best_epoch"] == 1 and load(res["checkpoint"])["metrics"]["weights"] == "swa"


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [dict(weight_average="ema"), dict(weight_average="swa", swa_start=0.0)])
def test_resumed_averaging_run_equals_the_uninterrupted_one(text_root, tmp_path, stop_after_first_epoch, averaging):
    ref, resumed = stop_after_first_epoch.reference_and_resumed(
        lambda out, **kw: run(text_root, out, **kw), tmp_path / "ref", tmp_path / "victim", **averaging)
    assert {k: v for k, v in resumed.items() if k not in DROP} == {k: v for k, v in ref.items() if k not in DROP}
    a, b = load(tmp_path / "ref" / "last.pt"), load(tmp_path / "victim" / "last.pt")
    for k, v in a["average"]["model"].items():
        assert torch.equal(v, b["average"]["model"][k]), k


@pytest.mark.slow
def test_supervised_run_records_and_uses_the_average(text_root, tmp_path):
    res = run(text_root, tmp_path / "sup", train_mode="supervised", epoch_num=1, weight_average="swa",
              swa_start=0.0, fr_head=True)
    assert res["weight_average"] == "swa" and res["swa_start"] == 0.0
    best, last = load(res["checkpoint"]), load(tmp_path / "sup" / "last.pt")
    assert best["metrics"]["weights"] == "swa"
    for k, v in best["model"].items():
        torch.testing.assert_close(v, last["average"]["model"][k])
    # FR-Head's BatchNorm layers are not on the forward path: their statistics are the raw model's
    fr = [k for k in best["model"] if k.startswith("fr_head.") and k.endswith("running_mean")]
    for k in fr:
        torch.testing.assert_close(best["model"][k], last["model"][k])


def test_bad_weight_average_fails_before_training(text_root, tmp_path):
    with pytest.raises(ValueError, match="weight_average must be one of"):
        run(text_root, tmp_path / "bad", weight_average="polyak")
    assert not (tmp_path / "bad").exists()
