"""Shift-GCN backbone (Cheng et al., CVPR 2020) as PGFA uses it for Setting 2.

Ten units with channels h, h, h, h, 2h (stride 2), 2h, 2h, 4h (stride 2), 4h, D
(h = ``hidden_channels`` = 64 and D = ``out_channels`` = 256 in the paper, which is the
original's 64-64-64-64-128-128-128-256-256-256). Each unit is

* a spatial shift graph convolution: every channel j of joint i reads joint (i + j) mod V
  (a fixed index permutation, no adjacency), a learnable feature mask ``tanh(m) + 1``,
  a linear map over channels, a second shift reading joint (i - j) mod V, BatchNorm over
  the joint x channel features, plus a (projected) residual and ReLU;
* a temporal shift block: BatchNorm, a learnable temporal shift (``module.shift``), a
  1x1 convolution, ReLU, a second (possibly strided) temporal shift, BatchNorm;
* the unit's residual (none in the first unit) and ReLU.

Input BatchNorm over person x joint x channel features (as the original, so the
person count ``num_person`` is fixed at construction), global average pooling over
time and joints, then the mean over persons: ``(N, C, T, V, M) -> (N, D)``.

Two formulations with the same parameters (checkpoints load into either), chosen by
``formulation``: ``"plain"`` is the straightforward one above; ``"fast"`` (default)
keeps activations channels-last throughout (every reshape between (N·T, V·C) rows and
(N, C, T, V) maps is then a view, and convolutions, BatchNorm and the temporal shift's
depthwise-convolution backend see one layout), runs the per-joint linear map as a 1x1
convolution (oneDNN; MKL's GEMM runs at about 40% of it on this AMD CPU) and the
joint x channel BatchNorm as ``JointChannelBatchNorm``. Equal up to float rounding
(``tests/unit/test_fast_backbones.py``).

Differences from the original code: index tables are buffers (not Parameters), nothing
is created on a fixed device, the joint count follows the graph layout instead of a
hard-coded 25, and where T is odd at a strided unit (the original crashes: the shift
keeps floor(T/2) frames, the strided residual ceil(T/2)) the residual's last frame is
dropped so the two line up.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from module.fastops import (JointChannelBatchNorm, SubsampledPointwiseConv, channels_last, check_formulation,
                            pool_persons)
from module.graph import get_layout
from module.registry import register_backbone
from module.shift import TemporalShift


def _conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def shift_indices(num_joints: int, channels: int, direction: int) -> torch.Tensor:
    """Flat (V·C,) gather index: channel j of joint i reads joint (i + direction·j) mod V, channel j."""
    joint = torch.arange(num_joints)[:, None]
    chan = torch.arange(channels)[None, :]
    return (((joint + direction * chan) % num_joints) * channels + chan).reshape(-1)


class ShiftGraphConv(nn.Module):
    """Non-local spatial shift graph convolution: (N, C_in, T, V) -> (N, C_out, T, V)."""

    def __init__(self, in_channels: int, out_channels: int, num_joints: int, fast: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.fast = fast
        if in_channels != out_channels:
            self.down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
            _conv_init(self.down[0])
        else:
            self.down = nn.Identity()
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels).normal_(0.0, math.sqrt(1.0 / out_channels)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.feature_mask = nn.Parameter(torch.zeros(num_joints, in_channels))  # tanh(0) + 1 = 1 at start
        # the same module either way (JointChannelBatchNorm is a BatchNorm1d), only run differently
        self.bn = (JointChannelBatchNorm if fast else nn.BatchNorm1d)(num_joints * out_channels)
        self.relu = nn.ReLU(inplace=True)
        # Fixed permutations; derived from the shape, so not saved in checkpoints.
        self.register_buffer("shift_in", shift_indices(num_joints, in_channels, +1), persistent=False)
        self.register_buffer("shift_out", shift_indices(num_joints, out_channels, -1), persistent=False)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._fast(x0)
        n, c, t, v = x0.shape
        x = x0.permute(0, 2, 3, 1).reshape(n * t, v * c)              # (N·T, V·C_in)
        x = x.index_select(1, self.shift_in).view(n * t, v, c)         # shift in
        x = x * (torch.tanh(self.feature_mask) + 1)                    # (N·T, V, C_in)
        x = torch.matmul(x, self.weight) + self.bias                   # (N·T, V, C_out)
        x = x.view(n * t, v * self.out_channels).index_select(1, self.shift_out)  # shift out
        x = self.bn(x)                                                 # BatchNorm over joint x channel
        x = x.view(n, t, v, self.out_channels).permute(0, 3, 1, 2)    # (N, C_out, T, V)
        return self.relu(x + self.down(x0))

    def _fast(self, x0: torch.Tensor) -> torch.Tensor:
        """The same map on channels-last activations: every (N·T, V·C) row view is free."""
        n, c, t, v = x0.shape
        co = self.out_channels
        x = channels_last(x0).permute(0, 2, 3, 1).reshape(n * t, v * c)  # (N·T, V·C_in), a view
        x = x.index_select(1, self.shift_in).view(n * t, v, c)           # shift in
        x = x * (torch.tanh(self.feature_mask) + 1)                      # (N·T, V, C_in)
        x = x.view(n, t, v, c).permute(0, 3, 1, 2)                       # (N, C_in, T, V), channels-last
        x = F.conv2d(x, self.weight.t()[:, :, None, None], self.bias)    # linear over channels (oneDNN)
        x = x.permute(0, 2, 3, 1).reshape(n * t, v * co).index_select(1, self.shift_out)  # shift out
        x = self.bn(x)                                                   # BatchNorm over joint x channel
        x = x.view(n, t, v, co).permute(0, 3, 1, 2)                      # (N, C_out, T, V), channels-last
        return self.relu(x + self.down(x0))


class ShiftTemporalBlock(nn.Module):
    """Shift-GCN's temporal block: (N, C, T, V) -> (N, C, T // stride, V)."""

    def __init__(self, channels: int, stride: int = 1, impl: str = "auto", pos_grad: str = "constrained"):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.shift_in = TemporalShift(channels, stride=1, init_scale=1.0, impl=impl, pos_grad=pos_grad)
        self.linear = nn.Conv2d(channels, channels, 1)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")  # bias keeps PyTorch's default, as the original
        self.relu = nn.ReLU(inplace=True)
        self.shift_out = TemporalShift(channels, stride=stride, init_scale=1.0, impl=impl, pos_grad=pos_grad)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shift_in(self.bn(x))
        x = self.relu(self.linear(x))
        return self.bn2(self.shift_out(x))


class ShiftGCNUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_joints: int, stride: int = 1, residual: bool = True,
                 impl: str = "auto", pos_grad: str = "constrained", fast: bool = False):
        super().__init__()
        self.gcn = ShiftGraphConv(in_channels, out_channels, num_joints, fast)
        self.tcn = ShiftTemporalBlock(out_channels, stride, impl, pos_grad)
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:  # the original's 1x1 "tcn": a strided 1x1 convolution and BatchNorm
            conv = (SubsampledPointwiseConv(in_channels, out_channels, stride=(stride, 1)) if fast else
                    nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1)))  # same parameters (fastops: why)
            self.residual = nn.Sequential(conv, nn.BatchNorm2d(out_channels))
            _conv_init(self.residual[0])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x))  # (N, C_out, T // stride, V)
        if self.residual is not None:
            r = self.residual(x)   # (N, C_out, ceil(T / stride), V)
            y = y + r[:, :, : y.shape[2]]
        return self.relu(y)


class ShiftGCN(nn.Module):
    """Shift-GCN encoder: ``(N, C, T, V, M)`` skeletons -> ``(N, out_channels)``.

    Args:
        in_channels: coordinates per joint (3).
        hidden_channels: width of the first units (64 in the original).
        out_channels: embedding size (256).
        num_person: M the input BatchNorm is built for (2 for NTU/PKU arrays).
        num_joints: V (25 for NTU).
        shift_impl: temporal shift implementation, "auto" | "cuda" | "dwconv" | "ref".
        shift_pos_grad: "constrained" (the original's sign steps) | "exact".
        formulation: "fast" | "plain" (module docstring); same parameters either way.
    """

    def __init__(self, *, in_channels: int, hidden_channels: int, out_channels: int, num_person: int, num_joints: int,
                 shift_impl: str, shift_pos_grad: str, formulation: str):
        super().__init__()
        self.formulation = check_formulation(formulation)
        self.num_person, self.num_joints, self.in_channels = num_person, num_joints, in_channels
        self.out_dim = out_channels
        h = hidden_channels
        plan = [  # (in, out, stride)
            (in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2),
            (2 * h, 2 * h, 1), (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, out_channels, 1),
        ]
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_joints)
        self.units = nn.ModuleList(
            ShiftGCNUnit(ci, co, num_joints, stride=s, residual=i != 0, impl=shift_impl, pos_grad=shift_pos_grad,
                         fast=formulation == "fast")
            for i, (ci, co, s) in enumerate(plan)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        if (c, v, m) != (self.in_channels, self.num_joints, self.num_person):
            raise ValueError(f"Shift-GCN built for C={self.in_channels}, V={self.num_joints} joints and "
                             f"M={self.num_person} persons (num_person) got input of shape {tuple(x.shape)}")
        if t < 4:
            raise ValueError(f"Shift-GCN halves time twice and needs at least 4 frames, got T={t}")
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)  # (N, M·V·C, T)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)  # (N·M, C, T, V)
        fast = self.formulation == "fast"
        if fast:
            x = channels_last(x)
        for unit in self.units:
            x = unit(x)
        return pool_persons(x, n, m, fast)  # (N, D)


@register_backbone("shiftgcn")
def build_shiftgcn(*, in_channels: int, hidden_channels: int, out_channels: int, num_person: int, graph_layout: str,
                   shift_impl: str, shift_pos_grad: str, formulation: str) -> ShiftGCN:
    """Shift-GCN from config entries (parameter names are config keys; defaults: module/defaults.py); the
    layout sets the joint count."""
    return ShiftGCN(in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels,
                    num_person=num_person, num_joints=get_layout(graph_layout).num_joints, shift_impl=shift_impl,
                    shift_pos_grad=shift_pos_grad, formulation=formulation)
