"""ST-GCN backbone (Yan et al., 2018) in the configuration PGFA/SMIE use.

Ten spatial-temporal blocks with channels h, h, h, h, 2h(stride 2), 2h, 2h, 4h(stride 2),
4h, D (h = ``hidden_channels`` = 16, D = ``out_channels`` = 256 in the paper), a
per-joint input BatchNorm, learnable edge-importance masks, global average pooling
over time and joints, and the mean over persons. Output: ``(N, D)``.
"""
from __future__ import annotations

import torch
from torch import nn

from module.graph import adjacency, get_layout
from module.registry import register_backbone


class GraphConv(nn.Module):
    """Spatial graph convolution over K adjacency subsets.

    A 1×1 convolution to K·C_out channels, then a sum over subsets and neighbours.
    """

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int):
        super().__init__()
        self.k = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, T, V), a: (K, V, W)
        n, _, t, v = x.shape
        y = self.conv(x).view(n, self.k, -1, t, v)  # (N, K, C_out, T, V)
        return torch.einsum("nkctv,kvw->nctw", y, a).contiguous()  # (N, C_out, T, W)


class STGCNBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_subsets: int, temporal_kernel: int,
                 stride: int = 1, dropout: float = 0.0, residual: bool = True):
        super().__init__()
        pad = (temporal_kernel - 1) // 2
        self.gcn = GraphConv(in_channels, out_channels, num_subsets)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        res = 0 if self.residual is None else self.residual(x)
        return self.relu(self.tcn(self.gcn(x, a)) + res)


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
    """

    def __init__(self, in_channels: int = 3, hidden_channels: int = 16, out_channels: int = 256,
                 dropout: float = 0.5, layout: str = "ntu25", strategy: str = "spatial",
                 max_hop: int = 1, edge_importance: bool = True, temporal_kernel: int = 9):
        super().__init__()
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
                       dropout=0.0 if i == 0 else dropout, residual=i != 0)
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
        for i, block in enumerate(self.blocks):
            a = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, a)
        x = x.mean(dim=(2, 3))  # (N·M, D): global average pool over T and V
        return x.view(n, m, -1).mean(dim=1)  # (N, D): mean over persons


@register_backbone("stgcn")
def build_stgcn(in_channels: int = 3, hidden_channels: int = 16, out_channels: int = 256, dropout: float = 0.5,
                graph_layout: str = "ntu25", graph_strategy: str = "spatial", max_hop: int = 1,
                edge_importance: bool = True, temporal_kernel: int = 9) -> STGCN:
    """ST-GCN from config entries (parameter names are config keys)."""
    return STGCN(in_channels, hidden_channels, out_channels, dropout, graph_layout, graph_strategy, max_hop,
                 edge_importance, temporal_kernel)
