"""The prepare pipeline: raw files → prepared samples → zero-shot split folders.

Stage 1 (``build_samples``) reads a ``Source`` item by item (optionally in worker
processes), turns every sequence into one ``(3, T, V, M)`` sample (``data/skeleton.py``)
and writes them in shards of ``shard_size`` items to
``<data_root>/samples/<dataset>/T<frames>/``::

    manifest.json              what the samples were built from (a changed input rebuilds them)
    shard_00000.npy / .json    samples (n, 3, T, V, M) float32 / their names, labels, metadata, skips
    skipped.tsv                every file or segment left out, and why
    report.json                counts, time, peak memory

Only one shard is in memory at a time; a finished shard is kept, so an interrupted
or repeated prepare continues where it stopped.

Stage 2 (``write_split``) writes a split folder in the SMIE/PGFA layout
(``seen_train`` from training samples of seen classes, ``seen_test`` and ``unseen``
from test samples) by streaming the selected samples shard by shard, and a
``meta.json`` recording the classes, the protocol and what it was built from; a
split whose ``meta.json`` matches is not written again.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from data.arrays import PARTS, part_paths, write_npy_chunks
from data.catalog import dataset_root, dataset_splits, draw_val_classes, get_dataset, split_dir, split_spec
from data.raw import Item, Skip, Source
from data.skeleton import SequenceError, origin_index, to_layout
from data.split_builder import SplitError
from module.graph import get_layout

PIPELINE_VERSION = 1
VAL_SEED = 0  # validation classes of splits that publish none: drawn as config.py does with val_seed=0
Log = Callable[[str], None]


def samples_dir(data_root: str | Path, dataset: str, frames: int) -> Path:
    return Path(data_root) / "samples" / dataset / f"T{frames}"


def _shard(k: int) -> str:
    return f"shard_{k:05d}"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of the largest finished child process
    (the reader workers; with ``workers=1`` this is whatever else the process ran)."""
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


# ----------------------------------------------------------------------------- stage 1

def convert_item(source: Source, item: Item, *, frames: int, origin: int, num_classes: int,
                 joints: int) -> list[tuple[dict, np.ndarray] | Skip]:
    """Read one item and turn each of its sequences into a sample (or a ``Skip``)."""
    out: list[tuple[dict, np.ndarray] | Skip] = []
    for r in source.read(item):
        if isinstance(r, Skip):
            out.append(r)
            continue
        if not 0 <= r.label < num_classes:
            out.append(Skip(r.name, item.path, f"{r.name}: class {r.label} outside 0..{num_classes - 1}"))
            continue
        if r.joints.ndim != 4 or r.joints.shape[2] != joints:
            out.append(Skip(r.name, item.path, f"{r.name}: joints of shape {r.joints.shape}, the layout "
                                               f"{source.layout} has {joints} joints"))
            continue
        try:
            x = to_layout(r.joints, frames=frames, persons=source.persons, origin=origin, name=r.name)
        except SequenceError as exc:
            out.append(Skip(r.name, item.path, str(exc)))
            continue
        row = {"name": r.name, "label": int(r.label), **r.meta,
               **{f"train:{p}": bool(v) for p, v in r.train.items()}}
        out.append((row, x))
    return out


_WORKER: dict = {}


def _init_worker(source: Source, kwargs: dict) -> None:
    _WORKER["source"], _WORKER["kwargs"] = source, kwargs


def _convert_in_worker(item: Item):
    return convert_item(_WORKER["source"], item, **_WORKER["kwargs"])


class SampleSet:
    """The samples written by stage 1: an index in memory, the arrays read shard by shard."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        manifest = self.dir / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"no prepared samples in {self.dir} (no manifest.json)")
        self.manifest = json.loads(manifest.read_text())
        self.rows: list[dict] = []
        shard_of, row_of = [], []
        for k in range(self.manifest["shards"]):
            meta_path = self.dir / f"{_shard(k)}.json"
            if not meta_path.is_file():
                raise FileNotFoundError(f"{meta_path} is missing: the samples in {self.dir} are incomplete; "
                                        "run the dataset's prepare command again")
            rows = json.loads(meta_path.read_text())["rows"]
            self.rows += rows
            shard_of += [k] * len(rows)
            row_of += range(len(rows))
        self.shard = np.asarray(shard_of, np.int64)
        self.row = np.asarray(row_of, np.int64)
        self.label = np.asarray([r["label"] for r in self.rows], np.int64)
        self.sample_shape = tuple(self.manifest["sample_shape"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    @property
    def protocols(self) -> list[str]:
        return list(self.manifest["protocols"])

    def train_mask(self, protocol: str) -> np.ndarray:
        if protocol not in self.protocols:
            raise ValueError(f"protocol {protocol!r} is not available for {self.manifest['dataset']}; "
                             f"choose one of {self.protocols} (raw.protocol)")
        return np.asarray([r[f"train:{protocol}"] for r in self.rows], bool)

    def iter_samples(self, mask: np.ndarray) -> Iterator[np.ndarray]:
        """The selected samples in index order, one shard's worth at a time."""
        for k in np.unique(self.shard[mask]):
            rows = self.row[mask & (self.shard == k)]
            data = np.load(self.dir / f"{_shard(int(k))}.npy", mmap_mode="r")
            yield np.asarray(data[rows])


