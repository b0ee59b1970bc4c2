"""A sanity check of prepared skeletons against their layout (``prepare_generic``): a joint
order that differs from the layout's passes every shape check, so look at the geometry.

* mirrored bones (``..._left`` / ``..._right`` in the joint names) should be about as long
  as each other;
* the layout's centre joint should be on the body's middle line (not a left or right joint).

Each finding names the joints; nothing is refused (a dataset may be unusual on purpose)."""
from __future__ import annotations

import numpy as np

from module.graph import Layout

RATIO = 1.6  # a mirrored bone this many times longer than its twin is suspicious


def _mirror(name: str) -> str | None:
    for a, b in (("left", "right"), ("right", "left")):
        if a in name:
            return name.replace(a, b)
    return None


def layout_warnings(layout: Layout, samples: np.ndarray) -> list[str]:
    """Findings for ``samples`` of shape (N, 3, T, V, M) (absent actors all zero)."""
    x = np.moveaxis(samples, 1, -1).reshape(-1, samples.shape[3], 3)  # (frames of every actor, V, 3)
    x = x[np.abs(x).sum(axis=(1, 2)) > 0]
    if len(x) == 0:
        return []
    length = {}
    for a, b in layout.edges:
        length[(a, b)] = float(np.median(np.linalg.norm(x[:, a] - x[:, b], axis=-1)))
    names = layout.joints
    out = []
    for (a, b), la in length.items():
        ma, mb = _mirror(names[a]), _mirror(names[b])
        if ma is None and mb is None:
            continue
        twin = [lb for (c, d), lb in length.items()
                if {names[c], names[d]} == {ma or names[a], mb or names[b]} and (c, d) != (a, b)]
        if twin and "left" in names[a] + names[b] and max(la, twin[0]) > RATIO * max(min(la, twin[0]), 1e-6):
            out.append(f"bone {names[a]}-{names[b]} is {la:.3g} long, its mirror {ma or names[a]}-{mb or names[b]} "
                       f"{twin[0]:.3g}: the joints may be in another order than the layout lists")
    if _mirror(names[layout.center]):
        out.append(f"the layout's centre joint {names[layout.center]} is a left or right joint: the centre of the "
                   "graph partition should be a joint on the body's middle line")
    return out
