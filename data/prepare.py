"""The prepare pipeline: raw files → prepared samples → zero-shot split folders.

Stage 1 (``data/samples.py``: ``build_samples``) turns a dataset's raw files into prepared
samples, in resumable shards.

Stage 2 (``write_split``) writes a split folder in the SMIE/PGFA layout
(``seen_train`` from training samples of seen classes, ``seen_test`` and ``unseen``
from test samples) by streaming the selected samples shard by shard, and a
``meta.json`` recording the classes, the protocol and what it was built from; a
split whose ``meta.json`` matches is not written again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from data.arrays import PARTS, part_paths, performer_path, save_npy_atomic, write_npy_chunks
from data.catalog import (dataset_root, dataset_splits, default_val_count, draw_val_classes, get_dataset, split_dir,
                          split_spec)
from data.raw import Source
from data.samples import PIPELINE_VERSION, Log, SampleSet, build_samples, peak_rss_mib, samples_dir
from data.skeleton import origin_index
from data.split_builder import SplitError
from experiments.files import write_text_atomic

VAL_SEED = 0  # validation classes of splits that publish none: drawn as config.py does with val_seed=0


# ----------------------------------------------------------------------------- stage 2

def _split_meta(samples: SampleSet, dataset: str, split: str, unseen: list[int], val: list[int],
                protocol: str) -> dict:
    return {"writer": f"data.prepare v{PIPELINE_VERSION}", "dataset": dataset, "split": split,
            "unseen": sorted(unseen), "val": sorted(val), "protocol": protocol,
            "frames": samples.sample_shape[1], "samples": samples.fingerprint}


def write_split(samples: SampleSet, data_root: str | Path, dataset: str, split: str | int, unseen: list[int],
                val: list[int], protocol: str, log: Log = print) -> Path:
    """Stage 2: one split folder in the SMIE/PGFA layout (module docstring).

    Raises ``SplitError`` when an unseen class has no test sample or a validation
    class no training sample under ``protocol``.
    """
    split = str(split)
    d = split_dir(data_root, dataset, split)
    train = samples.train_mask(protocol)
    label = samples.label
    k = int(samples.manifest["num_classes"])
    test_count = np.bincount(label[~train], minlength=k)
    train_count = np.bincount(label[train], minlength=k)
    no_test = [c for c in unseen if test_count[c] == 0]
    if no_test:
        raise SplitError(f"{dataset} split {split}: unseen classes {no_test} have no test samples under protocol "
                         f"{protocol} (of {len(label)} prepared samples); choose other unseen classes")
    no_train = [c for c in val if train_count[c] == 0]
    if no_train:
        raise SplitError(f"{dataset} split {split}: validation classes {no_train} have no training samples under "
                         f"protocol {protocol}; choose other validation classes")
    seen_empty = [c for c in range(k) if c not in unseen and train_count[c] == 0]
    if seen_empty:
        log(f"warning: {dataset} split {split}: seen classes without training samples: {seen_empty}")

    meta = _split_meta(samples, dataset, split, unseen, val, protocol)
    meta_path = d / "meta.json"
    is_unseen = np.isin(label, unseen)
    masks = {"seen_train": train & ~is_unseen, "seen_test": ~train & ~is_unseen, "unseen": ~train & is_unseen}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        wanted = [p for part in PARTS if masks[part].any() for p in part_paths(d, part)]
        if samples.performers is not None and masks["seen_train"].any():
            wanted.append(performer_path(d, "seen_train"))
        if {key: old.get(key) for key in meta} == meta and all(p.is_file() for p in wanted):
            log(f"{d}: up to date")
            return d
        meta_path.unlink()  # no marker while the parts are rewritten
    d.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in PARTS:
        data_path, label_path = part_paths(d, part)
        n = int(masks[part].sum())
        counts[part] = n
        if n == 0:  # only seen_test can be empty (every class unseen is refused above); it is optional
            for p in (data_path, label_path):
                p.unlink(missing_ok=True)
            continue
        write_npy_chunks(data_path, (n, *samples.sample_shape), np.float32, samples.iter_samples(masks[part]))
        save_npy_atomic(label_path, label[masks[part]])
        if part == "seen_train" and samples.performers is not None:
            save_npy_atomic(performer_path(d, part), samples.performers[masks[part]])
    meta["counts"] = counts
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    log(f"{d}: seen_train {counts['seen_train']}, seen_test {counts['seen_test']}, unseen {counts['unseen']} samples "
        f"(unseen {sorted(unseen)}, val {sorted(val)}, {protocol})")
    return d


def split_classes(dataset: str, split: str | int, data_root: str | Path) -> tuple[list[int], list[int]]:
    """Unseen and validation classes of a split (validation drawn as config.py does where none is published)."""
    spec = split_spec(dataset, split, data_root)
    unseen = list(spec["unseen"])
    num_classes = get_dataset(dataset, data_root).num_classes
    val = list(spec["val"]) if spec["val"] else draw_val_classes(num_classes, unseen,
                                                                 default_val_count(num_classes, len(unseen)), VAL_SEED)
    return unseen, val


def published_split_ids(dataset: str, data_root: str | Path) -> list[str]:
    """Every split of a dataset. One-shot splits use the same layout: the novel classes are the
    "unseen" part, from which ``train_mode="one_shot"`` draws one exemplar per class."""
    return list(dataset_splits(dataset, data_root))


def write_splits(samples: SampleSet, data_root: str | Path, dataset: str, split_ids: list[str], protocol: str,
                 log: Log = print) -> list[Path]:
    """Write several splits; the ones that cannot be built are reported together at the end."""
    written, failed = [], []
    for key in split_ids:
        unseen, val = split_classes(dataset, key, data_root)
        try:
            written.append(write_split(samples, data_root, dataset, key, unseen, val, protocol, log))
        except SplitError as exc:
            failed.append(str(exc))
    if failed:
        raise SplitError(f"{len(failed)} of {len(split_ids)} splits could not be written:\n  " + "\n  ".join(failed))
    return written


# ----------------------------------------------------------------------------- the command

def make_source(dataset: str, raw: dict, data_root: str | Path) -> Source:
    """The ``Source`` of a dataset from the ``raw`` config (README: "Preparing datasets")."""
    from data import generic, kinect_v1, ntu, pku

    path, fmt = raw.get("path") or "", raw.get("format", "auto")
    if dataset == "demo":
        raise ValueError("the demo dataset is generated, not read: python main.py prepare_demo")
    if dataset in ("ntu60", "ntu120"):
        if not path:
            raise FileNotFoundError(f"{dataset}: set raw.path to the folder(s) of .skeleton files or to pyskl's "
                                    f"{dataset}_3danno.pkl")
        if fmt == "auto":
            fmt = "pyskl" if isinstance(path, str) and path.endswith(".pkl") else "skeleton"
        if fmt == "pyskl":
            return ntu.PysklSource(dataset, path)
        if fmt == "skeleton":
            return ntu.NTUSkeletonSource(dataset, path)
        raise ValueError(f"raw.format={fmt!r} for {dataset}: use 'skeleton', 'pyskl' or 'auto'")
    expected = {"pku": "pku", "utd_mhad": "mat", "nw_ucla": "json"}
    if dataset in expected:
        if fmt not in ("auto", expected[dataset]):
            raise ValueError(f"raw.format={fmt!r}: {dataset} is read from its own format ({expected[dataset]!r})")
        if not path:
            raise FileNotFoundError(f"{dataset}: set raw.path (see: {get_dataset(dataset).prepare})")
        if dataset == "pku":
            return pku.PKUSource(path, raw.get("labels") or "", raw.get("split_file") or "")
        return kinect_v1.UTDMHADSource(path) if dataset == "utd_mhad" else kinect_v1.NWUCLASource(path)
    spec_path = dataset_root(data_root, dataset) / "dataset.json"
    get_dataset(dataset, data_root)  # unknown names fail here with the list of known ones
    src = json.loads(spec_path.read_text())["source"]
    if fmt not in ("auto", "generic"):
        raise ValueError(f"raw.format={fmt!r}: {dataset} is a generic dataset")
    spec = get_dataset(dataset, data_root)
    return generic.GenericSource(dataset, path or src["path"], spec.layout, spec.num_person,
                                 raw.get("train_subjects") or src.get("train_subjects"))


def prepare_dataset(dataset: str, data_root: str | Path, raw: dict, log: Log = print) -> dict:
    """Both stages for one dataset; returns a summary (counts, split folders, time, peak memory)."""
    t0 = time.time()
    spec = get_dataset(dataset, data_root)
    source = make_source(dataset, raw, data_root)
    protocol = raw.get("protocol") or source.protocols[0]
    if protocol not in source.protocols:
        raise ValueError(f"raw.protocol={protocol!r}: {dataset} supports {list(source.protocols)}")
    if raw.get("splits") == "none":  # stage 1 only: samples for aux_dataset (data/auxiliary.py)
        ids = []
    else:
        ids = [str(s) for s in raw.get("splits") or []] or published_split_ids(dataset, data_root)
    for key in ids:
        split_spec(dataset, key, data_root)  # unknown split ids fail before the long stage 1
    origin = origin_index(spec.layout, spec.origin_joint)
    samples = build_samples(source, samples_dir(data_root, dataset, spec.frames), num_classes=spec.num_classes,
                            frames=spec.frames, origin=origin, shard_size=int(raw.get("shard_size") or 1000),
                            workers=int(raw.get("workers") or 1), log=log)
    written = write_splits(samples, data_root, dataset, ids, protocol, log)
    summary = {"dataset": dataset, "samples": len(samples), "splits": [str(p) for p in written],
               "protocol": protocol, "seconds": round(time.time() - t0, 1), "peak_rss_mib": peak_rss_mib(),
               **{k: v for k, v in json.loads((samples.dir / "report.json").read_text()).items()
                  if k in ("skipped", "excluded")}}
    workers = int(raw.get("workers") or 1)
    log(f"prepared {dataset}: {summary['samples']} samples, {len(written)} splits, {summary['skipped']} skipped, "
        f"{summary['excluded']} excluded, {summary['seconds']} s, peak memory "
        f"{summary['peak_rss_mib']['self']:.0f} MiB"
        + (f" (largest worker process {summary['peak_rss_mib']['children']:.0f} MiB)" if workers > 1 else ""))
    return summary


def existing_samples(data_root: str | Path, dataset: str) -> SampleSet:
    """The stage-1 samples of a dataset, or an error naming the command that builds them."""
    spec = get_dataset(dataset, data_root)
    d = samples_dir(data_root, dataset, spec.frames)
    if not (d / "manifest.json").is_file():
        raise FileNotFoundError(f"no prepared samples for {dataset} in {d}; run first: {spec.prepare}")
    return SampleSet(d)


def check_layout(dataset: str, data_root: str | Path, max_samples: int = 500) -> list[str]:
    """``data.layout_check`` on up to ``max_samples`` prepared samples of a dataset."""
    from data.layout_check import layout_warnings
    from module.graph import get_layout

    samples = existing_samples(data_root, dataset)
    take = np.zeros(len(samples), bool)
    take[:max_samples] = True
    x = np.concatenate(list(samples.iter_samples(take))) if len(samples) else np.zeros((0, 3, 1, 1, 1))
    return layout_warnings(get_layout(get_dataset(dataset, data_root).layout), x)
