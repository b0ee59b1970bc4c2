"""Auxiliary training classes from another dataset (``aux_dataset``): cross-dataset zero-shot training.

A small dataset has few seen classes (UTD-MHAD: 17 per split, NW-UCLA: 5), and what a skeleton–text
model learns to transfer to unseen classes grows with the number of classes it is trained on. This
module adds another prepared dataset's samples as extra training classes, each aligned with that
dataset's own class texts:

* the auxiliary samples are the stage-1 samples of ``aux_dataset`` (``data/samples.py``; every sample,
  whatever its protocol part), converted into the run's joint layout by joint name
  (``joint_map``: Kinect v2's 25 joints into Kinect v1's 20 drops the neck, hand tips and thumbs),
  cut to the run's number of persons, re-centred on the run's origin joint and resampled in time;
* an auxiliary class whose label text is as close as ``max_similarity`` (cosine of the run's text
  model's ``labels`` embeddings) to any class the run holds out, validation or unseen, is left out
  with all of its samples (``select_classes``), so neither the validation score nor the unseen score
  comes from a class that was trained on under another name. This uses the held-out classes' names
  only, as zero-shot inference does; never their samples;
* auxiliary class ``c`` becomes class id ``num_classes + c`` of the run, so the run's text matrix is
  the target dataset's rows followed by the auxiliary dataset's (several, ``"ntu120+nw_ucla"``: each
  one's rows after the previous one's).

The result records which classes were used and which were left out, and why.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.catalog import get_dataset
from data.samples import SampleSet, samples_dir
from data.skeleton import origin_index
from module.graph import get_layout
from text.embeddings import unit_rows

log = logging.getLogger("pgfa")

# Joints that two layouts name differently, either way round: Kinect v1's trunk joints are the Kinect v2
# joints at the same places of the body.
_SAME_JOINT = (("hip_center", "spine_base"), ("spine", "spine_mid"), ("shoulder_center", "spine_shoulder"))
JOINT_ALIASES = {**dict(_SAME_JOINT), **{b: a for a, b in _SAME_JOINT}}


class AuxiliaryError(ValueError):
    """An auxiliary dataset that cannot be used as asked (the message names it and what to do)."""


@dataclass
class Auxiliary:
    x: np.ndarray            # (N, 3, T, V, M) float32 in the run's layout
    y: np.ndarray            # (N,) int64: the auxiliary dataset's class ids
    kept: list[int]          # auxiliary class ids trained on
    excluded: dict[int, dict]  # auxiliary class id -> {"near": held-out class id, "similarity": cosine}

    def record(self) -> dict:
        return {"samples": int(len(self.y)), "classes": len(self.kept),
                "excluded": {str(c): v for c, v in sorted(self.excluded.items())}}


def aux_names(spec: str, target: str) -> list[str]:
    """``aux_dataset`` as a list: one dataset or several joined by ``+`` (``"ntu120+nw_ucla"``)."""
    names = [n.strip() for n in str(spec).split("+") if n.strip()]
    if len(set(names)) != len(names):
        raise AuxiliaryError(f"aux_dataset={spec!r} names a dataset twice")
    if target in names:
        raise AuxiliaryError(f"aux_dataset={spec!r} names the run's own dataset {target!r}; name other prepared datasets")
    return names


def joint_map(source: str, target: str) -> list[int]:
    """For every joint of layout ``target``, its index in layout ``source`` (by name, or ``JOINT_ALIASES``)."""
    src, dst = get_layout(source).joints, get_layout(target).joints
    index, missing = [], []
    for name in dst:
        found = name if name in src else JOINT_ALIASES.get(name)
        if found in src:
            index.append(src.index(found))
        else:
            missing.append(name)
    if missing:
        raise AuxiliaryError(f"layout {source!r} has no joint for {missing} of layout {target!r}: its samples cannot "
                             f"be converted (joints of {source!r}: {list(src)})")
    return index


def convert(x: np.ndarray, joints: list[int], persons: int, origin: int) -> np.ndarray:
    """Samples ``(N, 3, T, V_src, M_src)`` → ``(N, 3, T, len(joints), persons)``: the joints picked in
    order, the first ``persons`` actors kept (zero-filled up to it), each sample translated so that the
    origin joint of its first actor sits at (0, 0, 0) in the first frame that actor is present."""
    out = np.zeros((x.shape[0], x.shape[1], x.shape[2], len(joints), persons), np.float32)
    m = min(persons, x.shape[4])
    out[..., :m] = x[:, :, :, joints, :m]
    present = np.abs(out).sum(axis=(1, 3)) > 0  # (N, T, M): actor tracked in that frame
    for i in range(len(out)):
        frames = np.flatnonzero(present[i, :, 0])
        if len(frames) == 0:
            continue
        shift = out[i, :, frames[0], origin, 0].copy()
        out[i] -= shift[:, None, None, None] * present[i][None, :, None, :]  # absent actors stay zero
    return out


def select_classes(aux_labels: np.ndarray, target_labels: np.ndarray, present: list[int], held_out: list[int],
                   max_similarity: float) -> tuple[list[int], dict[int, dict]]:
    """The auxiliary classes of ``present`` to train on, and the ones left out: those whose label
    embedding has a cosine of ``max_similarity`` or more with a held-out target class's."""
    if not held_out:
        return sorted(present), {}
    sim = unit_rows(aux_labels[present]) @ unit_rows(target_labels[held_out]).T  # (present, held out)
    kept, excluded = [], {}
    for row, c in enumerate(present):
        j = int(np.argmax(sim[row]))
        if sim[row, j] >= max_similarity:
            excluded[int(c)] = {"near": int(held_out[j]), "similarity": round(float(sim[row, j]), 4)}
        else:
            kept.append(int(c))
    return kept, excluded


