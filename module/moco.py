"""Momentum contrast on skeletons (SkeletonCLR, as SkeleMixCLR trains it): a query encoder, a
momentum copy of it that encodes the keys, and a queue of past keys as negatives.

The query encoder is ``stream → backbone → projector`` (the backbone is any registered one; the
projector an MLP ``D → D → dim`` with BatchNorm, as SkeleMixCLR's ``mlp=True``); its weights are saved under
``backbone.*`` like every model of the project, so ``init_from`` starts a classifier or a zero-shot
model from them. The key encoder (``key_backbone``, ``key_projector``) gets no gradients: after
every optimiser step its weights move towards the query encoder's, ``k ← m·k + (1 − m)·q``. The
queue holds the last ``queue_size`` keys (unit vectors, ``(dim, K)``), replaced oldest first.

SkeleMixCLR's mixed queries (``region_queries``): a SkeleMixed sequence's last feature map is
averaged over the pasted region (joints × frames from the partner) and over its complement (the
sequence's own), each through the projector; the pasted region's positive is the partner's key,
the complement's its own key, and each has the other region's query (detached) as one more
negative beside the queue (``net/skeletonclr_multi_swapv2.py``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from module.head import EncoderModel, InputStream, last_map


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
        self.projector = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                       nn.Linear(width, dim))
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

    def region_queries(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit queries ``(N, dim)`` of the pasted region and of its complement of a SkeleMixed batch.

        Args:
            x: (N, C, T, V, M) the mixed sequences.
            mask: (T, V), 1 where the sequence was pasted from its partner; resampled to the feature
                map's (T', V) by area, so each feature cell weighs the share of it that was pasted.
        """
        with last_map(self.backbone) as maps:
            self.backbone(self.stream(x))
        fmap = maps[-1]  # (N·M, C, T', V)
        w = F.adaptive_avg_pool2d(mask[None, None].to(fmap.dtype), fmap.shape[2:])[0, 0]  # (T', V)

        def pooled(weight: torch.Tensor) -> torch.Tensor:
            feat = (fmap * weight).sum(dim=(2, 3)) / weight.sum().clamp_min(1e-6)  # (N·M, C)
            return F.normalize(self.projector(feat.view(x.shape[0], -1, feat.shape[1]).mean(dim=1)), dim=1)

        return pooled(w), pooled(1.0 - w)

    def logits(self, q: torch.Tensor, positive: torch.Tensor, extra_negative: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``(N, 1 + K [+ 1])``: each query ``(N, dim)`` against its positive ``(N, dim)``, the queue and
        optionally one more negative of its own ``(N, dim)``, divided by the temperature."""
        cols = [(q * positive).sum(1, keepdim=True), q @ self.queue.clone().detach()]
        if extra_negative is not None:
            cols.append((q * extra_negative).sum(1, keepdim=True))
        return torch.cat(cols, dim=1) / self.temperature


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """MoCo's loss: cross-entropy with the positive in column 0."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def skelemix_loss(model: MoCoModel, x_mixed: torch.Tensor, mask: torch.Tensor, k: torch.Tensor,
                  partner: torch.Tensor) -> torch.Tensor:
    """SkeleMixCLR's loss of one mixed view, ``(L_p + L_c) / 2``: the pasted region against the
    partner's key ``k[partner]``, the complement against the sequence's own key ``k``, each with
    the other region's query (detached) as an extra negative."""
    p, c = model.region_queries(x_mixed, mask)
    return 0.5 * (info_nce(model.logits(p, k[partner], c.detach())) + info_nce(model.logits(c, k, p.detach())))
