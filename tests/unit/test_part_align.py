"""Part-aware alignment (module/head.py: PartAwareModel) on constructed cases."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from module.head import PartAwareModel, SkeletonTextModel, last_unit


class MapBackbone(nn.Module):
    """A stand-in whose last unit outputs the given map unchanged: the feature map is known exactly."""

    def __init__(self, channels: int):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Identity()])
        self.out_dim = channels

    def forward(self, x):  # x: (N, C, T, V, M)
        n, c, t, v, m = x.shape
        fmap = self.blocks[0](x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))
        return fmap.mean(dim=(2, 3)).view(n, m, c).mean(dim=1)


def test_parts_pool_their_own_joints_over_time_and_persons():
    parts = {"a": (0, 1), "b": (2,), "c": (3, 4)}
    model = PartAwareModel(MapBackbone(2), 2, parts, num_joints=5)
    for head in model.part_heads:  # identity heads: the part features are the pooled maps
        head.weight.data = torch.eye(2)
        head.bias.data.zero_()
    x = torch.zeros(1, 2, 3, 5, 2)
    x[0, 0, :, 2, 0] = torch.tensor([1.0, 2.0, 3.0])  # part b, channel 0, person 0: mean over T = 2
    x[0, 1, :, 0, 1] = 4.0  # part a (joint 0 of its 2), channel 1, person 1: 4 / 2 joints / 2 persons = 1
    fmap = x.permute(0, 4, 1, 2, 3).reshape(2, 2, 3, 5)
    got = model.part_features(fmap, 1)[0]  # (P, D)
    want = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # b: 2 / 2 persons = 1
    torch.testing.assert_close(got, want)


def test_fused_similarity_is_global_plus_weighted_mean_part_similarity():
    torch.manual_seed(0)
    model = PartAwareModel(MapBackbone(4), 3, {"a": (0,), "b": (1, 2)}, num_joints=3, part_weight=0.5)
    x = torch.randn(5, 4, 6, 3, 1)
    feats = model(x)
    assert feats.shape == (5, 3 * 3)
    text, part_text = torch.randn(7, 3), torch.randn(7, 3)
    targets = model.text_targets(text, part_text)
    cos = F.normalize(feats, dim=1) @ F.normalize(targets, dim=1).t()
    glob = model.head(model.backbone(x))
    fmap = x.permute(0, 4, 1, 2, 3).reshape(5, 4, 6, 3)
    parts = model.part_features(fmap, 5)  # (N, P, D)
    part_cos = torch.stack([F.normalize(parts[:, i], dim=1) @ F.normalize(part_text, dim=1).t() for i in range(2)])
    want = (F.normalize(glob, dim=1) @ F.normalize(text, dim=1).t() + 0.5 * part_cos.mean(dim=0)) / 1.5
    torch.testing.assert_close(cos, want, rtol=1e-5, atol=1e-6)


def test_part_model_refuses_bad_settings():
    with pytest.raises(ValueError, match="part_weight must be > 0"):
        PartAwareModel(MapBackbone(2), 2, {"a": (0,)}, num_joints=1, part_weight=0.0)
    with pytest.raises(ValueError, match="non-empty body parts"):
        PartAwareModel(MapBackbone(2), 2, {"a": ()}, num_joints=1)
    with pytest.raises(TypeError, match="no unit list"):
        last_unit(nn.Linear(2, 2))
    model = PartAwareModel(MapBackbone(2), 2, {"a": (0,)}, num_joints=1)
    with pytest.raises(ValueError, match="differ in shape"):
        model.text_targets(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="does not fit the part heads"):
        model.part_features(torch.zeros(1, 3, 2, 1), 1)


@pytest.mark.parametrize("backbone", ["stgcn", "shiftgcn", "ctrgcn"])
def test_part_model_on_every_backbone_trains(backbone):
    from experiments.train.prepare import build_model
    from experiments.train.settings import ModelSettings
    from module.defaults import model_defaults

    d = model_defaults(backbone)
    m = ModelSettings(backbone, "joint", "none", 3, 8, 16, 0.0, "kinect20", d["graph_strategy"], d["max_hop"],
                      d["edge_importance"], d["temporal_kernel"], 1, "ref" if backbone == "shiftgcn" else d["shift_impl"],
                      d["shift_pos_grad"], d["formulation"], 12, 0.07, True, part_align=True, part_weight=1.0)
    model = build_model(m)
    assert isinstance(model, PartAwareModel) and len(model.part_heads) == 5
    x = torch.randn(4, 3, 8, 20, 1)
    out = model(x)
    assert out.shape == (4, 12 * 6) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.part_heads)
    plain = build_model(ModelSettings(*[getattr(m, f) for f in m.__dataclass_fields__][:19]))
    assert type(plain) is SkeletonTextModel
    assert math.isclose(model.part_weight, 1.0)


@pytest.mark.slow
def test_part_aligned_run_and_its_checkpoint_evaluation_agree(text_root, tmp_path):
    from main import ex

    tiny = dict(data_root=str(text_root), text_model="minilm", text_kind="labels+des", epoch_num=1, hidden_channels=4,
                out_channels=16, max_frame=8, batch_size=64, warmup_epochs=1, monitor_unseen=False)
    res = ex.run(config_updates={**tiny, "part_align": True, "part_weight": 0.5, "out_dir": str(tmp_path / "a")},
                 options={"--loglevel": "ERROR"}).result
    ckpt = torch.load(res["checkpoint"], weights_only=False)
    assert ckpt["config"]["part_align"] is True and any(k.startswith("part_heads.") for k in ckpt["model"])
    again = ex.run(config_updates={**tiny, "train_mode": "test", "checkpoint": res["checkpoint"],
                                   "out_dir": str(tmp_path / "b")}, options={"--loglevel": "ERROR"}).result
    assert again["unseen_top1"] == res["unseen_top1"] and again["unseen_top1_aligned"] == res["unseen_top1_aligned"]