def build_samples(source: Source, out_dir: str | Path, *, num_classes: int, frames: int, origin: int,
                  shard_size: int = 1000, workers: int = 1, log: Log = print) -> SampleSet:
    """Stage 1: read every item of ``source`` into prepared samples (module docstring).

    Args:
        source: the dataset's raw input.
        out_dir: the samples folder (``samples_dir``).
        num_classes: labels must lie in ``0..num_classes-1``.
        frames: T of every sample.
        origin: index of the joint put at the origin.
        shard_size: items per shard (the unit of memory and of resuming).
        workers: reader processes (1: read in this process).
        log: where progress lines go.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    items = source.items()
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"{source.dataset}: item names are not unique: {dup}")
    if not items:
        raise FileNotFoundError(f"{source.dataset}: nothing to read ({len(source.excluded)} files excluded; "
                                "see the reasons above)")
    for note in source.notes:
        log(f"{source.dataset}: {note}")
    layout = get_layout(source.layout)
    n_shards = -(-len(items) // shard_size)
    manifest = {"version": PIPELINE_VERSION, "dataset": source.dataset, "layout": source.layout,
                "sample_shape": [3, frames, layout.num_joints, source.persons], "origin": origin,
                "num_classes": num_classes, "protocols": list(source.protocols), "items": len(items),
                "shard_size": shard_size, "shards": n_shards, "input": source.fingerprint(items)}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        log(f"{out}: the input or the settings changed since these samples were built; rebuilding them")
        manifest_path.unlink()
    if not manifest_path.is_file():
        for p in out.glob("shard_*"):
            p.unlink()
        _atomic_text(manifest_path, json.dumps(manifest, indent=1) + "\n")

    done = [k for k in range(n_shards) if (out / f"{_shard(k)}.json").is_file()]
    if done:
        log(f"{out}: reusing {len(done)} of {n_shards} finished shards")
    kwargs = {"frames": frames, "origin": origin, "num_classes": num_classes, "joints": layout.num_joints}
    pool = (ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source, kwargs))
            if workers > 1 and source.parallel else None)
    skipped_now = 0
    bar = tqdm(total=len(items), initial=min(len(done) * shard_size, len(items)), unit="file",
               desc=f"{source.dataset} samples", file=sys.stderr, disable=None, mininterval=1.0, dynamic_ncols=True)
    try:
        for k in range(n_shards):
            if k in done:
                continue
            ts = time.time()
            chunk = items[k * shard_size:(k + 1) * shard_size]
            results = (pool.map(_convert_in_worker, chunk, chunksize=8) if pool is not None
                       else (convert_item(source, it, **kwargs) for it in chunk))
            rows, arrays, skips = [], [], []
            for res in results:
                for r in res:
                    if isinstance(r, Skip):
                        skips.append(asdict(r))
                    else:
                        rows.append(r[0])
                        arrays.append(r[1])
                bar.update(1)
                bar.set_postfix(skipped=skipped_now + len(skips), refresh=False)
            data = np.stack(arrays) if arrays else np.zeros((0, *manifest["sample_shape"]), np.float32)
            tmp = out / f"{_shard(k)}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, data)
            tmp.replace(out / f"{_shard(k)}.npy")
            # the .json marks the shard finished: written last
            _atomic_text(out / f"{_shard(k)}.json", json.dumps({"items": len(chunk), "rows": rows, "skipped": skips}))
            skipped_now += len(skips)
            del data, arrays
            if bar.disable:
                log(f"shard {k + 1}/{n_shards}: {len(chunk)} items, {len(rows)} samples, {len(skips)} skipped "
                    f"({time.time() - ts:.1f} s)")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()

    samples = SampleSet(out)
    names = [r["name"] for r in samples.rows]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"{source.dataset}: sample names are not unique: {dup}")
    skipped = [Skip(**s) for k in range(n_shards) for s in json.loads((out / f"{_shard(k)}.json").read_text())["skipped"]]
    lines = ["name\tpath\treason"] + [f"{s.name}\t{s.path}\t{s.reason}" for s in source.excluded + skipped]
    _atomic_text(out / "skipped.tsv", "\n".join(lines) + "\n")
    report = {"items": len(items), "samples": len(samples), "skipped": len(skipped), "excluded": len(source.excluded),
              "reused_shards": len(done), "seconds": round(time.time() - t0, 1), "peak_rss_mib": peak_rss_mib()}
    _atomic_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    log(f"{source.dataset}: {len(samples)} samples from {len(items)} items in {report['seconds']} s; "
        f"skipped {len(skipped)} bad files/segments, excluded {len(source.excluded)} before reading"
        + (f" (each with its reason in {out / 'skipped.tsv'})" if skipped or source.excluded else ""))
    for s in skipped[:10]:
        log(f"  skipped {s.name}: {s.reason}")
    if len(skipped) > 10:
        log(f"  ... and {len(skipped) - 10} more")
    return samples


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
        tmp = label_path.with_name(label_path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, label[masks[part]])
        tmp.replace(label_path)
    meta["counts"] = counts
    _atomic_text(meta_path, json.dumps(meta, indent=1) + "\n")
    log(f"{d}: seen_train {counts['seen_train']}, seen_test {counts['seen_test']}, unseen {counts['unseen']} samples "
        f"(unseen {sorted(unseen)}, val {sorted(val)}, {protocol})")
    return d


def split_classes(dataset: str, split: str | int, data_root: str | Path) -> tuple[list[int], list[int]]:
    """Unseen and validation classes of a split (validation drawn as config.py does where none is published)."""
    spec = split_spec(dataset, split, data_root)
    unseen = list(spec["unseen"])
    val = list(spec["val"]) if spec["val"] else draw_val_classes(get_dataset(dataset, data_root).num_classes,
                                                                 unseen, len(unseen), VAL_SEED)
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
