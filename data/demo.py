"""The built-in demo dataset: synthetic NTU 25-joint skeletons of compositional actions.

Each class is a *body part* (left arm, right arm, left leg, right leg, both arms)
performing a *movement* (raise forward, raise sideways, circle, shake, bend and
straighten, swing back and forth): 5 × 6 = 30 classes, id = part · 6 + movement.
The demo splits (``data/splits.json``) hold out "diagonals" of this grid, so every
unseen class pairs a part and a movement that each occur in training classes, but
never together: only a model that maps skeletons into the text space in a way that
follows the words can name them.

Subjects differ in size, bone proportions, tempo and amplitude; every sample gets
its own viewpoint, phase, joint noise and idle sway. Sequences are written in the
SMIE/PGFA layout ``(N, 3, T, 25, M)`` with M = 1 (one actor; NTU's arrays carry
M = 2 with a zero second body, which would only double the compute here),
translated so the first frame's spine-middle joint is the origin.

Everything is a pure function of the seed; a full prepare takes about a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.arrays import part_paths, performer_path, save_npy_atomic, save_part
from data.catalog import dataset_splits, split_dir

PARTS = ("left_arm", "right_arm", "left_leg", "right_leg", "both_arms")
MOVEMENTS = ("raise_forward", "raise_sideways", "circle", "shake", "bend", "swing")
NUM_CLASSES = len(PARTS) * len(MOVEMENTS)
GENERATOR_VERSION = 3  # 3: seen_train_performer.npy
DEFAULT_SEED = 0
TRAIN_SUBJECTS = tuple(range(8))   # cross-subject protocol, as for NTU
TEST_SUBJECTS = tuple(range(8, 12))
REPS_TRAIN, REPS_TEST = 4, 10      # repetitions per (class, subject)

# NTU joint indices (0-based) used below.
BASE, SPINE_MID, NECK, HEAD, SPINE_SH = 0, 1, 2, 3, 20
ARM = {+1: (4, 5, 6, 7, 21, 22), -1: (8, 9, 10, 11, 23, 24)}   # shoulder elbow wrist hand tip thumb
LEG = {+1: (12, 13, 14, 15), -1: (16, 17, 18, 19)}             # hip knee ankle foot

BONES = {  # metres, for an average subject
    "spine1": 0.25, "spine2": 0.23, "neck": 0.07, "head": 0.15, "shoulder": 0.17, "hip": 0.09,
    "upper_arm": 0.28, "forearm": 0.25, "hand": 0.08, "tip": 0.05, "thumb": 0.04,
    "thigh": 0.42, "shin": 0.40, "foot": 0.12,
}


def class_id(part: str, movement: str) -> int:
    return PARTS.index(part) * len(MOVEMENTS) + MOVEMENTS.index(movement)


def class_of(cid: int) -> tuple[str, str]:
    return PARTS[cid // len(MOVEMENTS)], MOVEMENTS[cid % len(MOVEMENTS)]


def _direction(fwd: np.ndarray, side: np.ndarray, s: int) -> np.ndarray:
    """Unit limb directions (T, 3) in the body frame (x: person's left, y: up, z: forward).

    ``fwd`` lifts the hanging limb forward, ``side`` lifts it outward (towards side s)."""
    fwd, side = np.broadcast_arrays(np.asarray(fwd, float), np.asarray(side, float))
    return np.stack([s * np.sin(side), -np.cos(side) * np.cos(fwd), np.cos(side) * np.sin(fwd)], axis=-1)


def _limb_motion(movement: str, limb: str, s: int, phase: np.ndarray, amp: float) -> tuple[np.ndarray, np.ndarray]:
    """Directions of the upper and lower segment of one limb over time."""
    d = np.deg2rad
    arm = limb == "arm"
    rise = 0.5 - 0.5 * np.cos(phase)  # 0 → 1 → 0 once per cycle
    if movement == "raise_forward":
        upper = lower = _direction(amp * d(100 if arm else 55) * rise, d(5), s)
    elif movement == "raise_sideways":
        upper = lower = _direction(d(5), amp * d(95 if arm else 40) * rise, s)
    elif movement == "circle":
        radius, cf, cs = (d(30), d(45), d(20)) if arm else (d(18), d(20), d(10))
        upper = lower = _direction(cf + amp * radius * np.sin(phase), cs + amp * radius * np.cos(phase), s)
    elif movement == "shake":
        fast = 4.0 * phase
        base = d(25) if arm else d(15)
        upper = _direction(base + amp * d(8) * np.sin(fast), d(10) + amp * d(8) * np.sin(1.3 * fast + 1.0), s)
        lower = _direction(base + d(10) + amp * d(12) * np.sin(fast + 0.5), d(10), s)
    elif movement == "bend":
        flex = amp * d(130 if arm else 100) * rise
        upper = _direction(d(10) if arm else d(0), d(5), s)
        # the forearm folds forward and up; the shin folds backward
        lower = _direction(d(10) + flex if arm else -flex, d(5), s)
    elif movement == "swing":
        upper = lower = _direction(amp * d(45 if arm else 30) * np.sin(phase), d(5), s)
    else:
        raise ValueError(f"unknown movement {movement!r}")
    return upper, lower


def _idle_limb(limb: str, s: int, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = np.deg2rad
    wobble = d(3) * np.sin(2 * np.pi * t * rng.uniform(0.3, 0.8) + rng.uniform(0, 2 * np.pi))
    if limb == "arm":
        upper = _direction(d(5) + wobble, d(8), s)
        return upper, _direction(d(15) + wobble, d(8), s)
    upper = _direction(d(2) + 0.5 * wobble, d(3), s)
    return upper, upper


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def make_subject(rng: np.random.Generator) -> dict:
    """Body proportions and motion style of one synthetic performer."""
    scale = rng.uniform(0.85, 1.15)
    bones = {k: v * scale * rng.uniform(0.94, 1.06) for k, v in BONES.items()}
    return {"bones": bones, "tempo": rng.uniform(0.75, 1.3), "amp": rng.uniform(0.75, 1.1),
            "sway": rng.uniform(0.005, 0.02)}


def render(part: str, movement: str, subject: dict, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One sequence, ``(T, 25, 3)`` in camera coordinates (metres)."""
    b = subject["bones"]
    t = np.arange(frames) / frames
    cycles = 2.0 * subject["tempo"] * rng.uniform(0.9, 1.1)
    phase = 2 * np.pi * cycles * t + rng.uniform(-0.4, 0.4)
    amp = subject["amp"] * rng.uniform(0.9, 1.1)

    x = np.zeros((frames, 25, 3))
    sway = subject["sway"] * np.stack([np.sin(2 * np.pi * t * rng.uniform(0.3, 1.0) + rng.uniform(0, 6.3)),
                                       np.zeros(frames),
                                       np.sin(2 * np.pi * t * rng.uniform(0.3, 1.0) + rng.uniform(0, 6.3))], -1)
    up = np.array([0.0, 1.0, 0.0]) + 2.0 * sway  # the torso leans with the sway
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    left = np.array([1.0, 0.0, 0.0])
    x[:, BASE] = sway
    x[:, SPINE_MID] = x[:, BASE] + b["spine1"] * up
    x[:, SPINE_SH] = x[:, SPINE_MID] + b["spine2"] * up
    x[:, NECK] = x[:, SPINE_SH] + b["neck"] * up
    x[:, HEAD] = x[:, NECK] + b["head"] * up

    moving = {"left_arm": {("arm", +1)}, "right_arm": {("arm", -1)}, "left_leg": {("leg", +1)},
              "right_leg": {("leg", -1)}, "both_arms": {("arm", +1), ("arm", -1)}}[part]
    for s in (+1, -1):
        shoulder, elbow, wrist, hand, tip, thumb = ARM[s]
        upper, lower = (_limb_motion(movement, "arm", s, phase, amp) if ("arm", s) in moving
                        else _idle_limb("arm", s, t, rng))
        x[:, shoulder] = x[:, SPINE_SH] + s * b["shoulder"] * left - 0.03 * up
        x[:, elbow] = x[:, shoulder] + b["upper_arm"] * upper
        x[:, wrist] = x[:, elbow] + b["forearm"] * lower
        x[:, hand] = x[:, wrist] + b["hand"] * lower
        x[:, tip] = x[:, hand] + b["tip"] * lower
        thumb_dir = lower + np.array([0.0, 0.0, 0.6])
        x[:, thumb] = x[:, wrist] + b["thumb"] * thumb_dir / np.linalg.norm(thumb_dir, axis=-1, keepdims=True)

        hip, knee, ankle, foot = LEG[s]
        upper, lower = (_limb_motion(movement, "leg", s, phase, amp) if ("leg", s) in moving
                        else _idle_limb("leg", s, t, rng))
        x[:, hip] = x[:, BASE] + s * b["hip"] * left - 0.02 * up
        x[:, knee] = x[:, hip] + b["thigh"] * upper
        x[:, ankle] = x[:, knee] + b["shin"] * lower
        # the foot points forward, kept perpendicular to the shin
        fwd = np.array([0.0, 0.0, 1.0]) - (lower @ np.array([0.0, 0.0, 1.0]))[:, None] * lower
        x[:, foot] = x[:, ankle] + b["foot"] * fwd / np.linalg.norm(fwd, axis=-1, keepdims=True)

    # Body frame → camera frame: the performer faces the camera (yaw ±45°, small pitch).
    rot = _rotation_x(np.deg2rad(rng.uniform(-8, 8))) @ _rotation_y(np.pi + np.deg2rad(rng.uniform(-45, 45)))
    x = x @ rot.T + np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.2), rng.uniform(2.5, 3.5)])
    x += rng.normal(0.0, 0.004, size=(1, 25, 3))        # per-sample joint placement error
    x += rng.normal(0.0, 0.008, size=x.shape)           # per-frame sensor noise
    return x


