"""CTR-GCN backbone (Chen et al., ICCV 2021: Channel-wise Topology Refinement Graph Convolution).

Ten TCN-GCN units (``CTRGCNUnit``) with channels h, h, h, h, 2h (stride 2), 2h, 2h,
4h (stride 2), 4h, D (h = ``hidden_channels`` = 64, D = ``out_channels`` = 256 in the
paper, which is the original's 64-64-64-64-128-128-128-256-256-256; as in this project's
ST-GCN and Shift-GCN only the last unit takes D, so any D gives a valid model). Each unit is

* ``UnitGCN``: one ``CTRGC`` per adjacency subset (identity, inward, outward), each
  refining the shared topology per channel and per sample; their sum, BatchNorm
  (initialised to 1e-6, so every unit starts close to its residual), the (projected)
  residual and ReLU. The subsets start from ``ctrgcn_adjacency`` and are trained (``PA``);
* ``MultiScaleTemporalConv``: four branches of C/4 channels (kernel-5 temporal convs with
  dilations 1 and 2, a max-pool branch, a strided 1x1 branch), concatenated;
* the unit's residual (none in the first unit) and ReLU.

Input BatchNorm over person x joint x channel features (so the person count
``num_person`` is fixed at construction), global average pooling over time and joints,
the mean over persons, then dropout: ``(N, C, T, V, M) -> (N, D)``.

Parameter names, shapes and initialisation follow the original code (Uason-Chen/CTR-GCN,
``model/ctrgcn.py``; its ``l1``..``l10`` are ``blocks.0``..``blocks.9`` here, a unit's
``residual.conv``/``residual.bn`` are ``residual.0``/``residual.1``, and the classifier
``fc`` is not part of the backbone: with those renames its state dict loads strictly). Differences: the adjacency is built
from the layout (``ctrgcn_adjacency``), nothing is placed on a fixed device, and the
mean over time of ``conv1``/``conv2`` is taken before the 1x1 convolution instead of after
(the same numbers, as the convolution is linear, on T times fewer columns). A fused
formulation (the three subsets' convolutions and aggregations as one convolution and one
batched matmul) measured slower on the CPU than this one, so there is only this one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from module.graph import Layout, bone_parents, get_layout, normalize_columns
from module.registry import register_backbone


def _conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _bn_init(bn: nn.BatchNorm1d | nn.BatchNorm2d, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.zeros_(bn.bias)


def ctrgcn_adjacency(layout: Layout | str) -> np.ndarray:
    """(3, V, V) float32 stack ``[I, inward, outward]`` of CTR-GCN's spatial graph.

    Entry ``[k, u, v]`` weighs joint v's features in joint u's output (``CTRGC``). Inward
    edges run from every joint to its parent (``bone_parents``: towards the layout's
    centre), outward edges the other way. Both are column-normalised with
    ``normalize_columns``, the original's ``normalize_digraph`` (ST-GCN's), but CTR-GCN
    reads the matrix as v -> u, the transpose of ST-GCN's ``a[k, v, w]`` (v -> w), so it
    divides by the *source* joint's degree: a parent sums its children (weight 1 each),
    a child receives 1 / (number of children) of its parent. The identity is not
    normalised. On ``ntu25`` and ``kinect20`` this is exactly the original's graph
    (``graph/ntu_rgb_d.py``, ``graph/ucla.py``).
    """
    parents = bone_parents(layout)
    v = len(parents)
    inward = np.zeros((v, v))
    for child, parent in enumerate(parents):
        if child != parent:
            inward[parent, child] = 1.0  # the original's edge2mat: [target, source]
    return np.stack([np.eye(v), normalize_columns(inward), normalize_columns(inward.T)]).astype(np.float32)


class CTRGC(nn.Module):
    """Channel-wise topology refinement graph convolution over one adjacency subset.

    ``y[n, c, t, u] = sum_v (alpha · M[n, c, u, v] + A[u, v]) · x3[n, c, t, v]`` with
    ``x3 = conv3(x)`` and ``M = conv4(tanh(x1[..., :, None] - x2[..., None, :]))``, where
    ``x1``, ``x2`` are ``conv1(x)``, ``conv2(x)`` averaged over time (R channels: 8 for
    3 or 9 input channels, else C_in / 8).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        rel = 8 if in_channels in (3, 9) else in_channels // 8
        if rel == 0:
            raise ValueError(f"CTRGC reduces its {in_channels} input channels by 8 for the topology: "
                             "use at least 8 (hidden_channels >= 8)")
        self.conv1 = nn.Conv2d(in_channels, rel, kernel_size=1)
        self.conv2 = nn.Conv2d(in_channels, rel, kernel_size=1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv4 = nn.Conv2d(rel, out_channels, kernel_size=1)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            _conv_init(conv)

    def topology(self, x: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The refined topology ``(N, C_out, V, V)`` for input ``x`` ``(N, C_in, T, V)`` and subset ``a`` ``(V, V)``."""
        xm = x.mean(dim=2, keepdim=True)                      # (N, C_in, 1, V): conv1/conv2 are linear
        x1 = self.conv1(xm).squeeze(2)                        # (N, R, V)
        x2 = self.conv2(xm).squeeze(2)                        # (N, R, V)
        rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (N, R, U, V)
        return self.conv4(rel) * alpha + a                    # (N, C_out, U, V)

    def forward(self, x: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        topo = self.topology(x, a, alpha)                     # (N, C_out, U, V)
        return torch.einsum("ncuv,nctv->nctu", topo, self.conv3(x))  # (N, C_out, T, U)


class UnitGCN(nn.Module):
    """Sum of one ``CTRGC`` per subset of the trainable topology ``PA`` (shared ``alpha``),
    BatchNorm, residual (1x1 conv + BN where the width changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, a: np.ndarray):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(in_channels, out_channels) for _ in range(a.shape[0]))
        self.down = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
                     if in_channels != out_channels else nn.Identity())
        self.PA = nn.Parameter(torch.from_numpy(a.astype(np.float32)))  # (K, V, V), the original's adaptive=True
        self.alpha = nn.Parameter(torch.zeros(1))  # 0 as the original: the refinement starts switched off
        self.bn = nn.BatchNorm2d(out_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                _bn_init(m, 1.0)
        _bn_init(self.bn, 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, T, V)
        y = sum(conv(x, self.PA[k], self.alpha) for k, conv in enumerate(self.convs))  # (N, C_out, T, V)
        return torch.relu(self.bn(y) + self.down(x))


class TemporalConv(nn.Module):
    """A (kernel x 1) temporal convolution (dilated, 'same' padding, strided) and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1), padding=(pad, 0),
                              stride=(stride, 1), dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    """Branches of C_out / (len(dilations) + 2) channels, concatenated: per dilation a 1x1 conv,
    BN, ReLU and a dilated temporal conv; a 1x1 conv, BN, ReLU, (3 x 1) max-pool, BN branch; a
    strided 1x1 conv, BN branch. No residual of its own (the unit adds one)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 1,
                 dilations: tuple[int, ...] = (1, 2)):
        super().__init__()
        nb = len(dilations) + 2
        if out_channels % nb:
            raise ValueError(f"the multi-scale temporal conv splits its {out_channels} channels into {nb} "
                             f"branches: use a multiple of {nb}")
        bc = out_channels // nb
        branches = [nn.Sequential(nn.Conv2d(in_channels, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(),
                                  TemporalConv(bc, bc, kernel_size, stride=stride, dilation=d)) for d in dilations]
        branches.append(nn.Sequential(nn.Conv2d(in_channels, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(),
                                      nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)), nn.BatchNorm2d(bc)))
        branches.append(nn.Sequential(nn.Conv2d(in_channels, bc, 1, stride=(stride, 1)), nn.BatchNorm2d(bc)))
        self.branches = nn.ModuleList(branches)
        # the original's weights_init: kaiming fan_out convs, BN scales drawn around 1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)  # (N, C_out, T', V)


