"""Every registered backbone: output shape, finite values, a gradient for every parameter."""
import pytest
import torch

from module import backbone_keys, build_backbone, list_backbones
from module.head import SkeletonTextModel

# Small widths for speed. Shift-GCN's default position gradient never moves xpos (by design,
# see test_shiftgcn.py); the exact one checks that every parameter is wired into the graph.
TINY = {"stgcn": dict(hidden_channels=4, out_channels=16),
        "shiftgcn": dict(hidden_channels=4, out_channels=16, shift_impl="ref", shift_pos_grad="exact"),
        "ctrgcn": dict(hidden_channels=8, out_channels=16)}


def _switch_on_refinement(net) -> None:
    """CTR-GCN starts with alpha = 0 (as the original), which multiplies the channel-wise
    refinement, so conv1/conv2/conv4 of every CTRGC get exactly zero gradient at init.
    A non-zero alpha checks that they are wired into the graph."""
    with torch.no_grad():
        for unit in net.blocks:
            unit.gcn1.alpha.fill_(0.5)


PREPARE = {"ctrgcn": _switch_on_refinement}


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("persons", [1, 2])
def test_backbone_shape_finite_and_gradients(name, persons):
    torch.manual_seed(0)
    # num_person reaches only the backbones that take it (Shift-GCN's input BatchNorm)
    entries = {**TINY.get(name, {}), "num_person": persons}
    net = build_backbone(name, **{k: v for k, v in entries.items() if k in backbone_keys(name)})
    PREPARE.get(name, lambda net: None)(net)
    model = SkeletonTextModel(net, text_dim=12)
    x = torch.randn(3, 3, 16, 25, persons)
    out = model(x)
    assert out.shape == (3, 12) and torch.isfinite(out).all()
    assert net(x).shape == (3, net.out_dim)
    loss = (model.scale() * out).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0]
    assert not zero, f"parameters whose gradient is exactly zero: {zero}"


def test_temperature_is_a_registered_parameter():
    model = SkeletonTextModel(build_backbone("stgcn", **TINY["stgcn"]), text_dim=8)
    names = [n for n, _ in model.named_parameters()]
    assert "logit_scale" in names
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    fixed = SkeletonTextModel(build_backbone("stgcn", **TINY["stgcn"]), text_dim=8, learn_temperature=False)
    assert not fixed.logit_scale.requires_grad


def test_adjacency_is_a_buffer_and_moves_with_the_module():
    net = build_backbone("stgcn", **TINY["stgcn"])
    assert "A" in dict(net.named_buffers()) and "A" not in dict(net.named_parameters())
    assert net.double().A.dtype == torch.float64


def test_wrong_joint_count_is_refused():
    net = build_backbone("stgcn", **TINY["stgcn"])
    with pytest.raises(ValueError, match="25 joints"):
        net(torch.randn(2, 3, 16, 20, 1))


def test_unknown_backbone():
    with pytest.raises(KeyError, match="unknown backbone 'resnet'"):
        build_backbone("resnet")


def test_unknown_entry_is_refused_naming_it():
    with pytest.raises(TypeError, match=r"backbone 'stgcn' takes no entries \['hidden_channel'\]"):
        build_backbone("stgcn", hidden_channel=4)


def test_a_factory_with_defaults_cannot_register():
    from module.registry import register_backbone

    with pytest.raises(TypeError, match="keyword-only parameters without defaults"):
        register_backbone("with-defaults")(lambda *, width=4: None)
