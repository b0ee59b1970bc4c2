"""What the system knows about each dataset: class count, skeleton layout, frames,
paper defaults, where its prepared arrays live and how to prepare them; and the
class splits (``data/splits.json``).

Everything here is plain data plus lookups, so ``config.py`` can derive the whole
configuration from ``dataset`` and ``split``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from experiments.files import PROJECT_ROOT

SPLITS_FILE = PROJECT_ROOT / "data" / "splits.json"  # shipped with the code
TRACKS = ("main", "sota", "test", "one_shot", "supervised", "ensemble", "pretrain", "linear_eval")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    layout: str
    num_person: int
    frames: int
    prepare: str  # the command that writes the prepared arrays
    defaults: dict = field(default_factory=dict)  # config defaults that differ per dataset
    origin_joint: str | None = None  # joint put at the origin in preparation (None: the layout's default)


DATASETS: dict[str, DatasetSpec] = {
    "demo": DatasetSpec(  # one synthetic actor per sequence: M = 1
        "demo", 30, "ntu25", 1, 50,
        prepare="python main.py prepare_demo",
        # Sized so the whole demo job runs in about two minutes on a 2-core CPU (AVX2 or AVX-512):
        # 6 epochs on sequences resampled to 32 frames (docs/speed.md).
        defaults={"epoch_num": 6, "batch_size": 32, "warmup_epochs": 1, "lr_steps": [5], "max_frame": 32},
    ),
    "ntu60": DatasetSpec("ntu60", 60, "ntu25", 2, 50, prepare="python main.py prepare with dataset=ntu60",
                         defaults={"batch_size": 128}),
    "ntu120": DatasetSpec("ntu120", 120, "ntu25", 2, 50, prepare="python main.py prepare with dataset=ntu120",
                          defaults={"support_factor": 0.4, "lr": 0.005, "batch_size": 128}),
    "pku": DatasetSpec("pku", 51, "ntu25", 2, 50,
                       prepare="python main.py prepare with dataset=pku raw.path=<PKU_Skeleton_Renew> "
                               "raw.labels=<Train_Label_PKU_final> raw.split_file=<cross-subject.txt>",
                       defaults={"support_factor": 1.0, "batch_size": 128}),
    # Kinect v1, one person. Small datasets: smaller batches so an epoch has several steps.
    "utd_mhad": DatasetSpec("utd_mhad", 27, "kinect20", 1, 50,
                            prepare="python main.py prepare with dataset=utd_mhad raw.path=<folder of *_skeleton.mat>",
                            defaults={"batch_size": 32, "selection": "snapshot", "text_model": "minilm"}),
    # The small datasets' defaults are the components whose validation gain over the paper's settings
    # was clear (docs/zeroshot_small.md#measured): never chosen on unseen classes. A dataset's
    # selection applies to the zero-shot tracks only (config.py), trainval only with the snapshot ensemble.
    "nw_ucla": DatasetSpec("nw_ucla", 10, "kinect20", 1, 50,
                           prepare="python main.py prepare with dataset=nw_ucla raw.path=<all_sqe folder>",
                           defaults={"batch_size": 32, "text_kind": "labels+des+parts", "selection": "snapshot",
                                     "trainval": True}),
}
for _ntu in ("ntu60", "ntu120"):  # the prepare command names its input
    DATASETS[_ntu] = replace(DATASETS[_ntu], prepare=f"python main.py prepare with dataset={_ntu} "
                             "raw.path=<folder of .skeleton files, or pyskl's " + _ntu + "_3danno.pkl>")
del _ntu

USER_SPEC_FILE = "dataset.json"    # a generic dataset's spec, in <data_root>/zeroshot/<name>/
USER_SPLITS_FILE = "splits.json"   # splits registered by the split builder, same folder


def dataset_root(data_root: str | Path, dataset: str) -> Path:
    """``<data_root>/zeroshot/<dataset>``: the split folders, and a generic dataset's spec and texts."""
    return Path(data_root) / "zeroshot" / dataset


def user_datasets(data_root: str | Path | None) -> list[str]:
    """Generic datasets registered under ``data_root`` (by ``prepare_generic``)."""
    if data_root is None or not (Path(data_root) / "zeroshot").is_dir():
        return []
    return sorted(p.parent.name for p in (Path(data_root) / "zeroshot").glob(f"*/{USER_SPEC_FILE}"))


