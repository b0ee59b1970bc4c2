"""Skeleton encoder + projection head into the text space + learnable temperature."""
from __future__ import annotations

import math

import torch
from torch import nn


class SkeletonTextModel(nn.Module):
    """Backbone ``(N, C, T, V, M) → (N, D)``, then a linear head ``D → text_dim``.

    ``logit_scale`` is the log of the inverse softmax temperature, a registered
    ``nn.Parameter`` (the original moved its parameter to the GPU after wrapping it, which left it
    out of the module and the optimiser, so it never trained). ``learn_temperature=False``
    keeps it fixed at ``1 / init_temperature`` to reproduce that behaviour.
    """

    def __init__(self, backbone: nn.Module, text_dim: int, init_temperature: float = 0.07,
                 learn_temperature: bool = True, max_logit_scale: float = 100.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, text_dim)
        self.text_dim = text_dim
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)),
                                        requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped (as in CLIP) so the logits cannot blow up."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (N, text_dim)
