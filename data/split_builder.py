"""Zero-shot class splits: seeded random draws or explicit lists, checked and registered.

A split is ``{"track": "main", "unseen": [...], "val": [...], "seed"?: s}``: unseen
test classes, validation classes held out of the seen ones, and what made it.
``draw_split`` is a pure function of (class count, sizes, seed), so a published
seeded split (UTD-MHAD, NW-UCLA in ``data/splits.json``) can be re-derived by anyone.
New splits are registered in ``<data_root>/zeroshot/<dataset>/splits.json``, beside the
dataset's prepared arrays; the catalog merges them with the published ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.catalog import dataset_splits, default_val_count, get_dataset, user_splits, user_splits_file
from experiments.files import write_text_atomic


class SplitError(ValueError):
    """A split that cannot be built or used."""


def check_split(num_classes: int, unseen: list[int], val: list[int]) -> None:
    """Unseen and validation ids in range, unique, disjoint, and some classes left to train on."""
    for kind, ids in (("unseen", unseen), ("val", val)):
        bad = [c for c in ids if not (isinstance(c, (int, np.integer)) and 0 <= c < num_classes)]
        if bad:
            raise SplitError(f"{kind} class ids {bad} are not in 0..{num_classes - 1}")
        if len(set(ids)) != len(ids):
            raise SplitError(f"{kind} class ids listed twice: {sorted(c for c in set(ids) if list(ids).count(c) > 1)}")
    if not unseen:
        raise SplitError("a split needs at least one unseen class")
    if not val:
        raise SplitError("a split needs at least one validation class (model selection)")
    both = sorted(set(unseen) & set(val))
    if both:
        raise SplitError(f"classes {both} are both unseen and validation classes")
    if num_classes - len(unseen) - len(val) < 2:
        raise SplitError(f"{len(unseen)} unseen + {len(val)} validation classes of {num_classes} leave fewer than "
                         "2 classes to train on")


def draw_split(num_classes: int, num_unseen: int, num_val: int, seed: int) -> dict:
    """Seeded random split: ``num_unseen`` unseen classes, then ``num_val`` validation classes from the rest."""
    if num_unseen < 1 or num_val < 1:
        raise SplitError(f"num_unseen ({num_unseen}) and num_val ({num_val}) must be at least 1")
    if num_unseen + num_val > num_classes - 2:
        raise SplitError(f"{num_unseen} unseen + {num_val} validation classes of {num_classes} leave fewer than 2 "
                         "to train on")
    rng = np.random.default_rng(seed)
    unseen = sorted(int(c) for c in rng.choice(num_classes, size=num_unseen, replace=False))
    seen = [c for c in range(num_classes) if c not in unseen]
    val = sorted(int(c) for c in rng.choice(seen, size=num_val, replace=False))
    check_split(num_classes, unseen, val)
    return {"track": "main", "unseen": unseen, "val": val, "seed": int(seed)}


def build_splits(num_classes: int, *, unseen: list[int] | None = None, val: list[int] | None = None,
                 num_unseen: int = 5, num_val: int | None = None, seeds: list[int] | None = None,
                 ids: list[str] | None = None) -> dict[str, dict]:
    """Splits by id: one explicit split (``unseen``, ``val``) or one drawn split per seed.

    Args:
        num_classes: the dataset's class count.
        unseen, val: explicit class ids (then ``ids`` must name the one split).
        num_unseen, num_val: sizes of drawn splits (``num_val`` defaults to
            ``data.catalog.default_val_count``).
        seeds: one drawn split per seed.
        ids: split ids; drawn splits default to ``str(seed)``.
    """
    if unseen:
        if seeds:
            raise SplitError("give explicit unseen classes or seeds, not both")
        if not ids or len(ids) != 1:
            raise SplitError("an explicit split needs exactly one id (new_split.ids=[\"name\"])")
        check_split(num_classes, list(unseen), list(val or []))
        return {str(ids[0]): {"track": "main", "unseen": sorted(int(c) for c in unseen),
                              "val": sorted(int(c) for c in val)}}
    if val:
        raise SplitError("validation classes were given without unseen classes")
    if not seeds:
        raise SplitError("give explicit unseen classes (new_split.unseen) or seeds (new_split.seeds)")
    names = [str(i) for i in ids] if ids else [str(s) for s in seeds]
    if len(names) != len(seeds) or len(set(names)) != len(names):
        raise SplitError(f"split ids {names} do not name the {len(seeds)} seeds {list(seeds)} one to one")
    num_val = default_val_count(num_classes, num_unseen) if num_val is None else num_val
    return {name: draw_split(num_classes, num_unseen, num_val, s) for name, s in zip(names, seeds)}


def register_splits(data_root: str | Path, dataset: str, new: dict[str, dict]) -> Path:
    """Add splits to ``<data_root>/zeroshot/<dataset>/splits.json``.

    Re-registering an identical split is a no-op; an id that exists with other classes
    (published or registered) is refused.
    """
    existing = dataset_splits(dataset, data_root)
    registered = user_splits(data_root, dataset)
    for key, spec in new.items():
        if key in existing:
            old = existing[key]
            if key not in registered:
                raise SplitError(f"split {key!r} is a published split of {dataset}; choose another id (new_split.ids)")
            if (old["unseen"], old.get("val")) != (spec["unseen"], spec["val"]):
                raise SplitError(f"split {key!r} of {dataset} is already registered with unseen {old['unseen']} / "
                                 f"val {old.get('val')} in {user_splits_file(data_root, dataset)}; choose another id")
        check_split(get_dataset(dataset, data_root).num_classes, spec["unseen"], spec["val"])
    path = user_splits_file(data_root, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"_doc": "Splits registered by the split builder (python main.py make_split / prepare_generic).",
           "splits": {**registered, **new}}
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
