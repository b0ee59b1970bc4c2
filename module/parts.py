"""Body parts of a skeleton layout, derived from its joint names.

``body_parts(layout)`` splits the joints into five parts, the partition of SkeleMixCLR
(czhaneva/SkeleMixCLR ``net/skeletonclr_multi_swap.py``: trunk, two arms, two legs), but found
from the names rather than from a hard-coded NTU index table, so it covers every built-in layout
and any layout file whose names say side and limb:

* an arm joint has a side word (``left``/``right``, or ``l``/``r``) and an arm word
  (shoulder, elbow, wrist, hand, handtip, thumb, finger, palm);
* a leg joint has a side word and a leg word (hip, knee, ankle, foot, toe, heel);
* every other joint is torso (head, neck, spine, hip_center, shoulder_center, and sided joints of
  the head such as ``eye_left``).

Names are split into words at non-letters and at camelCase humps, so ``shoulder_left``,
``left-shoulder`` and ``ShoulderLeft`` read the same. A limb word without a side, or a part left
empty, is an error: the names then do not describe the body well enough to split it.
"""
from __future__ import annotations

import re
from functools import lru_cache

from module.graph import Layout, get_layout

PARTS = ("torso", "left_arm", "right_arm", "left_leg", "right_leg")

SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}
ARM_WORDS = frozenset({"shoulder", "elbow", "wrist", "hand", "handtip", "thumb", "finger", "palm"})
LEG_WORDS = frozenset({"hip", "knee", "ankle", "foot", "toe", "heel"})
# Words that make a joint torso even though it names a limb joint: the centre of both shoulders/hips.
CENTRE_WORDS = frozenset({"center", "centre", "mid", "middle", "spine"})


def _words(name: str) -> list[str]:
    """Lower-case words of a joint name: ``ShoulderLeft`` and ``shoulder_left`` -> [shoulder, left]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def joint_part(name: str) -> str | None:
    """The part of one joint name, or None for a limb joint whose side the name does not tell."""
    words = _words(name)
    sides = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
    limb = ("arm" if ARM_WORDS.intersection(words) else "leg" if LEG_WORDS.intersection(words) else None)
    if limb is None or CENTRE_WORDS.intersection(words):
        return "torso"
    if len(sides) != 1:
        return None
    return f"{sides.pop()}_{limb}"


@lru_cache(maxsize=64)
def _parts_of(layout: Layout) -> dict[str, tuple[int, ...]]:
    members: dict[str, list[int]] = {part: [] for part in PARTS}
    unsided = []
    for j, name in enumerate(layout.joints):
        part = joint_part(name)
        if part is None:
            unsided.append(name)
        else:
            members[part].append(j)
    if unsided:
        raise ValueError(f"layout {layout.name!r}: joints {unsided} name a limb but not one side (left/right); "
                         "body parts need it (module/parts.py)")
    empty = [part for part in PARTS if not members[part]]
    if empty:
        raise ValueError(f"layout {layout.name!r}: no joint names give the parts {empty}; joint names need a side "
                         f"word {sorted(set(SIDE_WORDS))} and a limb word (arm: {sorted(ARM_WORDS)}; "
                         f"leg: {sorted(LEG_WORDS)}) (module/parts.py); its joints: {list(layout.joints)}")
    return {part: tuple(members[part]) for part in PARTS}


def body_parts(layout: Layout | str) -> dict[str, tuple[int, ...]]:
    """Joint indices (0-based, ascending) of the five body parts, in the order of ``PARTS``.

    Every joint is in exactly one part. A fresh dict each call; the tuples are shared.

    Args:
        layout: a ``Layout``, a built-in layout name or the path of a layout file.
    """
    if isinstance(layout, str):
        layout = get_layout(layout)
    return dict(_parts_of(layout))
