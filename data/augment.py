"""Seeded batch augmentations of skeleton sequences (N, C, T, V, M).

Every function draws from the ``torch.Generator`` it is given (on the generator's device, so a
seed gives the same draws whatever device the data is on), returns a new tensor and leaves its
input alone. Parameters are drawn per sequence: one transform for all frames and persons of a
sequence, as the per-sample feeders of the references do.

* ``random_rotation``: CTR-GCN ``feeders/tools.py`` ``random_rot`` / pyskl ``RandomRot``;
* ``random_scale``: pyskl ``pyskl/datasets/pipelines/pose_related.py`` ``RandomScale``;
* ``random_shear``: SkeleMixCLR / CrosSCLR ``feeder/tools.py`` ``shear``;
* ``temporal_crop_resize``: CTR-GCN ``valid_crop_resize`` on data of fixed length;
* ``skelemix`` / ``draw_skelemix``: SkeleMixCLR ``net/skeletonclr_multi_swap.py`` ``ske_swap``.

``Augmentation`` bundles them as the config sets them (``aug_rotate``, ``aug_scale``,
``aug_shear``, ``aug_crop``, ``skelemix``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from module.graph import Layout
from module.parts import body_parts


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """U(low, high) on the generator's device (float64 so draws do not depend on the data's dtype)."""
    return low + (high - low) * torch.rand(shape, generator=gen, device=gen.device, dtype=torch.float64)


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 5:
        raise ValueError(f"expected a batch (N, C, T, V, M), got shape {tuple(x.shape)}")


def _mix_channels(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """out[n, i] = sum_j mat[n, i, j] · x[n, j]: a per-sequence linear map of the coordinates."""
    mat = mat.to(device=x.device, dtype=x.dtype)
    return torch.einsum("nij,njtvm->nitvm", mat, x)  # (N, C, T, V, M)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations Rz · Ry · Rx for angles (N, 3) about x, y, z (CTR-GCN ``_rot``)."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)  # (N, 3, 3)

    c, s = cos.unbind(1), sin.unbind(1)
    rx = mat([[one, zero, zero], [zero, c[0], s[0]], [zero, -s[0], c[0]]])
    ry = mat([[c[1], zero, -s[1]], [zero, one, zero], [s[1], zero, c[1]]])
    rz = mat([[c[2], s[2], zero], [-s[2], c[2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def random_rotation(x: torch.Tensor, max_angle: float, gen: torch.Generator, axes: str = "xyz") -> torch.Tensor:
    """Rotate each sequence about the x, y and z axes by angles U(-max_angle, max_angle).

    CTR-GCN ``random_rot`` (theta=0.3): one rotation for all frames of a sequence. ``axes``
    names the axes rotated about (FR-Head's NW-UCLA feeder: x and y, up to 60 degrees); the
    angles of the others are drawn too (the same random stream) and set to zero.

    Args:
        x: (N, 3, T, V, M) coordinates.
        max_angle: largest angle per axis, radians.
        gen: the random generator.
        axes: a subset of "xyz".
    """
    _check_batch(x)
    if x.shape[1] != 3:
        raise ValueError(f"rotation needs 3 coordinate channels, got C={x.shape[1]}")
    angles = _uniform(gen, (x.shape[0], 3), -max_angle, max_angle)  # (N, 3)
    if axes != "xyz":
        angles = angles * torch.tensor([float(a in axes) for a in "xyz"], dtype=angles.dtype)
    return _mix_channels(x, rotation_matrices(angles))


def random_scale(x: torch.Tensor, max_scale: float, gen: torch.Generator) -> torch.Tensor:
    """Scale each axis of each sequence by 1 + U(-max_scale, max_scale) (pyskl ``RandomScale``).

    Args:
        x: (N, C, T, V, M).
        max_scale: largest relative change per axis.
        gen: the random generator.
    """
    _check_batch(x)
    factor = 1.0 + _uniform(gen, tuple(x.shape[:2]), -max_scale, max_scale)  # (N, C)
    return x * factor.to(device=x.device, dtype=x.dtype)[:, :, None, None, None]


def random_shear(x: torch.Tensor, max_shear: float, gen: torch.Generator) -> torch.Tensor:
    """Shear each sequence: identity matrix plus off-diagonal entries U(-max_shear, max_shear).

    SkeleMixCLR/CrosSCLR ``feeder/tools.py`` ``shear`` (r=0.5 there): x' = R · x per frame.

    Args:
        x: (N, C, T, V, M).
        max_shear: largest off-diagonal entry.
        gen: the random generator.
    """
    _check_batch(x)
    n, c = x.shape[:2]
    eye = torch.eye(c, dtype=torch.float64, device=gen.device)
    mat = eye + _uniform(gen, (n, c, c), -max_shear, max_shear) * (1 - eye)  # (N, C, C)
    return _mix_channels(x, mat)


def temporal_crop_resize(x: torch.Tensor, p_interval: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Crop a random window of each sequence and stretch it back to T frames.

    CTR-GCN ``valid_crop_resize`` for unpadded data of fixed length T: window length
    round(p·T) (at least 1) with p ~ U(p_interval), start uniform over the valid starts, linear
    resize as ``F.interpolate(mode="linear", align_corners=False)``. CTR-GCN floors the length
    and keeps at least 64 frames; here the length rounds so that p=1 is exactly the identity.

    Args:
        x: (N, C, T, V, M).
        p_interval: (low, high) fraction of T kept, 0 < low <= high <= 1.
        gen: the random generator.
    """
    _check_batch(x)
    n, c, t, v, m = x.shape
    p = _uniform(gen, (n,), float(p_interval[0]), float(p_interval[1]))
    length = torch.clamp(torch.round(p * t), 1, t).long()  # (N,)
    # start uniform in [0, T - length]: floor of U[0, 1) · (T - length + 1)
    start = (torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64) * (t - length + 1)).long()
    length, start = length.to(x.device), start.to(x.device)
    # align_corners=False source coordinate of each output frame, clamped at 0 as PyTorch does
    out_t = torch.arange(t, device=x.device, dtype=torch.float64)
    src = ((out_t[None] + 0.5) * (length[:, None].double() / t) - 0.5).clamp(min=0)  # (N, T)
    lo = src.floor().long()
    hi = torch.minimum(lo + 1, length[:, None] - 1)
    w = (src - lo).to(x.dtype)[:, None, :, None, None]  # (N, 1, T, 1, 1)

    def frames(idx: torch.Tensor) -> torch.Tensor:
        idx = (start[:, None] + idx)[:, None, :, None, None].expand(n, c, t, v, m)
        return torch.gather(x, 2, idx)  # (N, C, T, V, M)

    return frames(lo) * (1 - w) + frames(hi) * w


