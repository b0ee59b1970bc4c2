"""FR-Head (Zhou et al., CVPR 2023): multi-level feature refinement by prototype contrast.

An auxiliary training loss on the feature maps of four backbone units (``"ST-Multi-Level"``).
At each level, two branches (spatial and temporal) pool the ``(N·M, C, T, V)`` map over
persons and over time (spatial) or joints (temporal), squeeze the channels (1x1 conv,
BatchNorm, ReLU), flatten, and project with a linear layer to ``hidden`` = 256 dims. The
loss works on those projected vectors ``z`` only; the classifier's logits (detached) serve
only to sort the batch into correct predictions, false negatives and false positives:

* prototypes: one per class, an EMA memory of the mean projected feature of the batch's
  confidently-correct samples (predicted right with softmax probability > ``pred_threshold``):
  ``m_k <- momentum · m_k + (1 - momentum) · mean_tp_k`` for the classes present; the loss of
  the step uses the updated prototype (the gradient flows through the batch mean);
* calibration: for a sample of class y, the cosine to its own prototype is shifted by
  ``alpha · (1 - p_y) · (cos(fn_y, z) - 1)`` (FN branch: pull towards the mean of class y's
  misclassified samples) or ``alpha · (1 - p_y) · (-cos(fp_y, z) - 1)`` (FP branch: push from
  the mean of the samples wrongly predicted as y), applied only where class y has such samples;
* loss: ``mean_i [CE(s_fn_i / tau, y_i) + CE(s_fp_i / tau, y_i)]`` over the K prototype cosines.

A level's loss is its spatial plus its temporal loss; ``FRHead`` returns
``sum_l level_weights[l] · loss_l``. The training loss is ``CE + CL_LOSS_WEIGHT · FRHead(...)``
from the first epoch (the original's ``--start-cl-epoch -1``; its 5 warm-up epochs are learning
rate warm-up only).

Kept from the original (``model/lib.py``, ``model/ctrgcn.py``, ``main.py``, version "V0"):
``alpha`` (alp) 0.125, temperature (tmp) 0.125, momentum (mom) 0.9, ``hidden`` (h_channel) 256,
``pred_threshold`` 0.0 (every correct prediction counts), ``use_p_map`` True, level weights
(0.1, 0.2, 0.5, 1), CL weight 0.1, the levels after units 1, 5, 8 and 10, prototypes
initialised from a standard normal, the ``x / (|x| + 1e-12)`` normalisations.

Deviations: the prototypes are a registered buffer (the original kept a plain attribute:
not saved in checkpoints, re-drawn at load); they are updated only in training mode (eval
computes the loss against the stored prototypes); the loss after the projection runs in
float32 outside autocast; the ablation versions (V1, V2, "NO FN", ...) are left out.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CL_LOSS_WEIGHT = 0.1                      # total = CE + 0.1 · FRHead loss (the original's --w-cl-loss)
LEVEL_WEIGHTS = (0.1, 0.2, 0.5, 1.0)      # low, mid, high, final (--w-multi-cl-loss)
STAGE_UNITS = (0, 4, 7, 9)                # of 10 units: after l1, l5, l8, l10 in the original CTR-GCN
MODES = ("ST-Multi-Level",)
EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# the contrastive loss as pure functions


def error_masks(labels: torch.Tensor, logits: torch.Tensor, num_classes: int,
                pred_threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) 0/1 masks: confidently-correct (true positives), false negatives, false positives.

    Args:
        labels: (N,) class ids.
        logits: (N, K) classifier outputs (only their argmax and softmax are used).
        num_classes: K.
        pred_threshold: a correct prediction counts as a true positive only above this probability.
    """
    lbl = F.one_hot(labels, num_classes).to(logits.dtype)            # (N, K)
    pred = F.one_hot(logits.argmax(1), num_classes).to(logits.dtype)  # (N, K)
    correct = lbl * pred
    fn = lbl - correct    # samples of class k predicted as something else
    fp = pred - correct   # samples predicted k that are of another class
    tp = correct * (logits.softmax(1) > pred_threshold).to(logits.dtype)
    return tp, fn, fp


