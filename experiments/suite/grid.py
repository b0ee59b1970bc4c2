"""A sweep's grid: datasets × splits × seeds × variants, one ``Point`` (the config updates of one
run) each. The sweep (``sweep.py``) runs the points; the ablation (``ablation.py``) builds its
variants and runs them as one grid."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from data.catalog import dataset_splits, get_dataset


@dataclass
class Point:
    """One grid point: the config updates of one run."""
    dataset: str
    split: int | str
    seed: int
    variant: str
    overrides: dict = field(default_factory=dict)

    def updates(self) -> dict:
        return {**self.overrides, "dataset": self.dataset, "split": self.split, "seed": self.seed,
                "tag": self.variant}

    def label(self) -> str:
        return f"{self.dataset} split {self.split} seed {self.seed} [{self.variant}]"


def _split_id(key: str) -> int | str:
    return int(key) if str(key).isdigit() else str(key)


def grid(datasets: list[str], splits: list, seeds: list[int], variants: dict[str, dict], base: dict,
         data_root: str) -> list[Point]:
    """Every point of the grid, in order (dataset, split, variant, seed).

    Args:
        datasets: dataset names.
        splits: split ids; empty = each dataset's splits of the run's track (``base["train_mode"]``,
            default ``main``).
        seeds: seeds.
        variants: name → config overrides (``{"default": {}}`` for one plain variant).
        base: overrides applied to every point (a variant's entries win).
        data_root: where generic datasets and registered splits are looked up.
    """
    if not variants:
        raise ValueError("a sweep needs at least one variant, e.g. {'default': {}}")
    track = base.get("train_mode", "main")
    points = []
    for ds in datasets:
        get_dataset(ds, data_root)
        available = dataset_splits(ds, data_root)
        ids = [str(s) for s in splits] if splits else [k for k, s in available.items() if s["track"] == track]
        missing = [s for s in ids if s not in available]
        if missing or not ids:
            raise ValueError(f"dataset {ds!r}: splits {missing or ids} not defined; it has {list(available)}")
        for split, (name, over), seed in itertools.product(ids, variants.items(), seeds):
            points.append(Point(ds, _split_id(split), int(seed), name, {**base, **over}))
    return points


def summarize_points(points: list[Point]) -> str:
    counts = {}
    for p in points:
        counts.setdefault(p.dataset, set()).add(p.split)
    parts = [f"{ds} splits {sorted(map(str, s))}" for ds, s in counts.items()]
    return f"{len(points)} runs: " + "; ".join(parts)