def skelemix(x_a: torch.Tensor, x_b: torch.Tensor, joints: Sequence[int], frames: tuple[int, int]) -> torch.Tensor:
    """``x_a`` with the given joints over frames [start, stop) taken from ``x_b``.

    Exactly those joints × frames change, in every channel and person.

    Args:
        x_a: (N, C, T, V, M) the sequences mixed into.
        x_b: (N, C, T, V, M) the sequences pasted from.
        joints: joint indices to paste.
        frames: (start, stop), a half-open frame range.
    """
    _check_batch(x_a)
    if x_a.shape != x_b.shape:
        raise ValueError(f"skelemix needs equal shapes, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    t, v = x_a.shape[2], x_a.shape[3]
    mask = torch.zeros(t, v, dtype=torch.bool, device=x_a.device)
    cols = torch.as_tensor(list(joints), dtype=torch.long, device=x_a.device)
    mask[frames[0]:frames[1], cols] = True
    return torch.where(mask[None, None, :, :, None], x_b, x_a)  # (N, C, T, V, M)


def draw_skelemix_region(n: int, t: int, parts: dict[str, Sequence[int]], gen: torch.Generator,
                         num_parts: tuple[int, int] = (2, 3), span_blocks: tuple[int, int] = (7, 11),
                         blocks: int = 16, device: torch.device | str = "cpu"
                         ) -> tuple[torch.Tensor, list[int], tuple[int, int]]:
    """The random part of ``draw_skelemix`` (its docstring): the partner of each of ``n`` sequences,
    the pasted joints and the half-open frame range ``[start, stop)`` of ``t`` frames."""
    groups = list(parts.values())

    def randint(low: int, high: int) -> int:  # inclusive bounds
        return int(torch.randint(low, high + 1, (1,), generator=gen, device=gen.device))

    shift = randint(1, n - 1) if n > 1 else 0
    partner = (torch.arange(n, device=device) + shift) % n
    k_lo, k_hi = (min(max(k, 1), len(groups)) for k in num_parts)
    chosen = torch.randperm(len(groups), generator=gen, device=gen.device)[:randint(k_lo, k_hi)]
    joints = sorted(j for g in chosen.tolist() for j in groups[g])
    b_lo, b_hi = (min(max(b, 1), blocks) for b in span_blocks)
    span = randint(b_lo, b_hi)
    first = randint(0, blocks - span)
    start, stop = round(first * t / blocks), round((first + span) * t / blocks)
    stop = max(stop, min(start + 1, t))  # a short T still pastes at least one frame
    return partner, joints, (start, stop)


def draw_skelemix(x: torch.Tensor, parts: dict[str, Sequence[int]], gen: torch.Generator,
                  num_parts: tuple[int, int] = (2, 3), span_blocks: tuple[int, int] = (7, 11),
                  blocks: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SkeleMix a batch: paste body parts over a time span from a partner sequence.

    Follows SkeleMixCLR ``ske_swap`` (``net/skeletonclr_multi_swap.py``) with its published
    config (``config/CrosSCLR/skelemixclr_multi_swap_ntu.yaml``: spa 2-3, tem 7-11): one draw per
    batch, shared by all its sequences:

    * partner: the batch shifted cyclically by k ~ U{1, N-1}, so no sequence is its own partner
      (SkeleMixCLR draws k in 1..N-2; a batch of one is its own partner);
    * parts: k ~ U{num_parts} of the body parts, a random subset of that size;
    * span: T in ``blocks`` temporal blocks (SkeleMixCLR: 16 blocks of 4 frames at T=64, the
      stride of ST-GCN's last stage), a run of U{span_blocks} blocks at a uniform start block.

    Args:
        x: (N, C, T, V, M).
        parts: body part name -> joint indices (``module.parts.body_parts``).
        gen: the random generator.
        num_parts: (min, max) number of parts pasted, clipped to the number of parts.
        span_blocks: (min, max) length of the span in blocks, clipped to ``blocks``.
        blocks: temporal blocks T is split into.

    Returns:
        mixed (N, C, T, V, M); partner (N,) int64 index of the sequence pasted from; lam (N,)
        the fraction of the T × V grid still from the sequence itself (target weight of its label).
    """
    _check_batch(x)
    n, _, t, v, _ = x.shape
    partner, joints, (start, stop) = draw_skelemix_region(n, t, parts, gen, num_parts, span_blocks, blocks, x.device)
    mixed = skelemix(x, x[partner], joints, (start, stop))
    lam = 1.0 - len(joints) * (stop - start) / (t * v)
    return mixed, partner, torch.full((n,), lam, dtype=x.dtype, device=x.device)


@dataclass(frozen=True)
class Augmentation:
    """The training augmentations of a run; all-zero settings leave the data alone.

    Args:
        rotate: ``aug_rotate``, largest rotation angle per axis in radians (CTR-GCN: 0.3).
        scale: ``aug_scale``, largest relative scale change per axis, in [0, 1).
        shear: ``aug_shear``, largest shear entry, in [0, 1] (SkeleMixCLR: 0.5).
        crop: ``aug_crop``, (low, high) fraction of frames kept by the temporal crop (CTR-GCN:
            (0.5, 1)); (1, 1) is off.
        skelemix: ``skelemix``, probability that a batch is SkeleMixed.
        rotate_axes: ``aug_rotate_axes``, the axes rotated about ("xyz"; FR-Head's NW-UCLA feeder "xy").
    """

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    crop: tuple[float, float] = (1.0, 1.0)
    skelemix: float = 0.0
    rotate_axes: str = "xyz"

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotate <= math.pi:
            raise ValueError(f"aug_rotate must be an angle in [0, pi] radians, got {self.rotate}")
        if not self.rotate_axes or set(self.rotate_axes) - set("xyz") or len(set(self.rotate_axes)) != len(
                self.rotate_axes):
            raise ValueError(f"aug_rotate_axes must name distinct axes of 'xyz', got {self.rotate_axes!r}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"aug_scale must be in [0, 1) (factors 1 ± aug_scale stay positive), got {self.scale}")
        if not 0.0 <= self.shear <= 1.0:
            raise ValueError(f"aug_shear must be in [0, 1], got {self.shear}")
        crop = tuple(float(p) for p in self.crop) if isinstance(self.crop, (list, tuple)) else None
        if crop is None or len(crop) != 2 or not 0.0 < crop[0] <= crop[1] <= 1.0:
            raise ValueError(f"aug_crop must be [low, high] with 0 < low <= high <= 1, got {self.crop}")
        object.__setattr__(self, "crop", crop)  # a config list becomes a hashable tuple
        if not 0.0 <= self.skelemix <= 1.0:
            raise ValueError(f"skelemix is a probability in [0, 1], got {self.skelemix}")

    @property
    def enabled(self) -> bool:
        return bool(self.rotate or self.scale or self.shear or self.crop != (1.0, 1.0) or self.skelemix)

    def apply(self, x: torch.Tensor, gen: torch.Generator, layout: Layout | str
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Crop, rotate, scale, shear (those switched on), then SkeleMix with probability ``skelemix``.

        Args:
            x: (N, C, T, V, M) joint coordinates; not modified.
            gen: the random generator; nothing is drawn for a step that is off.
            layout: the skeleton layout (its body parts for SkeleMix).

        Returns:
            (x_aug, partner, lam): partner (N,) and lam (N,) when the batch was SkeleMixed (targets
            lam·y + (1-lam)·y[partner]), else None. With nothing on, x_aug is ``x`` itself.
        """
        out = x
        if self.crop != (1.0, 1.0):
            out = temporal_crop_resize(out, self.crop, gen)
        if self.rotate:
            out = random_rotation(out, self.rotate, gen, self.rotate_axes)
        if self.scale:
            out = random_scale(out, self.scale, gen)
        if self.shear:
            out = random_shear(out, self.shear, gen)
        if self.skelemix and float(torch.rand((), generator=gen, device=gen.device)) < self.skelemix:
            out, partner, lam = draw_skelemix(out, body_parts(layout), gen)
            return out, partner, lam
        return out, None, None
