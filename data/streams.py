"""Input streams (modalities) of a skeleton batch: joint, bone, joint motion, bone motion.

The four streams of the multi-stream GCNs (2s-AGCN, CTR-GCN ``feeders/feeder_ntu.py``):

* ``joint``: the coordinates as they are;
* ``bone``: each joint minus its parent joint (``module.graph.bone_parents``: parents point
  towards the layout's centre, whose own bone is zero), as CTR-GCN's ``ntu_pairs`` loop;
* ``joint_motion``: frame difference ``x[t+1] - x[t]``, the last frame zero (CTR-GCN ``vel``);
* ``bone_motion``: the motion of the bone stream (CTR-GCN applies ``bone`` then ``vel``).

All channels are transformed alike, as in CTR-GCN.
"""
from __future__ import annotations

import torch

from module.graph import Layout, bone_parents, get_layout

MODALITIES = ("joint", "bone", "joint_motion", "bone_motion")


def check_modality(name: str) -> str:
    """``name`` if it is one of ``MODALITIES``, else a ValueError listing them."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; choose one of {list(MODALITIES)}")
    return name


def bone(x: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """Joint minus its parent joint; the root (its own parent) gets zero.

    Args:
        x: (N, C, T, V, M) joint coordinates.
        parents: (V,) int64 parent index of each joint.
    """
    return x - x[:, :, :, parents, :]  # (N, C, T, V, M)


def motion(x: torch.Tensor) -> torch.Tensor:
    """Forward frame difference ``x[:, :, t+1] - x[:, :, t]``, the last frame zero.

    Args:
        x: (N, C, T, V, M).
    """
    diff = x[:, :, 1:] - x[:, :, :-1]  # (N, C, T-1, V, M)
    return torch.cat([diff, torch.zeros_like(x[:, :, :1])], dim=2)


def to_modality(x: torch.Tensor, modality: str, layout: Layout | str) -> torch.Tensor:
    """One stream of a batch of joint sequences.

    Args:
        x: (N, C, T, V, M) joint coordinates; not modified.
        modality: one of ``MODALITIES``; ``joint`` returns ``x`` itself.
        layout: a ``Layout``, a built-in layout name or the path of a layout file (its joint
            count must be V).
    """
    check_modality(modality)
    if x.dim() != 5:
        raise ValueError(f"expected a batch (N, C, T, V, M), got shape {tuple(x.shape)}")
    if modality == "joint":
        return x
    if isinstance(layout, str):
        layout = get_layout(layout)
    if layout.num_joints != x.shape[3]:
        raise ValueError(f"layout {layout.name!r} has {layout.num_joints} joints, the data {x.shape[3]} (V)")
    if modality == "joint_motion":
        return motion(x)
    parents = torch.tensor(bone_parents(layout), dtype=torch.long, device=x.device)
    bones = bone(x, parents)
    return motion(bones) if modality == "bone_motion" else bones
