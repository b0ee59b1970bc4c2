"""What the system knows about each dataset: class count, skeleton layout, frames,
paper defaults, where its prepared arrays live and how to prepare them; and the
class splits (``data/splits.json``).

Everything here is plain data plus lookups, so ``config.py`` can derive the whole
configuration from ``dataset`` and ``split``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
SPLITS_FILE = DATA_DIR / "splits.json"
TRACKS = ("main", "sota", "test", "one_shot")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    layout: str
    num_person: int
    frames: int
    prepare: str  # the command that writes the prepared arrays
    defaults: dict = field(default_factory=dict)  # config defaults that differ per dataset


DATASETS: dict[str, DatasetSpec] = {
    "demo": DatasetSpec(  # one synthetic actor per sequence: M = 1
        "demo", 30, "ntu25", 1, 50,
        prepare="python main.py prepare_demo",
        # Sized so the whole demo job runs in a few minutes on a 2-core CPU.
        defaults={"epoch_num": 10, "batch_size": 32, "warmup_epochs": 1, "lr_steps": [7],
                  "support_factor": 0.9},
    ),
    "ntu60": DatasetSpec("ntu60", 60, "ntu25", 2, 50, prepare="python main.py prepare with dataset=ntu60",
                         defaults={"support_factor": 0.9}),
    "ntu120": DatasetSpec("ntu120", 120, "ntu25", 2, 50, prepare="python main.py prepare with dataset=ntu120",
                          defaults={"support_factor": 0.4, "lr": 0.005}),
    "pku": DatasetSpec("pku", 51, "ntu25", 2, 50, prepare="python main.py prepare with dataset=pku",
                       defaults={"support_factor": 1.0}),
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


@lru_cache(maxsize=1)
def _splits() -> dict:
    with open(SPLITS_FILE) as f:
        return json.load(f)["splits"]


def dataset_splits(dataset: str) -> dict[str, dict]:
    get_dataset(dataset)
    return _splits().get(dataset, {})


def default_split(dataset: str, track: str) -> int | str:
    """The first split of ``dataset`` published for ``track`` (else its first split);
    numeric ids come back as ints, like ``split=4`` on the command line."""
    splits = dataset_splits(dataset)
    if not splits:
        raise ValueError(f"dataset {dataset!r} has no splits in {SPLITS_FILE}")
    key = next((k for k, spec in splits.items() if spec["track"] == track), next(iter(splits)))
    return int(key) if key.isdigit() else key


def split_spec(dataset: str, split: str | int) -> dict:
    """``{"unseen": [...], "val": [...] or None, "track": ...}`` for a split id."""
    splits = dataset_splits(dataset)
    key = str(split)
    if key not in splits:
        raise ValueError(f"split {key!r} is not defined for dataset {dataset!r}; "
                         f"choose one of {list(splits)} (see {SPLITS_FILE})")
    spec = dict(splits[key])
    spec.setdefault("val", None)
    num_classes = get_dataset(dataset).num_classes
    for kind in ("unseen", "val"):
        ids = spec[kind] or []
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"{SPLITS_FILE}: {dataset} split {key} {kind} ids {bad} outside 0..{num_classes - 1}")
    return spec


def draw_val_classes(num_classes: int, unseen: list[int], count: int, seed: int) -> list[int]:
    """Validation classes drawn (seeded) from the seen classes, sorted."""
    seen = sorted(set(range(num_classes)) - set(unseen))
    if count > len(seen) - 1:
        raise ValueError(f"cannot hold out {count} validation classes from {len(seen)} seen classes")
    rng = np.random.default_rng(seed)
    return sorted(int(c) for c in rng.choice(seen, size=count, replace=False))


def split_dir(data_root: str | Path, dataset: str, split: str | int) -> Path:
    """``<data_root>/zeroshot/<dataset>/split_<k>`` (the SMIE/PGFA layout)."""
    return Path(data_root) / "zeroshot" / dataset / f"split_{split}"