class CTRGCNUnit(nn.Module):
    """``relu(tcn1(gcn1(x)) + residual(x))``: (N, C_in, T, V) -> (N, C_out, T / stride, V)."""

    def __init__(self, in_channels: int, out_channels: int, a: np.ndarray, stride: int = 1, residual: bool = True):
        super().__init__()
        self.gcn1 = UnitGCN(in_channels, out_channels, a)
        self.tcn1 = MultiScaleTemporalConv(out_channels, out_channels, kernel_size=5, stride=stride, dilations=(1, 2))
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:  # the original's unit_tcn with kernel 1
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1)),
                                          nn.BatchNorm2d(out_channels))
            _conv_init(self.residual[0])
            _bn_init(self.residual[1], 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn1(self.gcn1(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y)


class CTRGCN(nn.Module):
    """CTR-GCN encoder: ``(N, C, T, V, M)`` skeletons -> ``(N, out_channels)``.

    Args:
        in_channels: coordinates per joint (3).
        hidden_channels: width of the first units (64 in the paper).
        out_channels: embedding size D, the last unit's width (256 in the paper).
        dropout: dropout rate on the pooled feature (the original's ``drop_out``, 0).
        layout: graph layout name or layout-file path; sets V and the adjacency.
        num_person: M the input BatchNorm is built for.
    """

    def __init__(self, *, in_channels: int, hidden_channels: int, out_channels: int, dropout: float,
                 layout: str | Layout, num_person: int):
        super().__init__()
        a = ctrgcn_adjacency(layout)
        self.num_joints, self.num_person, self.in_channels = a.shape[1], num_person, in_channels
        self.out_dim = out_channels
        h = hidden_channels
        plan = [  # (in, out, stride)
            (in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2),
            (2 * h, 2 * h, 1), (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, out_channels, 1),
        ]
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * self.num_joints)
        _bn_init(self.data_bn, 1.0)
        self.blocks = nn.ModuleList(CTRGCNUnit(ci, co, a, stride=s, residual=i != 0)
                                    for i, (ci, co, s) in enumerate(plan))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        if (c, v, m) != (self.in_channels, self.num_joints, self.num_person):
            raise ValueError(f"CTR-GCN built for C={self.in_channels}, {self.num_joints} joints and "
                             f"M={self.num_person} persons (num_person) got input of shape {tuple(x.shape)}")
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)  # (N, M·V·C, T)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)  # (N·M, C, T, V)
        for block in self.blocks:
            x = block(x)  # (N·M, C_i, T_i, V)
        x = x.mean(dim=(2, 3)).view(n, m, -1).mean(dim=1)  # (N, D)
        return self.drop(x)


@register_backbone("ctrgcn")
def build_ctrgcn(*, in_channels: int, hidden_channels: int, out_channels: int, dropout: float, graph_layout: str,
                 num_person: int) -> CTRGCN:
    """CTR-GCN from config entries (parameter names are config keys; defaults: module/defaults.py)."""
    return CTRGCN(in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels,
                  dropout=dropout, layout=graph_layout, num_person=num_person)
