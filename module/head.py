"""The models every track trains: an input stream, a skeleton encoder and a head.

* ``SkeletonTextModel``: backbone → linear projection into the text space, with a learnable
  temperature (the zero-shot tracks);
* ``ClassifierModel``: backbone → linear classifier over the dataset's classes (the
  supervised track).

Both convert the joints they are given into the configured input stream first
(``InputStream``: joint, bone, joint motion, bone motion; ``data/streams.py``), so a
checkpoint evaluates the same stream it was trained on and augmentation always acts on
joints. An FR-Head (``module/frhead.py``), when configured, is attached as ``fr_head``: its
parameters and prototype memory then train and are saved with the model.
"""
from __future__ import annotations

import math

import torch
from torch import nn


INPUT_NORMS = ("none", "minmax")


def minmax_per_sequence(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each sequence of ``(N, C, T, V, M)`` scaled per coordinate axis to [-1, 1] over its present
    joints (FR-Head's / CTR-GCN's NW-UCLA feeder); an absent person (all joints zero in a frame) stays
    zero. (A joint at the origin, e.g. the centring joint of the first frame, is present.)"""
    present = (x != 0).any(dim=(1, 3), keepdim=True).expand_as(x)  # (N, C, T, V, M): the person is in the frame
    big = torch.finfo(x.dtype).max
    lo = torch.where(present, x, big).amin(dim=(2, 3, 4), keepdim=True)  # (N, C, 1, 1, 1)
    hi = torch.where(present, x, -big).amax(dim=(2, 3, 4), keepdim=True)
    lo, hi = torch.where(hi >= lo, lo, 0.0), torch.where(hi >= lo, hi, 0.0)  # a sequence with no joint at all
    scaled = 2.0 * (x - lo) / (hi - lo).clamp_min(eps) - 1.0
    return torch.where(present, scaled, torch.zeros_like(x))


class InputStream(nn.Module):
    """Joints ``(N, C, T, V, M)`` → the ``modality`` stream of the same shape (no parameters),
    after the per-sequence normalisation ``input_norm`` (``"minmax"``: ``minmax_per_sequence``)."""

    def __init__(self, modality: str = "joint", layout: str = "ntu25", input_norm: str = "none"):
        super().__init__()
        from data.streams import check_modality

        check_modality(modality)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; choose one of {INPUT_NORMS}")
        self.modality, self.layout, self.input_norm = modality, layout, input_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "minmax":
            x = minmax_per_sequence(x)
        if self.modality == "joint":
            return x
        from data.streams import to_modality

        return to_modality(x, self.modality, self.layout)

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, layout={self.layout!r}, input_norm={self.input_norm!r}"


class SkeletonTextModel(nn.Module):
    """Backbone ``(N, C, T, V, M) → (N, D)``, then a linear head ``D → text_dim``.

    ``logit_scale`` is the log of the inverse softmax temperature, a registered
    ``nn.Parameter`` (the original moved its parameter to the GPU after wrapping it, which left it
    out of the module and the optimiser, so it never trained). ``learn_temperature=False``
    keeps it fixed at ``1 / init_temperature`` to reproduce that behaviour.
    """

    def __init__(self, backbone: nn.Module, text_dim: int, init_temperature: float = 0.07,
                 learn_temperature: bool = True, max_logit_scale: float = 100.0,
                 stream: InputStream | None = None):
        super().__init__()
        self.stream = stream or InputStream()
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
        return self.head(self.backbone(self.stream(x)))  # (N, text_dim)


class ClassifierModel(nn.Module):
    """Backbone ``(N, C, T, V, M) → (N, D)``, then a linear classifier ``D → num_classes``
    (initialised as CTR-GCN's: normal with std sqrt(2 / num_classes), zero bias)."""

    def __init__(self, backbone: nn.Module, num_classes: int, stream: InputStream | None = None):
        super().__init__()
        self.stream = stream or InputStream()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_dim, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / num_classes))
        nn.init.zeros_(self.fc.bias)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(self.stream(x)))  # (N, num_classes) logits
