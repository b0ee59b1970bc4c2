"""Limited-scale training (samples_per_class), encoder initialisation from another run (init_from)
and the frozen encoder of a linear evaluation (freeze_backbone)."""
import numpy as np
import pytest
import torch

from data.loading import Subset, draw_per_class, limit_per_class
from experiments.train.checkpoints import CheckpointError
from experiments.train.init import freeze_encoder, init_encoder
from experiments.train.state import save_checkpoint
from main import ex
from module import build_backbone
from module.head import ClassifierModel, SkeletonTextModel

SMALL = dict(graph_layout="ntu25", hidden_channels=4, out_channels=16)
OPTS = {"--loglevel": "ERROR"}


def test_the_per_class_draw_is_seeded_sized_and_takes_all_of_a_short_class():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 5)
    idx = draw_per_class(labels, 3, seed=4)
    assert np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, draw_per_class(labels, 3, seed=4))
    assert np.bincount(labels[idx]).tolist() == [3, 2, 3]  # class 1 has only 2: both
    assert set(np.flatnonzero(labels == 1)) <= set(idx)
    others = {tuple(draw_per_class(labels, 3, seed=s)) for s in range(8)}
    assert len(others) > 1  # the seed changes the draw
    with pytest.raises(ValueError, match="samples_per_class"):
        draw_per_class(labels, 0, 0)


def test_limit_per_class_keeps_the_drawn_samples_and_records_the_draw():
    y = torch.tensor([5, 5, 5, 7, 7, 7, 7])
    x = torch.arange(7, dtype=torch.float32)[:, None].expand(7, 3)
    sub, rec = limit_per_class(Subset(x, y, [5, 7]), 2, seed=1)
    assert len(sub) == 4 and sub.classes == [5, 7]
    assert rec["samples_per_class"] == 2 and rec["samples_seed"] == 1 and rec["num_train_full"] == 7
    assert rec["train_per_class"] == {"5": 2, "7": 2}
    assert torch.equal(sub.x[:, 0], torch.tensor(rec["train_indices"], dtype=torch.float32))  # rows = indices
    same, rec0 = limit_per_class(Subset(x, y, [5, 7]), 0, seed=1)
    assert same.x is x and rec0 == {}


def _text_model(seed: int, **over) -> SkeletonTextModel:
    torch.manual_seed(seed)
    return SkeletonTextModel(build_backbone("stgcn", **{**SMALL, **over}), text_dim=8)


def test_init_from_copies_only_matching_encoder_weights_and_says_so(tmp_path):
    src = _text_model(0)
    save_checkpoint(tmp_path / "best.pt", src, {"train_mode": "pretrain", "dataset": "demo"}, 4, {})
    torch.manual_seed(1)
    dst = ClassifierModel(build_backbone("stgcn", **SMALL), num_classes=5)
    fc_before = dst.fc.weight.detach().clone()
    rec = init_encoder(dst, str(tmp_path))  # a run folder holding best.pt
    for name, value in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[name], value), name
    assert torch.equal(dst.fc.weight, fc_before)  # the classifier starts fresh
    n_backbone = len(src.backbone.state_dict())
    assert rec["loaded"] == n_backbone and rec["not_loaded"] == [] and rec["skipped_shape"] == []
    assert rec["skipped_source"] == len(src.state_dict()) - n_backbone  # the text head and the temperature
    assert rec["train_mode"] == "pretrain" and rec["epoch"] == 4 and rec["path"] == str(tmp_path / "best.pt")


def test_init_from_names_shape_mismatches_and_refuses_a_checkpoint_with_no_fitting_encoder(tmp_path):
    save_checkpoint(tmp_path / "a.pt", _text_model(0), {}, 0, {})
    save_checkpoint(tmp_path / "head.pt", torch.nn.Linear(3, 2), {}, 0, {})
    with pytest.raises(CheckpointError, match="none of its 2 entries is an encoder weight"):
        init_encoder(_text_model(1), str(tmp_path / "head.pt"))
    # an encoder of another width: the tensors that fit load (input BatchNorm, graph weights), the rest are named
    wider = _text_model(1, hidden_channels=8)
    rec = init_encoder(wider, str(tmp_path / "a.pt"))
    assert rec["skipped_shape"] and all(s.startswith("backbone.") for s in rec["skipped_shape"])
    assert {s.split()[0] for s in rec["skipped_shape"]} <= set(rec["not_loaded"])  # (plus tensors it lacks)
    assert rec["loaded_fraction"] < 0.5  # (logged as a warning)
    kept = rec["skipped_shape"][0].split()[0]
    assert torch.equal(wider.state_dict()[kept], _text_model(1, hidden_channels=8).state_dict()[kept])  # as built
    with pytest.raises(CheckpointError, match="no such file"):
        init_encoder(wider, str(tmp_path / "missing.pt"))


def test_a_frozen_encoder_neither_learns_nor_updates_its_batchnorm_statistics():
    torch.manual_seed(0)
    model = ClassifierModel(build_backbone("stgcn", **SMALL), num_classes=3)
    assert freeze_encoder(model) == sum(p.numel() for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training and model.fc.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    fc_before = model.fc.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 3, 8, 25, 1)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # weights and BN stats
    assert not torch.equal(model.fc.weight, fc_before)


TINY = dict(dataset="demo", epoch_num=1, hidden_channels=4, out_channels=16, max_frame=8, batch_size=64,
            warmup_epochs=1, text_model="minilm", text_kind="labels", monitor_unseen=False)


@pytest.mark.slow
def test_limited_scale_and_init_from_end_to_end(text_root, tmp_path):
    base = {**TINY, "data_root": str(text_root)}
    sup = ex.run(config_updates={**base, "train_mode": "supervised", "samples_per_class": 2, "samples_seed": 3,
                                 "out_dir": str(tmp_path / "sup")}, options=OPTS).result
    assert sup["num_train_samples"] == 30 * 2 and sup["samples_per_class"] == 2 and sup["samples_seed"] == 3
    assert set(sup["train_per_class"].values()) == {2} and len(sup["train_indices"]) == 60
    # the zero-shot track starts from the supervised run's encoder, frozen: only the text head trains
    zs = ex.run(config_updates={**base, "init_from": str(tmp_path / "sup"), "freeze_backbone": True,
                                "samples_per_class": 3, "out_dir": str(tmp_path / "zs")}, options=OPTS).result
    assert zs["init_from"]["loaded"] > 0 and zs["init_from"]["train_mode"] == "supervised"
    assert zs["init_from"]["path"] == str(tmp_path / "sup" / "best.pt") and zs["freeze_backbone"] is True
    assert set(zs["train_per_class"].values()) == {3}
    src = torch.load(tmp_path / "sup" / "best.pt", weights_only=True)["model"]
    out = torch.load(zs["checkpoint"], weights_only=True)["model"]
    enc = [k for k in src if k.startswith("backbone.")]
    assert enc and all(torch.equal(src[k], out[k]) for k in enc)  # frozen: still the supervised encoder