def get_dataset(name: str, data_root: str | Path | None = None) -> DatasetSpec:
    """A built-in dataset, or a generic one registered under ``data_root``."""
    if name in DATASETS:
        return DATASETS[name]
    path = dataset_root(data_root, name) / USER_SPEC_FILE if data_root is not None else None
    if path is None or not path.is_file():
        where = f"; registered under {data_root}: {user_datasets(data_root)}" if data_root is not None else ""
        raise ValueError(f"unknown dataset {name!r}; built-in: {sorted(DATASETS)}{where} "
                         "(register your own with: python main.py prepare_generic with raw.name=... raw.path=...)")
    doc = json.loads(path.read_text())
    try:
        return DatasetSpec(doc["name"], int(doc["num_classes"]), doc["layout"], int(doc["num_person"]),
                           int(doc["frames"]), doc["prepare"], doc.get("defaults", {}), doc.get("origin_joint"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid dataset spec ({exc!r}); re-register with prepare_generic") from None


@lru_cache(maxsize=1)
def _splits() -> dict:
    with open(SPLITS_FILE) as f:
        return json.load(f)["splits"]


def user_splits_file(data_root: str | Path, dataset: str) -> Path:
    return dataset_root(data_root, dataset) / USER_SPLITS_FILE


def user_splits(data_root: str | Path | None, dataset: str) -> dict[str, dict]:
    """Splits registered by the split builder for ``dataset`` under ``data_root``."""
    if data_root is None:
        return {}
    path = user_splits_file(data_root, dataset)
    return json.loads(path.read_text())["splits"] if path.is_file() else {}


def dataset_splits(dataset: str, data_root: str | Path | None = None) -> dict[str, dict]:
    """Published splits (``data/splits.json``) followed by those registered under ``data_root``."""
    get_dataset(dataset, data_root)
    published = dict(_splits().get(dataset, {}))
    registered = user_splits(data_root, dataset)
    clash = sorted(set(published) & set(registered))
    if clash:
        raise ValueError(f"{user_splits_file(data_root, dataset)}: split ids {clash} are published splits of "
                         f"{dataset} ({SPLITS_FILE}); rename them")
    return {**published, **registered}


def default_split(dataset: str, track: str, data_root: str | Path | None = None) -> int | str:
    """The first split of ``dataset`` published for ``track`` (else its first split);
    numeric ids come back as ints, like ``split=4`` on the command line."""
    splits = dataset_splits(dataset, data_root)
    if not splits:
        raise ValueError(f"dataset {dataset!r} has no splits in {SPLITS_FILE}"
                         + (f" or {user_splits_file(data_root, dataset)}" if data_root is not None else "")
                         + "; make one with: python main.py make_split with dataset=" + dataset)
    key = next((k for k, spec in splits.items() if spec["track"] == track), next(iter(splits)))
    return int(key) if key.isdigit() else key


def split_spec(dataset: str, split: str | int, data_root: str | Path | None = None) -> dict:
    """``{"unseen": [...], "val": [...] or None, "track": ...}`` for a split id."""
    splits = dataset_splits(dataset, data_root)
    key = str(split)
    if key not in splits:
        raise ValueError(f"split {key!r} is not defined for dataset {dataset!r}; "
                         f"choose one of {list(splits)} (see {SPLITS_FILE})")
    spec = dict(splits[key])
    spec.setdefault("val", None)
    num_classes = get_dataset(dataset, data_root).num_classes
    for kind in ("unseen", "val"):
        ids = spec[kind] or []
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"{SPLITS_FILE}: {dataset} split {key} {kind} ids {bad} outside 0..{num_classes - 1}")
    return spec


def default_val_count(num_classes: int, num_unseen: int) -> int:
    """Validation classes held out of the seen ones where a split publishes none: as many as
    the unseen classes, but at most a quarter of the seen classes (at least 2, the fewest that
    can rank checkpoints), so enough classes are left to train on. NTU/PKU/UTD-MHAD keep
    the unseen count; 10 classes with 3 unseen hold out 2 and train on 5."""
    seen = num_classes - num_unseen
    return max(2, min(num_unseen, seen // 4))


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
