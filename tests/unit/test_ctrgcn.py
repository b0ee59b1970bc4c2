"""CTR-GCN: the refined topology against a hand computation, the original architecture
(widths, strides, parameter count), CTR-GCN's adjacency subsets, refused inputs.

Shape / finite output / every-parameter-gets-a-gradient: tests/unit/test_backbones.py.
"""
import numpy as np
import pytest
import torch

from module import build_backbone
from module.ctrgcn import CTRGC, UnitGCN, ctrgcn_adjacency
from module.graph import bone_parents, get_layout, normalize_columns

TINY = dict(hidden_channels=8, out_channels=16)

# The original's bone tables (graph/ntu_rgb_d.py and graph/ucla.py: inward_ori_index,
# 1-based (child, parent) pairs).
NTU_INWARD = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23),
              (23, 8), (24, 25), (25, 12)]
UCLA_INWARD = [(1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10), (12, 11), (13, 1),
               (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19)]

# Parameters of the original Model(num_point=25, num_person=2, in_channels=3, graph=ntu_rgb_d,
# labeling_mode='spatial') without its classifier fc: obtained by instantiating the original
# model/ctrgcn.py (Uason-Chen/CTR-GCN at e13d758) with this project's torch in a scratch
# directory outside the project (1,446,672 in all, 15,420 in fc for 60 classes), and equal to
# _original_parameter_count() below, counted layer by layer from its source.
ORIGINAL_BACKBONE_PARAMETERS = 1_431_252


def _original_parameter_count(v: int = 25, m: int = 2, c_in: int = 3) -> int:
    def bn(c):
        return 2 * c

    def conv(ci, co, k=1):
        return ci * co * k + co

    def ctrgc(ci, co):
        r = 8 if ci in (3, 9) else ci // 8
        return 2 * conv(ci, r) + conv(ci, co) + conv(r, co)  # conv1, conv2, conv3, conv4

    def unit_gcn(ci, co):
        down = conv(ci, co) + bn(co) if ci != co else 0
        return 3 * ctrgc(ci, co) + down + 3 * v * v + 1 + bn(co)  # convs, down, PA, alpha, bn

    def ms_tcn(c):
        b = c // 4
        dilated = conv(c, b) + bn(b) + conv(b, b, 5) + bn(b)
        return 2 * dilated + (conv(c, b) + 2 * bn(b)) + (conv(c, b) + bn(b))  # 2 dilations, max-pool, 1x1

    def unit(ci, co, stride, residual=True):
        res = conv(ci, co) + bn(co) if residual and (ci != co or stride != 1) else 0
        return unit_gcn(ci, co) + ms_tcn(co) + res

    plan = [(c_in, 64, 1, False), (64, 64, 1), (64, 64, 1), (64, 64, 1), (64, 128, 2),
            (128, 128, 1), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 256, 1)]
    return bn(m * v * c_in) + sum(unit(*p) for p in plan)


def test_refined_topology_by_hand():
    torch.manual_seed(0)
    gc = CTRGC(16, 5).double()  # R = 16 / 8 = 2 relation channels
    x = torch.randn(2, 16, 4, 3, dtype=torch.float64)  # (N, C, T, V)
    a = torch.rand(3, 3, dtype=torch.float64)
    alpha = torch.tensor([0.7], dtype=torch.float64)

    def conv1x1(conv, z):
        return torch.einsum("oc,nc...->no...", conv.weight[:, :, 0, 0], z) + conv.bias.view(1, -1, *[1] * (z.dim() - 2))

    x1 = conv1x1(gc.conv1, x).mean(dim=2)                 # (N, R, V), averaged over T after the conv
    x2 = conv1x1(gc.conv2, x).mean(dim=2)
    rel = torch.tanh(x1[:, :, :, None] - x2[:, :, None, :])  # (N, R, U, V)
    topo = alpha * conv1x1(gc.conv4, rel) + a              # (N, C_out, U, V)
    y = torch.einsum("ncuv,nctv->nctu", topo, conv1x1(gc.conv3, x))
    torch.testing.assert_close(gc.topology(x, a, alpha), topo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gc(x, a, alpha), y, rtol=1e-12, atol=1e-12)


