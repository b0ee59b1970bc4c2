"""The tensors of a supervised run: every class of a dataset under one of its train/test
protocols (NW-UCLA cross-view, UTD-MHAD cross-subject, NTU cross-subject / cross-view /
cross-setup), read from the prepared samples of ``python main.py prepare`` (stage 1, which
records every protocol's train flag), or generated for the demo dataset.

* ``train``: the protocol's training samples, minus the validation part;
* ``val``: ``val_fraction`` of each class's training samples (seeded), held out for model
  selection (the published tables select on the test set instead: ``selection="test"``);
* ``test``: the protocol's test samples.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data import demo
from data.arrays import DataError
from data.catalog import DatasetSpec
from data.loading import Subset, holdout_mask, resample_time
from data.samples import SampleSet, samples_dir

log = logging.getLogger("pgfa")


@dataclass
class SupervisedData:
    train: Subset
    val: Subset | None
    test: Subset
    protocol: str
    train_performer: np.ndarray | None = None  # the performer of each training sample, where the data names them
    record: dict = field(default_factory=dict)  # what the run's result records about its data (limit_per_class)


def _demo_arrays(frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    samples = demo.generate(demo.DEFAULT_SEED, frames)
    return (samples["data"], samples["label"], np.isin(samples["subject"], demo.TRAIN_SUBJECTS), ["xsub"],
            np.asarray(samples["subject"]))


def _prepared_arrays(data_root: str | Path, spec: DatasetSpec, protocol: str):
    d = samples_dir(data_root, spec.name, spec.frames)
    if not (d / "manifest.json").is_file():
        raise FileNotFoundError(f"train_mode='supervised' reads the prepared samples of {spec.name} ({d} has none); "
                                f"prepare them with: {spec.prepare}")
    samples = SampleSet(d)
    protocol = protocol or samples.protocols[0]
    train = samples.train_mask(protocol)  # an unknown protocol is refused here, naming the available ones
    x = np.concatenate(list(samples.iter_samples(np.ones(len(samples), bool))))
    performer = samples.performers if samples.performers is not None else np.full(len(samples), -1, np.int64)
    return x, samples.label, train, samples.protocols, protocol, performer


def load_supervised(data_root: str | Path, spec: DatasetSpec, protocol: str, frames: int, val_fraction: float,
                    val_seed: int) -> SupervisedData:
    """Load, validate and carve a dataset for supervised classification (module docstring).

    Args:
        protocol: a protocol the samples were prepared with ("" = the dataset's standard one).
        frames: T the model sees (resampled where it differs).
        val_fraction: share of each class's training samples kept for validation (0: none).
        val_seed: seeds that choice.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if spec.name == "demo":
        x, y, train, protocols, performer = _demo_arrays(spec.frames)
        if protocol not in ("", *protocols):
            raise ValueError(f"protocol {protocol!r} is not available for demo; choose one of {protocols}")
        protocol = protocols[0]
    else:
        x, y, train, _, protocol, performer = _prepared_arrays(data_root, spec, protocol)
    bad = np.flatnonzero((y < 0) | (y >= spec.num_classes))
    if bad.size:
        raise DataError(f"{spec.name}: sample {bad[0]} has class {y[bad[0]]} outside 0..{spec.num_classes - 1}")
    if not np.isfinite(x).all():
        raise DataError(f"{spec.name}: prepared samples hold NaN or Inf; prepare again with: {spec.prepare}")
    classes = list(range(spec.num_classes))
    missing = sorted(set(classes) - set(np.unique(y[train]).tolist()))
    if missing:
        log.warning("%s (%s): classes %s have no training samples", spec.name, protocol, missing)

    def subset(mask: np.ndarray) -> Subset:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return Subset(torch.from_numpy(resample_time(np.ascontiguousarray(x[mask]), frames)),
                          torch.from_numpy(y[mask].astype(np.int64)), classes)

    test = ~train
    if not test.any():
        raise DataError(f"{spec.name}: protocol {protocol} leaves no test samples")
    val = None
    if val_fraction > 0:
        held = np.zeros(len(y), bool)
        held[np.flatnonzero(train)] = holdout_mask(y[train], val_fraction, val_seed)
        val, train = subset(held), train & ~held
    named = performer[train]
    return SupervisedData(subset(train), val, subset(test), protocol, named if (named >= 0).all() else None)
