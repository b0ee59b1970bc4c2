"""ST-GCN backbone (Yan et al., 2018) in the configuration PGFA/SMIE use.

Ten spatial-temporal blocks with channels h, h, h, h, 2h(stride 2), 2h, 2h, 4h(stride 2),
4h, D (h = ``hidden_channels`` = 16, D = ``out_channels`` = 256 in the paper), a
per-joint input BatchNorm, learnable edge-importance masks, global average pooling
over time and joints, and the mean over persons. Output: ``(N, D)``.

Two formulations of the same function with the same parameters (so checkpoints load
into either), chosen by ``formulation``:

* ``"plain"``: the straightforward one (graph conv = 1x1 conv to K·C_out channels,
  then a sum over subsets and neighbours; ``nn.Dropout``; default memory layout);
* ``"fast"`` (default): channels-last activations; graph convs as one dense 1x1
  convolution with the adjacency folded into the weight in the narrow blocks, the
  adjacency applied first in the wide ones (then the channel mixing is one 1x1
  convolution over K·C_in channels, which oneDNN runs near peak; ``GraphConv``);
  ``FastDropout``; and tensors recomputed in the backward instead of held (the
  aggregated input of the wide graph convs and the rectified BatchNorm output). Equal to the plain formulation up to float rounding (outputs
  and gradients, ``tests/unit/test_fast_backbones.py``); dropout draws a different random
  stream with the same distribution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from module.fastops import (FastDropout, SubsampledPointwiseConv, bn_dropout_add_relu, bn_relu_conv, channels_last,
                            check_formulation, pointwise_conv_bn, pool_persons)
from module.graph import adjacency, get_layout
from module.registry import register_backbone


# Graph convolutions whose dense joint-by-joint weight has at most this many rows and
# columns (V·C on either side) run as one 1x1 convolution (``GraphConv``: "dense"): one
# GEMM-shaped convolution beats aggregate-first on narrow layers until the dense weight's
# extra FLOPs (the adjacency is sparse) outweigh it (the timings: docs/speed.md).
DENSE_GRAPH_MAX = 800

GRAPH_METHODS = ("conv_then_aggregate", "aggregate_first", "dense")


def fast_graph_method(in_channels: int, out_channels: int, num_joints: int) -> str:
    """The fast formulation's graph-conv method for a layer of this size (``DENSE_GRAPH_MAX``)."""
    if num_joints * max(in_channels, out_channels) <= DENSE_GRAPH_MAX:
        return "dense"
    return "aggregate_first"


