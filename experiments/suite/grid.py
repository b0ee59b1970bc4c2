"""A sweep's grid: datasets × splits × seeds × variants, one ``Point`` (the config updates of one
run) each. The sweep (``sweep.py``) runs the points; the ablation (``ablation.py``) builds its
variants and runs them as one grid."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from data.catalog import dataset_splits, get_dataset


@dataclass
class Point:
    """One grid point: the config updates of one run, and (``with_run_defaults``) what its dataset's
    and track's defaults resolve to."""
    dataset: str
    split: int | str
    seed: int
    variant: str
    overrides: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)  # the keys the point leaves to its dataset and track

    def updates(self) -> dict:
        """The command line's settings."""
        return {**self.overrides, "dataset": self.dataset, "split": self.split, "seed": self.seed,
                "tag": self.variant}

    def settings(self) -> dict:
        """The settings that identify the point's run in the database: its updates and the values its
        dataset's and track's defaults had when the grid was built (a run recorded before a default
        changed is not this point's)."""
        return {**self.defaults, **self.updates()}

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


def with_run_defaults(points: list[Point], resolve) -> list[Point]:
    """Fill each point's ``defaults``: the values of its dataset's and its track's default keys
    (``data/catalog.py``, ``config.TRACK_DEFAULTS``) that the point does not set, as ``resolve`` (a
    point's updates → the run's whole config) gives them: a default another setting turns off (NW-UCLA's
    ``trainval`` under ``selection="val"``) is recorded as resolved."""
    from config import TRACK_DEFAULTS  # the Sacred config module: only where a grid is run or queried
    from experiments.tracking.output import plain

    for p in points:
        cfg = resolve(p.updates())
        keys = {*TRACK_DEFAULTS[cfg["train_mode"]], *get_dataset(cfg["dataset"], cfg["data_root"]).defaults}
        p.defaults = {k: plain(cfg[k]) for k in sorted(keys) if k in cfg and k not in p.overrides}
    return points


def summarize_points(points: list[Point]) -> str:
    counts = {}
    for p in points:
        counts.setdefault(p.dataset, set()).add(p.split)
    parts = [f"{ds} splits {sorted(map(str, s))}" for ds, s in counts.items()]
    return f"{len(points)} runs: " + "; ".join(parts)

