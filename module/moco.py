"""Momentum contrast on skeletons (SkeletonCLR, as SkeleMixCLR trains it): a query encoder, a
momentum copy of it that encodes the keys, and a queue of past keys as negatives.

The query encoder is ``stream → backbone → projector`` (the backbone is any registered one; the
projector an MLP ``D → D → dim`` as SkeletonCLR's ``mlp=True``); its weights are saved under
``backbone.*`` like every model of the project, so ``init_from`` starts a classifier or a zero-shot
model from them. The key encoder (``key_backbone``, ``key_projector``) gets no gradients: after
every optimiser step its weights move towards the query encoder's, ``k ← m·k + (1 − m)·q``. The
queue holds the last ``queue_size`` keys (unit vectors, ``(dim, K)``), replaced oldest first.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from module.head import EncoderModel, InputStream


class MoCoModel(EncoderModel):
    """``forward(x)``: the unit query embedding ``(N, dim)``; ``keys(x)``: the key encoder's, no gradient.

    Args:
        backbone: ``(N, C, T, V, M) → (N, D)`` with ``out_dim = D``.
        dim: the embedding size of the contrast (SkeletonCLR: 128).
        queue_size: K, the number of negatives kept.
        momentum: m of the key encoder's update (SkeletonCLR: 0.999).
        temperature: of the InfoNCE logits (SkeletonCLR: 0.07).
        stream: the input stream (joint, bone, motion).
    """

    def __init__(self, backbone: nn.Module, dim: int = 128, queue_size: int = 32768, momentum: float = 0.999,
                 temperature: float = 0.07, stream: InputStream | None = None):
        super().__init__()
        if queue_size < 1 or not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise ValueError(f"MoCo needs queue_size >= 1, 0 <= momentum < 1 and temperature > 0; got "
                             f"{queue_size}, {momentum}, {temperature}")
        width = backbone.out_dim
        self.stream = stream or InputStream()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in self.key_parameters():
            p.requires_grad_(False)
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def key_parameters(self):
        yield from self.key_backbone.parameters()
        yield from self.key_projector.parameters()

    def query_parameters(self):
        yield from self.backbone.parameters()
        yield from self.projector.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(self.stream(x))), dim=1)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(self.stream(x))), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``k ← m·k + (1 − m)·q`` for every key parameter (buffers: the key encoder keeps its own)."""
        for k, q in zip(self.key_parameters(), self.query_parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N, dim) over the oldest entries (wrapping around the end)."""
        size = self.queue.shape[1]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        cols = (self.queue_ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[:, cols] = keys.T
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def logits(self, q: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """``(N, P + K)``: each query against its ``P`` candidate positives ``(N, P, dim)`` and the queue,
        divided by the temperature."""
        pos = torch.einsum("nd,npd->np", q, positives)
        neg = q @ self.queue.clone().detach()
        return torch.cat([pos, neg], dim=1) / self.temperature


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """MoCo's loss: cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def mixed_info_nce(logits: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A mixed query's loss: its positives are the keys of both sources (columns 0 and 1), weighted by
    the share each fills (``lam``, ``1 − lam``); the rest of the row is the queue."""
    logp = F.log_softmax(logits, dim=1)
    return -(lam * logp[:, 0] + (1.0 - lam) * logp[:, 1]).mean()
