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

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
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


class EncoderModel(nn.Module):
    """A model around ``self.backbone`` whose encoder can be frozen (``frozen_backbone = True``:
    ``experiments/train/init.py``): then ``train()`` leaves the backbone in eval mode, so its
    BatchNorm statistics stay those it was trained with (linear evaluation)."""

    frozen_backbone = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self


class SkeletonTextModel(EncoderModel):
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


class ClassifierModel(EncoderModel):
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


def last_unit(backbone: nn.Module) -> nn.Module:
    """The backbone's last unit (of ``.blocks`` or ``.units``), whose output is the feature map
    ``(N·M, C, T, V)`` the backbone pools into its embedding."""
    for name in ("blocks", "units"):
        units = getattr(backbone, name, None)
        if isinstance(units, nn.ModuleList) and len(units):
            return units[-1]
    raise TypeError(f"{type(backbone).__name__} keeps no unit list in .blocks or .units: part-aware alignment "
                    "needs its last feature map")


@contextlib.contextmanager
def last_map(backbone: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass of ``backbone`` appends its last feature map
    ``(N·M, C, T, V)`` (``last_unit``'s output) to the list it yields."""
    maps: list[torch.Tensor] = []
    handle = last_unit(backbone).register_forward_hook(lambda _m, _i, out: maps.append(out))
    try:
        yield maps
    finally:
        handle.remove()


class PartAwareModel(SkeletonTextModel):
    """Part-aware alignment (after PURLS / STAR): beside the global embedding, the backbone's last
    feature map is averaged over time and over the joints of each body part (``module/parts.py``),
    and each part has its own linear head into the text space.

    The output is one fused vector per sample, ``[ĝ, s·p̂_1, …, s·p̂_P]`` (``x̂`` = unit length,
    ``s = sqrt(part_weight / P)``); the class texts are fused the same way by ``text_targets``
    (global text, then the part text in every part block). The dot product of the two is
    ``cos(g, t) + part_weight · mean_i cos(p_i, t_part)``, so the cosine every loss, the
    evaluation and the alignment compute is the global similarity plus the weighted mean part
    similarity (up to the constant ``1 + part_weight``): nothing downstream changes.
    """

    def __init__(self, backbone: nn.Module, text_dim: int, parts: dict[str, tuple[int, ...]], num_joints: int,
                 part_weight: float = 1.0, **kwargs):
        super().__init__(backbone, text_dim, **kwargs)
        if not part_weight > 0:
            raise ValueError(f"part_weight must be > 0, got {part_weight!r}")
        if not parts or any(not joints for joints in parts.values()):
            raise ValueError(f"part-aware alignment needs non-empty body parts, got {parts!r}")
        last_unit(backbone)  # fails early for a backbone without units
        pool = torch.zeros(len(parts), num_joints)
        for i, joints in enumerate(parts.values()):
            pool[i, list(joints)] = 1.0 / len(joints)
        self.register_buffer("part_pool", pool, persistent=False)  # (P, V): mean over each part's joints
        self.part_names = tuple(parts)
        self.part_weight = float(part_weight)
        self.part_heads = nn.ModuleList(nn.Linear(backbone.out_dim, text_dim) for _ in parts)

    def part_features(self, fmap: torch.Tensor, n: int) -> torch.Tensor:
        """``(N·M, C, T, V)`` map → ``(N, P, text_dim)``: per part, the mean over time, the part's
        joints and the persons, through the part's head."""
        if fmap.shape[1] != self.part_heads[0].in_features or fmap.shape[-1] != self.part_pool.shape[1]:
            raise ValueError(f"last feature map {tuple(fmap.shape)} does not fit the part heads "
                             f"({self.part_heads[0].in_features} channels, {self.part_pool.shape[1]} joints)")
        pooled = fmap.mean(dim=2) @ self.part_pool.t().to(fmap.dtype)  # (N·M, C, P)
        pooled = pooled.view(n, -1, *pooled.shape[1:]).mean(dim=1)  # (N, C, P)
        return torch.stack([head(pooled[..., i]) for i, head in enumerate(self.part_heads)], dim=1)

    def fuse(self, glob: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` and ``(N, P, D)`` → ``(N, D·(1 + P))`` (see the class docstring)."""
        s = math.sqrt(self.part_weight / parts.shape[1])
        return torch.cat([F.normalize(glob, dim=-1), s * F.normalize(parts, dim=-1).flatten(1)], dim=1)

    def text_targets(self, text: torch.Tensor, part_text: torch.Tensor) -> torch.Tensor:
        """Class texts ``(K, D)`` and part texts ``(K, D)`` → fused ``(K, D·(1 + P))``."""
        if text.shape != part_text.shape:
            raise ValueError(f"class texts {tuple(text.shape)} and part texts {tuple(part_text.shape)} differ in shape")
        return self.fuse(text, part_text.unsqueeze(1).expand(-1, len(self.part_names), -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with last_map(self.backbone) as maps:
            glob = self.head(self.backbone(self.stream(x)))
        return self.fuse(glob, self.part_features(maps[-1], x.shape[0]))