def prepared_samples(data_root: str | Path, dataset: str) -> SampleSet:
    """The stage-1 samples of an auxiliary dataset, or an error naming the command that writes them."""
    spec = get_dataset(dataset, data_root)
    folder = samples_dir(data_root, dataset, spec.frames)
    if not (folder / "manifest.json").is_file():
        raise AuxiliaryError(f"aux_dataset {dataset!r}: no prepared samples in {folder}; prepare them with: "
                             f"{spec.prepare} raw.splits=none")
    return SampleSet(folder)


def load_auxiliary(data_root: str | Path, aux_dataset: str, target: str, held_out: list[int], frames: int,
                   labels_of, max_similarity: float) -> Auxiliary:
    """The auxiliary training samples of a run on ``target`` that holds out ``held_out`` classes.

    ``labels_of(dataset, num_classes)``: the ``labels`` embedding rows of a dataset (the run's text model)."""
    from data.loading import resample_time

    if len(aux_names(aux_dataset, target)) != 1:
        raise AuxiliaryError(f"load_auxiliary reads one dataset, not {aux_dataset!r}")
    if not 0.0 < max_similarity <= 1.0:
        raise AuxiliaryError(f"aux_max_similarity must be in (0, 1], got {max_similarity}")
    aux_spec, spec = get_dataset(aux_dataset, data_root), get_dataset(target, data_root)
    samples = prepared_samples(data_root, aux_dataset)
    present = sorted(int(c) for c in np.unique(samples.label))
    kept, excluded = select_classes(labels_of(aux_dataset, aux_spec.num_classes),
                                    labels_of(target, spec.num_classes), present, list(held_out), max_similarity)
    if not kept:
        raise AuxiliaryError(f"aux_dataset={aux_dataset!r}: every one of its {len(present)} classes is within "
                             f"aux_max_similarity={max_similarity} of a held-out class; nothing is left to train on")
    take = np.isin(samples.label, kept)
    x = np.concatenate(list(samples.iter_samples(take)))
    x = convert(x, joint_map(aux_spec.layout, spec.layout), spec.num_person,
                origin_index(spec.layout, spec.origin_joint))
    log.info("auxiliary classes: %d samples of %d %s classes (%d left out as near a held-out class)",
             len(x), len(kept), aux_dataset, len(excluded))
    return Auxiliary(resample_time(x, frames), samples.label[take], kept, excluded)