def to_layout(seq: np.ndarray, persons: int = 1) -> np.ndarray:
    """``(T, V, 3)`` → ``(3, T, V, M)`` float32, first-frame spine-middle at the origin."""
    seq = seq - seq[0, SPINE_MID]
    out = np.zeros((3, seq.shape[0], seq.shape[1], persons), np.float32)
    out[..., 0] = seq.transpose(2, 0, 1)
    return out


def generate(seed: int = DEFAULT_SEED, frames: int = 50) -> dict[str, np.ndarray]:
    """All demo samples: ``data (N, 3, T, 25, 1)``, ``label (N,)``, ``subject (N,)``."""
    rng = np.random.default_rng(seed)
    subjects = [make_subject(rng) for _ in range(len(TRAIN_SUBJECTS) + len(TEST_SUBJECTS))]
    data, label, subject = [], [], []
    for sid, subj in enumerate(subjects):
        reps = REPS_TRAIN if sid in TRAIN_SUBJECTS else REPS_TEST
        for cid in range(NUM_CLASSES):
            part, movement = class_of(cid)
            for _ in range(reps):
                data.append(to_layout(render(part, movement, subj, frames, rng)))
                label.append(cid)
                subject.append(sid)
    return {"data": np.stack(data), "label": np.array(label, np.int64), "subject": np.array(subject, np.int64)}


