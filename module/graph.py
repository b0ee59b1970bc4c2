"""Skeleton graph layouts as data, and the adjacency construction of ST-GCN.

A layout is a number of joints, an edge list (0-based joint indices) and a centre
joint.  ``adjacency(layout, strategy)`` turns it into the (K, V, V) stack of
normalised adjacency matrices that a graph convolution consumes; it is a pure
function of the layout, so tests and other backbones can use it directly.

Built-in layouts: ``ntu25`` (Kinect v2), ``kinect20`` (Kinect v1), ``openni15`` (the 15 joints
of OpenNI/NiTE-era trackers); their joints in order: docs/datasets.md. Any other skeleton is a
layout file, no code change: ``graph_layout`` / ``raw.layout`` = the path of a JSON file

    {"joints": ["head", "neck", ...],                 # names, in the order of the data's joints
     "bones": [["head", "neck"], ...],                # by name (or 1-based number)
     "center": "neck",                                # ST-GCN's partition centre
     "origin": "torso"}                               # optional: the joint put at the origin

(``layout_from_file``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Layout:
    """A skeleton: joint names (index order), bones as 0-based pairs, centre joint."""

    name: str
    joints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    center: int
    origin: int | None = None  # the joint preparation puts at the origin (None: data/skeleton.py's default)

    @property
    def num_joints(self) -> int:
        return len(self.joints)


def _from_one_based(name: str, joints: list[str], bones_1based: list[tuple[int, int]], center_1based: int) -> Layout:
    edges = tuple((a - 1, b - 1) for a, b in bones_1based)
    for a, b in edges:
        if not (0 <= a < len(joints) and 0 <= b < len(joints)):
            raise ValueError(f"layout {name!r}: bone ({a + 1}, {b + 1}) names a joint outside 1..{len(joints)}")
    return Layout(name, tuple(joints), edges, center_1based - 1)


# Kinect v2 (NTU RGB+D 60/120, PKU-MMD): 25 joints, numbered as in the NTU README.
NTU25 = _from_one_based(
    "ntu25",
    [
        "spine_base", "spine_mid", "neck", "head",
        "shoulder_left", "elbow_left", "wrist_left", "hand_left",
        "shoulder_right", "elbow_right", "wrist_right", "hand_right",
        "hip_left", "knee_left", "ankle_left", "foot_left",
        "hip_right", "knee_right", "ankle_right", "foot_right",
        "spine_shoulder", "handtip_left", "thumb_left", "handtip_right", "thumb_right",
    ],
    [
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7),
        (9, 21), (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15),
        (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
    ],
    center_1based=21,
)

# Kinect v1 (UTD-MHAD, NW-UCLA): 20 joints in the Kinect SDK's NUI_SKELETON_POSITION order,
# which NW-UCLA uses as is. UTD-MHAD lists its first four joints top-down (head first);
# its reader permutes them into this order (data/kinect_v1.py).
KINECT20 = _from_one_based(
    "kinect20",
    [
        "hip_center", "spine", "shoulder_center", "head",
        "shoulder_left", "elbow_left", "wrist_left", "hand_left",
        "shoulder_right", "elbow_right", "wrist_right", "hand_right",
        "hip_left", "knee_left", "ankle_left", "foot_left",
        "hip_right", "knee_right", "ankle_right", "foot_right",
    ],
    [
        (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (7, 8), (3, 9), (9, 10), (10, 11), (11, 12),
        (1, 13), (13, 14), (14, 15), (15, 16), (1, 17), (17, 18), (18, 19), (19, 20),
    ],
    center_1based=3,  # shoulder_center, the counterpart of NTU's spine_shoulder centre
)

# OpenNI / NiTE (PrimeSense-era trackers): 15 joints, in the order those tools list them.
OPENNI15 = _from_one_based(
    "openni15",
    [
        "head", "neck", "torso",
        "shoulder_left", "elbow_left", "hand_left", "shoulder_right", "elbow_right", "hand_right",
        "hip_left", "knee_left", "foot_left", "hip_right", "knee_right", "foot_right",
    ],
    [(1, 2), (2, 3), (2, 4), (4, 5), (5, 6), (2, 7), (7, 8), (8, 9), (3, 10), (10, 11), (11, 12), (3, 13), (13, 14),
     (14, 15)],
    center_1based=2,  # neck, the counterpart of the other layouts' shoulder centre
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (NTU25, KINECT20, OPENNI15)}


def get_layout(name: str) -> Layout:
    """A built-in layout by name, or a layout file by its path (``*.json``)."""
    if name in LAYOUTS:
        return LAYOUTS[name]
    if str(name).endswith(".json"):
        return layout_from_file(name)
    raise KeyError(f"unknown graph layout {name!r}; built-in: {sorted(LAYOUTS)}, or the path of a layout file "
                   "(module/graph.py: layout_from_file)")


def layout_from_file(path: str | Path) -> Layout:
    """A layout from a JSON file (module docstring); errors name the file and the entry."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"layout file {path}: not readable JSON ({exc})") from None
    joints = doc.get("joints")
    if not isinstance(joints, list) or not joints or len(set(joints)) != len(joints):
        raise ValueError(f"layout file {path}: 'joints' must be a list of distinct joint names")

    def index(ref, what: str) -> int:
        if isinstance(ref, int) and 1 <= ref <= len(joints):
            return ref - 1
        if ref in joints:
            return joints.index(ref)
        raise ValueError(f"layout file {path}: {what} {ref!r} is not one of its {len(joints)} joints {joints}")

    bones = doc.get("bones")
    if not isinstance(bones, list) or not all(isinstance(b, list) and len(b) == 2 for b in bones):
        raise ValueError(f"layout file {path}: 'bones' must be a list of [joint, joint] pairs")
    edges = tuple((index(a, "bone joint"), index(b, "bone joint")) for a, b in bones)
    origin = index(doc["origin"], "origin") if doc.get("origin") is not None else None
    return Layout(str(path), tuple(joints), edges, index(doc.get("center"), "center"), origin)


