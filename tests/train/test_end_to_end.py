"""Tiny end-to-end runs through the Sacred experiment (``ex.run``)."""
import pytest
import torch
from sacred.observers import RunObserver

from main import ex


class MemoryObserver(RunObserver):
    """Collects what Sacred hands its observers (metrics arrive with heartbeats and at the end)."""

    def __init__(self):
        self.metrics: dict[str, list] = {}
        self.status = None

    def log_metrics(self, metrics_by_name, info):
        for name, m in metrics_by_name.items():
            self.metrics.setdefault(name, []).extend(m["values"])

    def completed_event(self, stop_time, result):
        self.status = "COMPLETED"

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=2, hidden_channels=4, out_channels=32,
            batch_size=64, warmup_epochs=1)


def run(demo_root, tmp_path, observer=None, **updates):
    cfg = {"data_root": str(demo_root), "out_dir": str(tmp_path / "ckpt"), **TINY, **updates}
    if observer is not None:
        ex.observers.append(observer)
    try:
        return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"})
    finally:
        if observer is not None:
            ex.observers.remove(observer)


@pytest.mark.slow
def test_tiny_run_reports_every_number_and_a_loadable_checkpoint(demo_root, tmp_path):
    obs = MemoryObserver()
    res = run(demo_root, tmp_path, observer=obs).result
    for key in ("unseen_top1", "unseen_per_class_mean", "unseen_top1_aligned", "unseen_per_class_mean_aligned",
                "best_val_top1"):
        assert 0.0 <= res[key] <= 100.0, key
    assert res["selection"] == "val" and res["num_unseen_samples"] == 200
    assert res["unseen_classes"] == [0, 7, 14, 21, 28] and res["val_classes"] == [3, 10, 17, 18, 25]
    # accuracy over samples: a multiple of 1/200
    assert (res["unseen_top1"] * 2) == pytest.approx(round(res["unseen_top1"] * 2))
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert ckpt["config"]["dataset"] == "demo" and ckpt["epoch"] == res["best_epoch"]
    assert "logit_scale" in ckpt["model"]
    # one value per epoch for every per-epoch metric reached Sacred's observers
    assert obs.status == "COMPLETED"
    for name in ("train_loss", "val_top1", "lr", "epoch_seconds", "unseen_top1_monitor", "temperature"):
        assert len(obs.metrics[name]) == 2, name
    assert obs.metrics["val_top1"][res["best_epoch"]] == res["best_val_top1"]


@pytest.mark.slow
def test_same_seed_same_metrics(demo_root, tmp_path):
    a = run(demo_root, tmp_path / "a", epoch_num=1).result
    b = run(demo_root, tmp_path / "b", epoch_num=1).result
    drop = {"checkpoint", "train_seconds"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


@pytest.mark.slow
def test_test_set_selection_is_labelled(demo_root, tmp_path):
    res = run(demo_root, tmp_path, epoch_num=1, selection="test", DA=False).result
    assert res["selection"] == "test" and "best_unseen_top1_selection" in res and "best_val_top1" not in res
    assert res["val_classes"] == [] and "unseen_top1_aligned" not in res


@pytest.mark.parametrize("updates,error,match", [
    ({"backbone": "resnet"}, KeyError, "unknown backbone 'resnet'"),
    ({"loss_type": "focal"}, KeyError, "unknown loss_type 'focal'"),
    ({"text_dim": 100}, Exception, "does not match the projection head"),
    ({"data_root": "/nonexistent/data", "dataset": "ntu60"}, FileNotFoundError, "python main.py prepare with dataset=ntu60"),
])
def test_bad_settings_fail_before_training(demo_root, tmp_path, updates, error, match):
    with pytest.raises(error, match=match):
        run(demo_root, tmp_path, **updates)
    assert not (tmp_path / "ckpt").exists()


def test_a_non_finite_loss_stops_training_before_the_weights_change():
    from data.loading import Subset
    from experiments.train.steps import train_epoch
    from module.head import SkeletonTextModel
    from module.registry import build_backbone

    torch.manual_seed(0)
    model = SkeletonTextModel(build_backbone("stgcn", hidden_channels=4, out_channels=8), text_dim=6)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    data = Subset(torch.randn(4, 3, 8, 25, 1), torch.tensor([0, 1, 0, 1]), [0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nan_objective = lambda model, x, y, generator: (model(x) * float("nan")).sum()
    with pytest.raises(FloatingPointError, match=r"loss became nan \(epoch 3\)"):
        train_epoch(model, data, opt, nan_objective, batch_size=2, generator=torch.Generator(),
                    device=torch.device("cpu"), desc="epoch 3")
    for k, v in model.state_dict().items():
        if k in before and "running" not in k:  # BatchNorm statistics move in the forward pass
            assert torch.equal(v, before[k]), k