def _meta(seed: int, frames: int) -> dict:
    return {"generator": "data.demo", "version": GENERATOR_VERSION, "seed": seed, "frames": frames}


def is_prepared(root: str | Path, split: str | int, seed: int = DEFAULT_SEED, frames: int = 50) -> bool:
    d = split_dir(root, "demo", split)
    meta = d / "meta.json"
    if not meta.is_file() or not all(p.is_file() for part in ("seen_train", "seen_test", "unseen")
                                      for p in part_paths(d, part)):
        return False
    with open(meta) as f:
        return json.load(f) == _meta(seed, frames)


def prepare(root: str | Path, seed: int = DEFAULT_SEED, frames: int = 50) -> list[Path]:
    """Write every demo split in the SMIE/PGFA layout under ``<root>/zeroshot/demo``."""
    samples = generate(seed, frames)
    train_subj = np.isin(samples["subject"], TRAIN_SUBJECTS)
    written = []
    for key, spec in dataset_splits("demo").items():
        unseen = np.isin(samples["label"], spec["unseen"])
        d = split_dir(root, "demo", key)
        for part, mask in (("seen_train", train_subj & ~unseen), ("seen_test", ~train_subj & ~unseen),
                           ("unseen", ~train_subj & unseen)):
            save_part(d, part, samples["data"][mask], samples["label"][mask])
        save_npy_atomic(performer_path(d, "seen_train"), np.asarray(samples["subject"], np.int64)[train_subj & ~unseen])
        with open(d / "meta.json", "w") as f:
            json.dump(_meta(seed, frames), f)
        written.append(d)
    return written