def test_relation_channels():
    assert CTRGC(3, 64).conv1.out_channels == 8 and CTRGC(9, 64).conv2.out_channels == 8
    assert CTRGC(64, 64).conv1.out_channels == 8 and CTRGC(256, 256).conv4.in_channels == 32
    with pytest.raises(ValueError, match="at least 8"):
        CTRGC(4, 16)


def test_unit_gcn_sums_the_subsets():
    torch.manual_seed(0)
    unit = UnitGCN(8, 16, ctrgcn_adjacency("openni15")).double().eval()
    with torch.no_grad():
        unit.alpha.fill_(0.3)
    x = torch.randn(2, 8, 5, 15, dtype=torch.float64)
    y = sum(conv(x, unit.PA[k], unit.alpha) for k, conv in enumerate(unit.convs))
    torch.testing.assert_close(unit(x), torch.relu(unit.bn(y) + unit.down(x)))


def test_default_is_the_original_architecture():
    net = build_backbone("ctrgcn")
    assert net.out_dim == 256 and net.num_joints == 25 and len(net.blocks) == 10
    widths = [(b.gcn1.bn.num_features, b.tcn1.branches[-1][0].stride[0]) for b in net.blocks]
    assert widths == [(64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1)]
    assert net.blocks[0].residual is None
    assert net.drop.p == 0.0
    assert _original_parameter_count() == ORIGINAL_BACKBONE_PARAMETERS
    assert sum(p.numel() for p in net.parameters()) == ORIGINAL_BACKBONE_PARAMETERS


def test_initialisation_as_the_original():
    net = build_backbone("ctrgcn", **TINY)
    gcn = net.blocks[1].gcn1
    assert torch.all(gcn.alpha == 0) and torch.all(gcn.bn.weight == 1e-6)
    torch.testing.assert_close(gcn.PA.detach(), torch.from_numpy(ctrgcn_adjacency("ntu25")))
    assert torch.all(gcn.convs[0].conv3.bias == 0)


@pytest.mark.parametrize("name, table", [("ntu25", NTU_INWARD), ("kinect20", UCLA_INWARD)])
def test_adjacency_is_the_originals(name, table):
    v = get_layout(name).num_joints
    inward = np.zeros((v, v))
    for child, parent in table:
        inward[parent - 1, child - 1] = 1.0  # the original's edge2mat
    want = np.stack([np.eye(v), normalize_columns(inward), normalize_columns(inward.T)])
    np.testing.assert_array_equal(ctrgcn_adjacency(name), want.astype(np.float32))


def test_inward_subset_on_kinect20():
    layout = get_layout("kinect20")
    a = ctrgcn_adjacency(layout)
    assert a.shape == (3, 20, 20)
    np.testing.assert_array_equal(a[0], np.eye(20))
    inward, outward = a[1], a[2]
    root = layout.center
    assert np.count_nonzero(inward) == 19  # one entry per non-root joint: the bone to its parent
    parents = bone_parents(layout)
    for j in range(20):
        col = np.nonzero(inward[:, j])[0].tolist()
        assert col == ([] if j == root else [parents[j]])
        assert inward[parents[j], j] == (0.0 if j == root else 1.0)
    # outward: a child receives 1 / (its parent's number of children)
    children = np.bincount([p for j, p in enumerate(parents) if j != root], minlength=20)
    for j in range(20):
        if j != root:
            assert outward[j, parents[j]] == pytest.approx(1 / children[parents[j]])


def test_blocks_hand_out_their_features():
    net = build_backbone("ctrgcn", **TINY, graph_layout="kinect20", num_person=1)
    seen = []
    hooks = [b.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape))) for b in net.blocks]
    assert net(torch.randn(2, 3, 8, 20, 1)).shape == (2, 16)
    for h in hooks:
        h.remove()
    assert seen == [(2, 8, 8, 20)] * 4 + [(2, 16, 4, 20)] * 3 + [(2, 32, 2, 20)] * 2 + [(2, 16, 2, 20)]


def test_wrong_joint_count_is_refused():
    net = build_backbone("ctrgcn", **TINY)
    with pytest.raises(ValueError, match=r"25 joints .* shape \(2, 3, 8, 20, 2\)"):
        net(torch.randn(2, 3, 8, 20, 2))
