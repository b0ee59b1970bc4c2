"""Shift-GCN: the original architecture (channels, strides, parameter count), the spatial
shift permutations, the original position-gradient behaviour, shapes, devices.

Shape / finite output / every-parameter-gets-a-gradient: tests/test_backbones.py.
"""
import pytest
import torch

from module import build_backbone
from module.shiftgcn import ShiftGraphConv, shift_indices

TINY = dict(hidden_channels=4, out_channels=16, shift_impl="ref")


def _original_parameter_count(v: int = 25, m: int = 2, c_in: int = 3) -> int:
    """Parameters of the original Shift-GCN Model without its classifier, counted layer by layer
    from its source (Shift_gcn, Shift_tcn, TCN_GCN_unit, Model)."""
    def bn(c):
        return 2 * c

    def shift_gcn(ci, co):
        down = ci * co + co + bn(co) if ci != co else 0
        return ci * co + co + v * ci + bn(v * co) + down  # Linear_weight, Linear_bias, Feature_Mask, bn, down

    def shift_tcn(c):
        return bn(c) + bn(c) + 2 * c + 2 * c + c * c + c  # bn, bn2, shift_in, shift_out, temporal_linear

    def unit(ci, co, stride, residual=True):
        res = ci * co + co + bn(co) if residual and (ci != co or stride != 1) else 0
        return shift_gcn(ci, co) + shift_tcn(co) + res

    plan = [(c_in, 64, 1, False), (64, 64, 1, True), (64, 64, 1, True), (64, 64, 1, True), (64, 128, 2, True),
            (128, 128, 1, True), (128, 128, 1, True), (128, 256, 2, True), (256, 256, 1, True), (256, 256, 1, True)]
    return bn(m * v * c_in) + sum(unit(*p) for p in plan)


def test_default_is_the_original_architecture():
    net = build_backbone("shiftgcn", shift_impl="ref")
    assert net.out_dim == 256
    widths = [(u.gcn.out_channels, u.tcn.shift_out.stride) for u in net.units]
    assert widths == [(64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1)]
    assert net.units[0].residual is None
    assert sum(p.numel() for p in net.parameters()) == _original_parameter_count()


def test_spatial_shift_permutations():
    # channel j of joint i reads joint (i + j) mod V going in, (i - j) mod V going out
    idx_in = shift_indices(5, 3, +1).view(5, 3)
    idx_out = shift_indices(5, 3, -1).view(5, 3)
    for i in range(5):
        for j in range(3):
            assert idx_in[i, j] == ((i + j) % 5) * 3 + j
            assert idx_out[i, j] == ((i - j) % 5) * 3 + j
    # the original's formula for V = 25
    c = 7
    orig = torch.tensor([(i * c + j + j * c) % (c * 25) for i in range(25) for j in range(c)])
    assert torch.equal(shift_indices(25, c, +1), orig)
    orig = torch.tensor([(i * c + j - j * c) % (c * 25) for i in range(25) for j in range(c)])
    assert torch.equal(shift_indices(25, c, -1), orig)


def test_shift_graph_conv_moves_features_between_joints():
    conv = ShiftGraphConv(2, 2, num_joints=5).eval()  # eval BatchNorm: z / sqrt(1 + eps); identity residual
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # the linear map swaps the two channels
    x = torch.zeros(1, 2, 1, 5)
    x[0, 1, 0, 3] = 1.0  # channel 1 at joint 3
    # shift in: channel 1 of joint 2 reads joint 3; swap to channel 0; shift out: channel 0 stays at joint 2
    want = x.clone()
    want[0, 0, 0, 2] = 1.0 / (1.0 + conv.bn.eps) ** 0.5
    torch.testing.assert_close(conv(x), want)


def test_index_tables_are_buffers_not_parameters_nor_checkpoint_entries():
    net = build_backbone("shiftgcn", **TINY, num_person=1)
    buffers = dict(net.named_buffers())
    assert "units.0.gcn.shift_in" in buffers and buffers["units.0.gcn.shift_in"].dtype == torch.int64
    assert not any("shift_in" in n and "gcn" in n for n, _ in net.named_parameters())
    assert not any(k.endswith("gcn.shift_in") for k in net.state_dict())
    net.double()
    assert buffers["units.0.gcn.shift_in"].dtype == torch.int64


def test_nothing_is_created_on_a_fixed_device():
    with torch.device("meta"):
        net = build_backbone("shiftgcn", **TINY)
    assert {t.device.type for t in [*net.parameters(), *net.buffers()]} == {"meta"}


def test_original_position_gradient_moves_only_ypos_by_fixed_steps():
    torch.manual_seed(0)
    net = build_backbone("shiftgcn", hidden_channels=4, out_channels=16, num_person=1, shift_impl="ref")
    net(torch.randn(4, 3, 16, 25, 1)).square().mean().backward()
    for name, p in net.named_parameters():
        if name.endswith("xpos"):
            assert torch.count_nonzero(p.grad) == 0, name
        elif name.endswith("ypos"):
            steps = p.grad.abs()
            assert bool(((steps == 0.01) | (steps == torch.tensor(1e-4))).all()), (name, p.grad)


@pytest.mark.parametrize("frames", [64, 50, 21])
def test_any_length_of_at_least_four_frames(frames):
    # odd lengths at the strided units: the original crashes (shift keeps floor(T/2), the
    # residual ceil(T/2)); here the residual's last frame is dropped
    net = build_backbone("shiftgcn", **TINY, num_person=2)
    out = net(torch.randn(2, 3, frames, 25, 2))
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_wrong_persons_joints_or_frames_are_refused():
    net = build_backbone("shiftgcn", **TINY, num_person=2)
    with pytest.raises(ValueError, match="M=2 persons"):
        net(torch.randn(2, 3, 16, 25, 1))
    with pytest.raises(ValueError, match="V=25 joints"):
        net(torch.randn(2, 3, 16, 20, 2))
    with pytest.raises(ValueError, match="at least 4 frames"):
        net(torch.randn(2, 3, 3, 25, 2))