def class_means(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(K, H) mean feature of each class's masked samples, zero for a class with none.

    Args:
        feats: (N, H).
        mask: (N, K) 0/1.
    """
    return mask.t() @ feats / mask.sum(0).clamp_min(EPS)[:, None]


def update_prototypes(memory: torch.Tensor, feats: torch.Tensor, tp: torch.Tensor,
                      momentum: float) -> torch.Tensor:
    """EMA prototypes ``momentum · m + (1 - momentum) · mean_tp`` for classes with a true
    positive, the old ``m`` for the others; differentiable through the batch mean.

    Args:
        memory: (K, H) current prototypes (no gradient).
        feats: (N, H) projected features.
        tp: (N, K) true-positive mask.
        momentum: weight of the old prototype.
    """
    present = tp.sum(0)[:, None] > 1e-8                              # (K, 1)
    return torch.where(present, momentum * memory + (1 - momentum) * class_means(feats, tp), memory)


def _unit(x: torch.Tensor) -> torch.Tensor:
    # x / (|x| + eps) as the original (a zero row stays zero)
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def calibrated_contrast_loss(feats: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                             prototypes: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor, *,
                             alpha: float, temperature: float, use_p_map: bool = True) -> torch.Tensor:
    """FR-Head's loss ("V0"): cross-entropy over cosines to the class prototypes, the true
    class's cosine calibrated towards the false negatives (one term) and away from the false
    positives (the other term).

    Args:
        feats: (N, H) projected features.
        labels: (N,) class ids.
        probs: (N, K) softmax of the (detached) classifier logits.
        prototypes: (K, H) class prototypes.
        fn, fp: (N, K) false-negative / false-positive masks (``error_masks``).
        alpha: size of the calibration term.
        temperature: divides the scores.
        use_p_map: scale the calibration by ``1 - p_y`` (less for confident samples).
    """
    k = prototypes.shape[0]
    z = _unit(feats)                                                 # (N, H)
    lbl = F.one_hot(labels, k).to(z.dtype)                           # (N, K)
    weight = alpha * lbl * ((1 - probs) if use_p_map else 1.0)       # (N, K), non-zero at the label only
    has_fn = (fn.sum(0) > 1e-8).to(z.dtype)                          # (K,)
    has_fp = (fp.sum(0) > 1e-8).to(z.dtype)
    score = z @ _unit(prototypes).t()                                # (N, K)
    to_fn = z @ _unit(class_means(feats, fn)).t()                    # (N, K) cosine to each class's FN mean
    to_fp = z @ _unit(class_means(feats, fp)).t()
    s_fn = (score + (to_fn - 1) * weight * has_fn) / temperature
    s_fp = (score + (-to_fp - 1) * weight * has_fp) / temperature
    return (F.cross_entropy(s_fn, labels, reduction="none") + F.cross_entropy(s_fp, labels, reduction="none")).mean()


# ---------------------------------------------------------------------------------------------
# modules


class PrototypeContrast(nn.Module):
    """A linear projection, the class-prototype memory (a buffer) and the calibrated loss
    (the original's ``RenovateNet``).

    Args:
        in_dim: input feature size.
        num_classes: K.
        hidden: projection size H (256).
        alpha, temperature, momentum, pred_threshold, use_p_map: module docstring.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, *, alpha: float = 0.125,
                 temperature: float = 0.125, momentum: float = 0.9, pred_threshold: float = 0.0,
                 use_p_map: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.alpha, self.temperature, self.momentum = alpha, temperature, momentum
        self.pred_threshold, self.use_p_map = pred_threshold, use_p_map
        self.proj = nn.Linear(in_dim, hidden)
        self.register_buffer("prototypes", torch.randn(num_classes, hidden))  # (K, H), as the original's randn

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # feats: (N, in_dim); labels: (N,); logits: (N, K), detached by the caller
        z = self.proj(feats)
        dt = torch.promote_types(z.dtype, torch.float32)  # half precision -> float32 for the cosines
        with torch.autocast(z.device.type, enabled=False):
            z, logits, memory = z.to(dt), logits.to(dt), self.prototypes.to(dt)
            tp, fn, fp = error_masks(labels, logits, self.num_classes, self.pred_threshold)
            if self.training:
                protos = update_prototypes(memory, z, tp, self.momentum)
                with torch.no_grad():
                    self.prototypes.copy_(protos)
            else:
                protos = memory
            return calibrated_contrast_loss(z, labels, logits.softmax(1), protos, fn, fp, alpha=self.alpha,
                                            temperature=self.temperature, use_p_map=self.use_p_map)


def _squeeze(channels: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, out, kernel_size=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True))


class RefineLevel(nn.Module):
    """One level: spatial and temporal branches on a ``(N·M, C, T, V)`` map (``ST_RenovateNet``).

    Spatial: mean over persons and time, 1x1 conv to ``hidden // V`` channels, BatchNorm, ReLU,
    flatten to ``(hidden // V)·V``. Temporal: the same over persons and joints, to
    ``(hidden // T)·T``. Each branch then a ``PrototypeContrast``; the level's loss is their sum.

    Args:
        channels: C of the map.
        frames: T of the map (fixed: the flattened size depends on it).
        joints: V.
        num_classes: K.
        hidden: projection size (256).
        **kw: ``PrototypeContrast`` hyper-parameters.
    """

    def __init__(self, channels: int, frames: int, joints: int, num_classes: int, hidden: int = 256, **kw):
        super().__init__()
        if hidden < max(frames, joints):
            raise ValueError(f"FR-Head's hidden size {hidden} must be at least T={frames} and V={joints}")
        self.channels, self.frames, self.joints = channels, frames, joints
        cs, ct = hidden // joints, hidden // frames
        self.spatial_squeeze = _squeeze(channels, cs)
        self.temporal_squeeze = _squeeze(channels, ct)
        self.spatial = PrototypeContrast(cs * joints, num_classes, hidden, **kw)
        self.temporal = PrototypeContrast(ct * frames, num_classes, hidden, **kw)

    def forward(self, x: torch.Tensor, num_person: int, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        shape = (self.channels, self.frames, self.joints)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"FR-Head level built for (C, T, V) = {shape} got a map of shape {tuple(x.shape)}")
        x = x.unflatten(0, (-1, num_person))                              # (N, M, C, T, V)
        s = x.mean(dim=(1, 3)).unsqueeze(2)                               # (N, C, 1, V)
        t = x.mean(dim=(1, 4)).unsqueeze(3)                               # (N, C, T, 1)
        s = self.spatial_squeeze(s).flatten(1)                            # (N, cs·V)
        t = self.temporal_squeeze(t).flatten(1)                           # (N, ct·T)
        return self.spatial(s, labels, logits) + self.temporal(t, labels, logits)


class FRHead(nn.Module):
    """FR-Head's multi-level contrastive loss on captured backbone feature maps.

    A training-only auxiliary module kept beside the backbone (its parameters go to the
    optimiser; its prototypes are buffers, so they move with ``.to()`` and are saved in
    ``state_dict``). Use ``capture_stages`` to collect the maps and ``for_backbone`` to build it.

    Args:
        stage_channels: C of each level's map (``stage_channels(backbone)``).
        num_classes: K.
        stage_frames: T of each level's map.
        num_joints: V.
        level_weights: weight of each level's loss (0.1, 0.2, 0.5, 1).
        mode: "ST-Multi-Level" (the only one of the original).
        hidden: projection size (256).
        alpha: calibration size (0.125).
        temperature: score temperature (0.125).
        momentum: prototype EMA momentum (0.9).
        pred_threshold: probability above which a correct prediction updates its prototype (0).
        use_p_map: scale the calibration by ``1 - p_y`` (True).
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, *, stage_frames: Sequence[int],
                 num_joints: int, level_weights: Sequence[float] = LEVEL_WEIGHTS, mode: str = "ST-Multi-Level",
                 hidden: int = 256, alpha: float = 0.125, temperature: float = 0.125, momentum: float = 0.9,
                 pred_threshold: float = 0.0, use_p_map: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown FR-Head mode {mode!r}; choose one of {MODES}")
        if not len(stage_channels) == len(stage_frames) == len(level_weights):
            raise ValueError(f"FR-Head needs one channel count, frame count and weight per level, got "
                             f"{len(stage_channels)}, {len(stage_frames)} and {len(level_weights)}")
        self.mode = mode
        self.num_classes = num_classes
        self.level_weights = tuple(float(w) for w in level_weights)
        self.levels = nn.ModuleList(
            RefineLevel(c, t, num_joints, num_classes, hidden, alpha=alpha, temperature=temperature,
                        momentum=momentum, pred_threshold=pred_threshold, use_p_map=use_p_map)
            for c, t in zip(stage_channels, stage_frames))

    @classmethod
    def for_backbone(cls, backbone: nn.Module, sample: torch.Tensor, num_classes: int, **kw) -> "FRHead":
        """FR-Head for ``backbone``'s levels, their shapes read from one forward pass of ``sample``.

        Args:
            backbone: a registered backbone.
            sample: (n, C, T, V, M) input of the training shape (a slice of a batch will do).
            num_classes: K.
            **kw: ``FRHead`` keywords (level_weights, hidden, ...).
        """
        shapes = stage_shapes(backbone, sample)
        joints = {v for _, _, v in shapes}
        if len(joints) != 1:
            raise ValueError(f"FR-Head expects the same joint count at every level, got shapes {shapes}")
        return cls([c for c, _, _ in shapes], num_classes, stage_frames=[t for _, t, _ in shapes],
                   num_joints=joints.pop(), **kw)

    def forward(self, stages: Sequence[torch.Tensor], num_person: int, logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the levels' losses, a scalar.

        Args:
            stages: one (N·M, C, T, V) map per level.
            num_person: M.
            logits: (N, K) classifier outputs; detached here (they only select samples).
            labels: (N,) class ids in 0..K-1.
        """
        if len(stages) != len(self.levels):
            raise ValueError(f"FR-Head has {len(self.levels)} levels, got {len(stages)} feature maps")
        logits, labels = logits.detach(), labels.detach().long()
        return sum(w * level(x, num_person, labels, logits)
                   for w, level, x in zip(self.level_weights, self.levels, stages))


# ---------------------------------------------------------------------------------------------
# levels of a backbone


def _units(backbone: nn.Module) -> nn.ModuleList:
    units = getattr(backbone, "blocks", None)
    if units is None:
        units = getattr(backbone, "units", None)
    if not isinstance(units, nn.ModuleList):
        raise TypeError(f"{type(backbone).__name__} keeps no unit list in .blocks or .units")
    if len(units) != 10:
        raise ValueError(f"FR-Head's levels are defined for 10 units, {type(backbone).__name__} has {len(units)}")
    return units


def stage_modules(backbone: nn.Module) -> list[nn.Module]:
    """The units whose outputs are FR-Head's levels: the 1st, 5th, 8th and 10th of ten (low, mid,
    high, final; the original's CTR-GCN l1, l5, l8, l10: the first unit and the last of each width)."""
    units = _units(backbone)
    return [units[i] for i in STAGE_UNITS]


def _out_channels(unit: nn.Module) -> int:
    # a unit's own out_channels if it states one; else its widest BatchNorm2d (every unit of
    # these backbones normalises its output width; narrower ones are branch-internal)
    c = getattr(unit, "out_channels", None)
    if isinstance(c, int):
        return c
    widths = [m.num_features for m in unit.modules() if isinstance(m, nn.BatchNorm2d)]
    if not widths:
        raise TypeError(f"cannot tell the output channels of {type(unit).__name__}")
    return max(widths)


def stage_channels(backbone: nn.Module) -> list[int]:
    """C of each level's map, from the modules (no forward pass)."""
    return [_out_channels(m) for m in stage_modules(backbone)]


@contextlib.contextmanager
def capture_stages(backbone: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the level maps of the forward passes run inside the block.

    Yields a list that fills with the (N·M, C, T, V) outputs of ``stage_modules`` (one forward:
    four tensors). The hooks are removed on exit, also on an exception. The maps are kept
    without a copy (the original cloned them); exit raises if the backbone changed one in place
    after it was captured.
    """
    captured: list[torch.Tensor] = []
    versions: list[int] = []

    def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
        captured.append(output)
        versions.append(output._version)

    handles = [m.register_forward_hook(hook) for m in stage_modules(backbone)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
    if any(x._version != v for x, v in zip(captured, versions)):
        raise RuntimeError("a captured FR-Head level map was modified in place later in the forward pass")


def stage_shapes(backbone: nn.Module, sample: torch.Tensor) -> list[tuple[int, int, int]]:
    """(C, T, V) of each level's map for input ``sample`` (n, C, T, V, M): one forward pass in
    eval mode without gradients (no BatchNorm statistics change), the modes then restored."""
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.no_grad(), capture_stages(backbone) as maps:
            backbone(sample)
    finally:
        for m, training in modes.items():
            m.training = training
    return [tuple(x.shape[1:]) for x in maps]