def hop_distance(num_nodes: int, edges: tuple[tuple[int, int], ...], max_hop: int) -> np.ndarray:
    """(V, V) matrix of hop counts between joints, ``inf`` beyond ``max_hop``."""
    a = np.eye(num_nodes, dtype=bool)
    link = np.zeros((num_nodes, num_nodes), dtype=bool)
    for i, j in edges:
        link[i, j] = link[j, i] = True
    dist = np.full((num_nodes, num_nodes), np.inf)
    dist[a] = 0
    reach = a
    for d in range(1, max_hop + 1):
        reach_next = reach | (reach.astype(np.int64) @ link.astype(np.int64) > 0)
        dist[reach_next & ~reach] = d
        reach = reach_next
    return dist


def normalize_columns(a: np.ndarray) -> np.ndarray:
    """A · D⁻¹ with D the column degrees (ST-GCN's ``normalize_digraph``)."""
    deg = a.sum(axis=0)
    inv = np.where(deg > 0, 1.0 / np.where(deg > 0, deg, 1.0), 0.0)
    return a * inv[None, :]


def adjacency(layout: Layout | str, strategy: str = "spatial", max_hop: int = 1) -> np.ndarray:
    """(K, V, V) float32 adjacency stack for a layout.

    Args:
        layout: a ``Layout`` or its registered name.
        strategy: ``uniform`` (K=1), ``distance`` (K=max_hop+1) or ``spatial``
            (ST-GCN's partition into root / closer to centre / further; K=3 for max_hop=1).
        max_hop: neighbourhood radius in bones.

    Distances to the centre are hop distances capped at ``max_hop`` (beyond is ``inf``),
    exactly as in the original ST-GCN, so with max_hop=1 most pairs compare inf == inf
    and fall into the root subset. This reproduces the published configuration.
    """
    if isinstance(layout, str):
        layout = get_layout(layout)
    v = layout.num_joints
    dist = hop_distance(v, layout.edges, max_hop)
    hops = range(max_hop + 1)
    norm = normalize_columns((dist <= max_hop).astype(np.float64))
    if strategy == "uniform":
        stack = [norm]
    elif strategy == "distance":
        stack = [np.where(dist == h, norm, 0.0) for h in hops]
    elif strategy == "spatial":
        # Entry [j, i]: joint i feeds joint j. Compare both joints' distance to the centre.
        to_center = dist[:, layout.center]
        dj, di = to_center[:, None], to_center[None, :]
        stack = []
        for h in hops:
            at_hop = dist == h
            root = np.where(at_hop & (dj == di), norm, 0.0)
            if h == 0:
                stack.append(root)
                continue
            close = np.where(at_hop & (dj > di), norm, 0.0)
            further = np.where(at_hop & (dj < di), norm, 0.0)
            stack += [root + close, further]
    else:
        raise ValueError(f"unknown graph strategy {strategy!r}; use uniform, distance or spatial")
    return np.stack(stack).astype(np.float32)


def bone_parents(layout: Layout | str) -> tuple[int, ...]:
    """Parent joint of every joint (0-based), the root (the layout's centre) its own parent.

    Parents are found by walking the bones outwards from the centre, so a bone points from a
    joint towards the centre of the body. This reproduces the bone tables of CTR-GCN/pyskl:
    on ``ntu25`` (centre spine_shoulder) every (child, parent) pair of CTR-GCN's ``ntu_pairs``,
    on ``kinect20`` (centre shoulder_center) NW-UCLA's bone list of its NW-UCLA feeder.
    A joint no bone reaches is an error naming it (a layout whose skeleton falls apart).
    """
    if isinstance(layout, str):
        layout = get_layout(layout)
    v = layout.num_joints
    nbrs: list[list[int]] = [[] for _ in range(v)]
    for a, b in layout.edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    parent = [-1] * v
    parent[layout.center] = layout.center
    frontier = [layout.center]
    while frontier:
        nxt = []
        for j in frontier:
            for k in sorted(nbrs[j]):
                if parent[k] < 0:
                    parent[k] = j
                    nxt.append(k)
        frontier = nxt
    orphans = [layout.joints[j] for j in range(v) if parent[j] < 0]
    if orphans:
        raise ValueError(f"layout {layout.name!r}: joints {orphans} are not connected to the centre "
                         f"{layout.joints[layout.center]!r} by any bone")
    return tuple(parent)
