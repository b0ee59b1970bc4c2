"""The checks and the preprocessing every raw reader shares.

Readers hand over joints as ``(M, T, V, 3)`` arrays in the sensor's coordinates
(metres): M actors, the most active first; a frame where an actor is absent is all
zero. ``to_layout`` turns them into one sample of the SMIE/PGFA layout:

1. refuse NaN/Inf, empty and all-zero sequences (``SequenceError`` naming the sequence);
2. drop frames where nobody is present;
3. translate so that the first frame's origin joint of the first actor is at (0, 0, 0)
   (the spine-middle joint for NTU/PKU, ``spine`` for Kinect v1); absent actors stay zero;
4. resample linearly to ``frames`` time steps (first and last frames kept);
5. zero-fill missing actors up to ``persons``.
"""
from __future__ import annotations

import numpy as np

from module.graph import get_layout

# The joint whose first-frame position becomes the origin, per layout.
ORIGIN_JOINT = {"ntu25": "spine_mid", "kinect20": "spine", "openni15": "torso"}


class SequenceError(ValueError):
    """A sequence that cannot become a sample (the message names it)."""


def origin_index(layout: str, joint: str | None = None) -> int:
    """Index of the origin joint: ``joint`` by name, else the layout's default."""
    lay = get_layout(layout)
    names = lay.joints
    joint = joint or ORIGIN_JOINT.get(layout) or (names[lay.origin] if lay.origin is not None else None)
    if joint is None:
        raise ValueError(f"layout {layout!r} has no default origin joint; name one of {list(names)}")
    if joint not in names:
        raise ValueError(f"origin joint {joint!r} is not a joint of layout {layout!r}: {list(names)}")
    return names.index(joint)


def check_joints(joints: np.ndarray, name: str, joints_expected: int | None = None) -> np.ndarray:
    """Validate ``(M, T, V, 3)`` joints; returns them as float64.

    Raises ``SequenceError`` for a wrong shape, NaN/Inf (with actor, frame and joint),
    no frames, or only zeros.
    """
    x = np.asarray(joints, dtype=np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise SequenceError(f"{name}: expected joints of shape (M, T, V, 3), got {x.shape}")
    if joints_expected is not None and x.shape[2] != joints_expected:
        raise SequenceError(f"{name}: {x.shape[2]} joints per skeleton, the layout has {joints_expected}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise SequenceError(f"{name}: no frames (shape {x.shape})")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        m, t, v, _ = bad[0]
        raise SequenceError(f"{name}: NaN or Inf coordinate at actor {m}, frame {t}, joint {v} "
                            f"({len(bad)} such values)")
    if not x.any():
        raise SequenceError(f"{name}: every joint is zero in every frame (no skeleton was tracked)")
    return x


def resample_linear(x: np.ndarray, frames: int) -> np.ndarray:
    """Linear resampling along axis 1 of ``(M, T, ...)`` to ``frames`` steps, endpoints kept."""
    t = x.shape[1]
    pos = np.linspace(0.0, t - 1, frames)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo).reshape((1, frames) + (1,) * (x.ndim - 2))
    return (1.0 - w) * x[:, lo] + w * x[:, hi]


def to_layout(joints: np.ndarray, *, frames: int, persons: int, origin: int, name: str) -> np.ndarray:
    """One sequence ``(M, T, V, 3)`` → one sample ``(3, frames, V, persons)`` float32 (see module doc)."""
    x = check_joints(joints, name)
    m = x.shape[0]
    if m > persons:
        raise SequenceError(f"{name}: {m} actors, the dataset keeps at most {persons}")
    present = x.any(axis=(2, 3))  # (M, T): actor tracked in that frame
    keep = present.any(axis=0)
    x, present = x[:, keep], present[:, keep]
    if x.shape[1] < 2:
        raise SequenceError(f"{name}: {x.shape[1]} frame with a skeleton; at least 2 are needed to resample")
    if not present[0].any():  # readers put the main actor first; an empty first slot is a reader bug
        raise SequenceError(f"{name}: the first actor is never present")
    first = int(np.argmax(present[0]))
    x = x - x[0, first, origin] * present[:, :, None, None]  # absent actors stay exactly zero
    out = resample_linear(x, frames)
    # Where one of the two source frames lacks the actor, a blend would shrink the skeleton
    # towards the origin: take the nearest source frame instead (zero if absent there).
    pos = np.linspace(0.0, x.shape[1] - 1, frames)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[1] - 1)
    nearest = np.rint(pos).astype(np.int64)
    both = present[:, lo] & present[:, hi]  # (M, frames)
    out = np.where(both[:, :, None, None], out, x[:, nearest])
    sample = np.zeros((3, frames, x.shape[2], persons), np.float32)
    sample[..., :m] = out.transpose(3, 1, 2, 0)
    return sample
