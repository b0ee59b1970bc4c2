"""Assemble the tensors of one zero-shot run from a prepared split.

* ``train``: seen-class training samples, minus the validation classes;
* ``val``: training-subject samples of the validation classes (held-out seen classes,
  treated as unseen for model selection);
* ``unseen``: the unseen test classes (scored once, with the selected checkpoint);
* ``seen_test``: seen-class test samples when the split has them (for GZSL);
* ``val_seen``: with ``holdout > 0``, that fraction of each training class's samples, kept out
  of training: the "seen" half of the validation data that calibrates GZSL.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data import demo
from data.arrays import ArraySpec, DataError, load_part, load_performers, part_paths
from data.catalog import DatasetSpec, split_dir

log = logging.getLogger("pgfa")


@dataclass
class Subset:
    x: torch.Tensor        # (N, C, T, V, M) float32
    y: torch.Tensor        # (N,) int64 class ids of the full dataset
    classes: list[int]     # the candidate classes when this subset is classified zero-shot

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ZeroShotData:
    train: Subset
    val: Subset | None
    unseen: Subset
    seen_test: Subset | None
    val_seen: Subset | None = None
    record: dict = field(default_factory=dict)  # what the run's result records about its data (limit_per_class)
    train_performer: np.ndarray | None = None  # each training sample's performer, where the split names them  # what the run's result records about its data (limit_per_class)


def resample_time(x: np.ndarray, frames: int, chunk: int = 1024) -> np.ndarray:
    """Linear resampling along T to ``frames`` (``(N, C, T, V, M)``), chunked.

    Same as the original Setting-2 stretch ``F.interpolate(..., mode="trilinear",
    align_corners=False)`` with unit scale on V and M."""
    n, c, t, v, m = x.shape
    if t == frames:
        return x
    out = np.empty((n, c, frames, v, m), np.float32)
    for s in range(0, n, chunk):
        block = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk]))
        out[s:s + chunk] = F.interpolate(block, size=(frames, v, m), mode="trilinear", align_corners=False).numpy()
    return out


def ensure_prepared(data_root: str | Path, dataset: str, split: str | int) -> None:
    """The demo data is generated on first use (about a second); other datasets are prepared by
    their own command, named in the error when their files are missing."""
    if dataset == "demo" and not demo.is_prepared(data_root, split):
        log.info("generating the demo dataset into %s (once, a few seconds)", Path(data_root) / "zeroshot" / "demo")
        demo.prepare(data_root)


def holdout_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for ``round(fraction · n_c)`` (at least one) seeded samples of every class c."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        if k < 1:
            raise DataError(f"class {c} has {len(idx)} training sample(s): too few to hold any out (GZSL calibration, supervised validation part)")
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def draw_per_class(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` seeded samples of every class in ``labels`` (all of a class that has
    ``n`` or fewer); the limited-scale protocol of SkeletonX (10-50 training samples per class).
    The same labels, ``n`` and ``seed`` always give the same indices."""
    if n < 1:
        raise ValueError(f"samples_per_class must be a positive number of samples (0 = all), got {n}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked.append(idx if len(idx) <= n else np.sort(rng.choice(idx, size=n, replace=False)))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def limit_per_class(train: Subset, n: int, seed: int) -> tuple[Subset, dict]:
    """``train`` cut to ``n`` samples per class (``draw_per_class``; ``n=0``: unchanged) and the record
    a result keeps of the draw: N, the seed, the count per class and the indices into the full
    training part (in the order the split's arrays hold it, validation classes removed)."""
    if n == 0:
        return train, {}
    idx = draw_per_class(train.y.numpy(), int(n), int(seed))
    labels = train.y.numpy()[idx]
    counts = {str(int(c)): int((labels == c).sum()) for c in np.unique(labels)}
    short = {c: k for c, k in counts.items() if k < n}
    if short:
        log.warning("samples_per_class=%d: classes %s have fewer training samples; all of theirs are used", n, short)
    log.info("limited scale: %d of %d training samples (%d per class, seed %d)", len(idx), len(train), n, seed)
    keep = torch.from_numpy(idx)
    record = {"samples_per_class": int(n), "samples_seed": int(seed), "num_train_full": len(train),
              "train_per_class": counts, "train_indices": idx.tolist()}
    return Subset(train.x[keep], train.y[keep], train.classes), record


def limit_training(data, n: int, seed: int) -> dict:
    """``limit_per_class`` applied to ``data.train`` in place (a ``ZeroShotData`` or ``SupervisedData``),
    its ``train_performer`` cut to the same samples; returns the draw's record."""
    data.train, record = limit_per_class(data.train, n, seed)
    if record and data.train_performer is not None:
        data.train_performer = data.train_performer[record["train_indices"]]
    return record


def _subset(xs: np.ndarray, ys: np.ndarray, classes: list[int], frames: int) -> Subset:
    with warnings.catch_warnings():  # read-only memory maps stay so: nothing writes to the samples
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return Subset(torch.from_numpy(resample_time(xs, frames)), torch.from_numpy(ys), sorted(classes))


def load_validation(data_root: str | Path, spec: DatasetSpec, split: str | int, unseen: list[int], val: list[int],
                    frames: int) -> Subset:
    """The validation classes' samples of a split, read from its seen-class training part alone: the
    unseen test part is never opened (``refine_texts`` questions a run with these)."""
    ensure_prepared(data_root, spec.name, split)
    d = split_dir(data_root, spec.name, split)
    arr = ArraySpec(spec.num_classes, 3, _layout_joints(spec.layout), spec.num_person)
    x, y = load_part(d, "seen_train", arr, allowed=set(range(spec.num_classes)) - set(unseen), required=set(val),
                     hint=spec.prepare)
    is_val = np.isin(y, val)
    return _subset(x[is_val], y[is_val], list(val), frames)


def load_zero_shot(data_root: str | Path, spec: DatasetSpec, split: str | int, unseen: list[int],
                   val: list[int], frames: int, use_val: bool = True, holdout: float = 0.0,
                   holdout_seed: int = 0) -> ZeroShotData:
    """Load, validate and carve one split.

    Args:
        data_root: folder holding ``zeroshot/<dataset>/split_<k>/``.
        spec: the dataset's spec (class count, joints, persons, prepare command).
        split: split id.
        unseen: unseen test classes; val: validation classes (held out of the seen ones).
        frames: T the model sees (data is resampled if it differs).
        use_val: hold the validation classes out of training (False: train on all seen classes).
        holdout: fraction of each training class's samples kept out of training as ``val_seen``.
        holdout_seed: seeds that choice.
    """
    ensure_prepared(data_root, spec.name, split)
    d = split_dir(data_root, spec.name, split)
    arr = ArraySpec(spec.num_classes, 3, _layout_joints(spec.layout), spec.num_person)
    unseen_set = set(unseen)
    seen = set(range(spec.num_classes)) - unseen_set
    overlap = sorted(set(val) & unseen_set)
    if overlap:
        raise DataError(f"validation classes {overlap} are also unseen classes")
    x, y = load_part(d, "seen_train", arr, allowed=seen, required=set(val) if use_val else None,
                     hint=spec.prepare)
    ux, uy = load_part(d, "unseen", arr, allowed=unseen_set, required=unseen_set, hint=spec.prepare)
    performer = load_performers(d, "seen_train", len(y))

    def subset(xs: np.ndarray, ys: np.ndarray, classes: list[int]) -> Subset:
        return _subset(xs, ys, classes, frames)

    if use_val:
        is_val = np.isin(y, val)
        train_classes = sorted(seen - set(val))
        train = subset(x[~is_val], y[~is_val], train_classes)
        val_set = subset(x[is_val], y[is_val], list(val))
        performer = None if performer is None else performer[~is_val]
    else:
        train, val_set = subset(x, y, sorted(seen)), None
    if len(train) == 0:
        raise DataError(f"{d}: no training samples left after holding out validation classes {val}")
    val_seen = None
    if holdout > 0:
        keep = holdout_mask(train.y.numpy(), holdout, holdout_seed)
        val_seen = Subset(train.x[torch.from_numpy(keep)], train.y[torch.from_numpy(keep)], train.classes)
        train = Subset(train.x[torch.from_numpy(~keep)], train.y[torch.from_numpy(~keep)], train.classes)
        performer = None if performer is None else performer[~keep]

    seen_test = None
    if all(p.is_file() for p in part_paths(d, "seen_test")):
        sx, sy = load_part(d, "seen_test", arr, allowed=seen, hint=spec.prepare)
        seen_test = subset(sx, sy, sorted(seen))
    return ZeroShotData(train, val_set, subset(ux, uy, sorted(unseen)), seen_test, val_seen,
                        train_performer=performer)


def _layout_joints(layout: str) -> int:
    from module.graph import get_layout

    return get_layout(layout).num_joints