class GraphConv(nn.Module):
    """Spatial graph convolution over K adjacency subsets:
    ``y[n, o, t, w] = sum_{k, v, i} a[k, v, w] (W[k, o, i] x[n, i, t, v] + b[k, o])``.

    Three methods, the same sums in a different association, the same parameters:

    * ``conv_then_aggregate`` (reference): a 1×1 convolution to K·C_out channels, then a
      sum over subsets and neighbours.
    * ``aggregate_first``: aggregate over the neighbours of every subset first, then one
      1×1 convolution over K·C_in channels (the bias becomes a per-joint term).
    * ``dense``: fold the adjacency into the weight, ``D[(w, o), (v, i)] = sum_k a[k, v, w]
      W[k, o, i]``, and run one 1×1 convolution from V·C_in to V·C_out channels over the
      channels-last memory of ``x`` seen as ``(N, V·C_in, T, 1)``. More FLOPs (the
      adjacency is sparse) but one large GEMM-shaped convolution with nothing to hold or
      recompute for the backward: faster for narrow layers (``DENSE_GRAPH_MAX``).
    """

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, method: str = "conv_then_aggregate"):
        super().__init__()
        if method not in GRAPH_METHODS:
            raise ValueError(f"unknown graph-conv method {method!r}; choose one of {GRAPH_METHODS}")
        self.k = num_subsets
        self.out_channels = out_channels
        self.method = method
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, T, V), a: (K, V, W)
        if self.method == "aggregate_first":
            return self._aggregate_first(x, a)
        if self.method == "dense":
            return self._dense(x, a)
        n, _, t, v = x.shape
        y = self.conv(x).view(n, self.k, -1, t, v)  # (N, K, C_out, T, V)
        return torch.einsum("nkctv,kvw->nctw", y, a).contiguous()  # (N, C_out, T, W)

    def _bias(self, a: torch.Tensor) -> torch.Tensor:
        """``sum_k b[k, o] sum_v a[k, v, w]``: the conv bias seen through the aggregation, as (W, C_out)."""
        return torch.einsum("ko,kw->wo", self.conv.bias.view(self.k, self.out_channels), a.sum(1))

    def _dense(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        k, w, co = self.k, a.shape[2], self.out_channels
        weight = torch.einsum("kvw,koc->wovc", a, self.conv.weight.view(k, co, c)).reshape(w * co, v * c, 1, 1)
        rows = x.permute(0, 2, 3, 1).reshape(n, t, 1, v * c).permute(0, 3, 1, 2)  # (N, V·C_in, T, 1), channels-last
        y = F.conv2d(rows, weight, self._bias(a).reshape(w * co))                # (N, W·C_out, T, 1), channels-last
        return y.permute(0, 2, 3, 1).view(n, t, w, co).permute(0, 3, 1, 2)       # (N, C_out, T, W), channels-last

    def _aggregate_first(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        n, c, t, v = x.shape
        k, w, co = self.k, a.shape[2], self.out_channels
        agg = a.permute(2, 0, 1).reshape(w * k, v, 1, 1)                # [(w, k), v] = a[k, v, w]
        mix = self.conv.weight.view(k, co, c).transpose(0, 1).reshape(co, k * c, 1, 1)
        y = _AggregateMix.apply(x, agg, mix)                            # (N, C_out, T, W), channels-last
        # the bias added on the (N·T, W·C_out) view so that its gradient is a reduction over
        # contiguous rows (reducing a channels-last tensor over N and T directly is much slower).
        bias = self._bias(a).reshape(1, w * co)
        y = y.permute(0, 2, 3, 1).reshape(n * t, w * co) + bias        # (N·T, W·C_out)
        return y.view(n, t, w, co).permute(0, 3, 1, 2)                  # (N, C_out, T, W), channels-last


class _AggregateMix(torch.autograd.Function):
    """Aggregation over the adjacency, then the channel mix, keeping only the input for the
    backward: the aggregated tensor (K·C_in channels, the largest of the graph conv) is
    recomputed there (one cheap convolution) instead of being held from the forward pass
    to the backward one, which saves about a third of ST-GCN's activation memory.

    Both steps are convolutions (oneDNN): the aggregation treats each (n, t) row of the
    channels-last input as a (V, 1, C_in) image whose channels are the joints.
    """

    @staticmethod
    def _aggregate(x: torch.Tensor, agg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, t, v = x.shape
        wk = agg.shape[0]
        rows = x.permute(0, 2, 3, 1).reshape(n * t, v, 1, c)            # a view for channels-last x
        z = F.conv2d(rows, agg)                                         # (N·T, W·K, 1, C_in)
        return rows, z.view(n, t, v, wk // v * c).permute(0, 3, 1, 2)  # z as (N, K·C_in, T, W), channels-last

    @staticmethod
    def forward(ctx, x: torch.Tensor, agg: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        # autocast does not reach into a Function's backward: run (and recompute) in the
        # dtype autocast would have chosen for the convolutions
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            x, agg, mix = x.to(dt), agg.to(dt), mix.to(dt)
        with torch.autocast(dev, enabled=False):
            _, z = _AggregateMix._aggregate(x, agg)
            y = F.conv2d(z, mix)
        ctx.save_for_backward(x, agg, mix)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, agg, mix = ctx.saved_tensors
        need_x, need_agg, need_mix = ctx.needs_input_grad
        gy = gy.to(mix.dtype)
        rows, z = _AggregateMix._aggregate(x, agg)
        conv_bwd = torch.ops.aten.convolution_backward
        gz, gmix, _ = conv_bwd(gy, z, mix, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                               [need_x or need_agg, need_mix, False])
        gx = gagg = None
        if need_x or need_agg:
            n, kc, t, w = gz.shape
            gz_rows = gz.permute(0, 2, 3, 1).reshape(n * t, agg.shape[0], 1, kc // (agg.shape[0] // w))
            grows, gagg, _ = conv_bwd(gz_rows, rows, agg, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                      [need_x, need_agg, False])
            if need_x:
                c = x.shape[1]
                gx = grows.view(n, t, w, c).permute(0, 3, 1, 2)
        return gx, gagg, gmix


class STGCNBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, temporal_kernel: int,
                 stride: int = 1, dropout: float = 0.0, residual: bool = True, fast: bool = False,
                 num_joints: int = 25):
        super().__init__()
        pad = (temporal_kernel - 1) // 2
        self.fast = fast
        method = fast_graph_method(in_channels, out_channels, num_joints) if fast else "conv_then_aggregate"
        self.gcn = GraphConv(in_channels, out_channels, num_subsets, method)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels),
            FastDropout(dropout) if fast else nn.Dropout(dropout),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(  # same parameters either way (fastops: why subsampled)
                SubsampledPointwiseConv(in_channels, out_channels, stride=(stride, 1)) if fast else
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        bn, relu, conv, bn2, drop = self.tcn
        if self.fast and self.training and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            # the same modules, holding fewer tensors for the backward (fastops: bn_relu_conv, pointwise_conv_bn)
            res = 0 if self.residual is None else (
                x if isinstance(self.residual, nn.Identity) else pointwise_conv_bn(x, *self.residual))
            y = bn_relu_conv(self.gcn(x, a), bn, conv)
            if self.residual is not None and 0.0 < drop.p < 1.0:
                return bn_dropout_add_relu(y, bn2, drop.p, res)
            y = drop(bn2(y))
        else:
            res = 0 if self.residual is None else self.residual(x)
            y = self.tcn(self.gcn(x, a))
        return self.relu(y + res)


class STGCN(nn.Module):
    """ST-GCN encoder: ``(N, C, T, V, M)`` skeletons → ``(N, out_channels)``.

    Args:
        in_channels: coordinates per joint (3).
        hidden_channels: width of the first blocks (16 in PGFA).
        out_channels: embedding size (256).
        dropout: dropout inside every block but the first.
        layout: graph layout name (``module.graph.LAYOUTS``).
        strategy: adjacency partition (``spatial``).
        max_hop: neighbourhood radius.
        edge_importance: learn a multiplicative mask per block over the adjacency.
        temporal_kernel: temporal convolution length (9).
        formulation: "fast" | "plain" (module docstring); same parameters either way.
    """

    def __init__(self, *, in_channels: int, hidden_channels: int, out_channels: int, dropout: float, layout: str,
                 strategy: str, max_hop: int, edge_importance: bool, temporal_kernel: int, formulation: str):
        super().__init__()
        self.formulation = check_formulation(formulation)
        fast = formulation == "fast"
        a = torch.from_numpy(adjacency(get_layout(layout), strategy, max_hop))
        self.register_buffer("A", a)  # (K, V, V)
        k, v = a.shape[0], a.shape[1]
        self.num_joints = v
        self.out_dim = out_channels
        h = hidden_channels
        plan = [  # (in, out, stride)
            (in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2),
            (2 * h, 2 * h, 1), (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, out_channels, 1),
        ]
        self.data_bn = nn.BatchNorm1d(in_channels * v)
        self.blocks = nn.ModuleList(
            STGCNBlock(ci, co, k, temporal_kernel, stride=s,
                       dropout=0.0 if i == 0 else dropout, residual=i != 0, fast=fast, num_joints=v)
            for i, (ci, co, s) in enumerate(plan)
        )
        if edge_importance:
            self.edge_importance = nn.ParameterList(nn.Parameter(torch.ones_like(a)) for _ in plan)
        else:
            self.edge_importance = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        if v != self.num_joints:
            raise ValueError(f"ST-GCN built for {self.num_joints} joints got input with V={v} (shape {tuple(x.shape)})")
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)  # (N·M, V·C, T)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)  # (N·M, C, T, V)
        fast = self.formulation == "fast"
        if fast:
            x = channels_last(x)
        for i, block in enumerate(self.blocks):
            a = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, a)
        return pool_persons(x, n, m, fast)  # (N, D)


@register_backbone("stgcn")
def build_stgcn(*, in_channels: int, hidden_channels: int, out_channels: int, dropout: float, graph_layout: str,
                graph_strategy: str, max_hop: int, edge_importance: bool, temporal_kernel: int,
                formulation: str) -> STGCN:
    """ST-GCN from config entries (parameter names are config keys; defaults: module/defaults.py)."""
    return STGCN(in_channels=in_channels, hidden_channels=hidden_channels, out_channels=out_channels, dropout=dropout,
                 layout=graph_layout, strategy=graph_strategy, max_hop=max_hop, edge_importance=edge_importance,
                 temporal_kernel=temporal_kernel, formulation=formulation)
