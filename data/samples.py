"""Stage 1 of the prepare pipeline (``data/prepare.py``): raw files → prepared samples.

``build_samples`` reads a ``Source`` item by item (optionally in worker processes), turns
every sequence into one ``(3, T, V, M)`` sample (``data/skeleton.py``) and writes them in
shards of ``shard_size`` items to ``<data_root>/samples/<dataset>/T<frames>/``::

    manifest.json              what the samples were built from (a changed input rebuilds them)
    shard_00000.npy / .json    samples (n, 3, T, V, M) float32 / their names, labels, metadata, skips
    skipped.tsv                every file or segment left out, and why
    report.json                counts, time, peak memory

Only one shard is in memory at a time; a finished shard is kept, so an interrupted
or repeated prepare continues where it stopped. ``SampleSet`` reads them back.
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

from data.arrays import save_npy_atomic
from data.raw import Item, Skip, Source
from data.skeleton import SequenceError, to_layout
from experiments.files import write_text_atomic
from module.graph import get_layout

PIPELINE_VERSION = 1
Log = Callable[[str], None]


def samples_dir(data_root: str | Path, dataset: str, frames: int) -> Path:
    return Path(data_root) / "samples" / dataset / f"T{frames}"


def _shard(k: int) -> str:
    return f"shard_{k:05d}"


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
        named = [r.get("subject") for r in self.rows]
        # each sample's performer as an index (None unless every sample names one)
        self.performers = (np.unique([str(v) for v in named], return_inverse=True)[1].astype(np.int64)
                           if named and all(v not in (None, "") for v in named) else None)
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
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")

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
            save_npy_atomic(out / f"{_shard(k)}.npy", data)
            # the .json marks the shard finished: written last
            write_text_atomic(out / f"{_shard(k)}.json", json.dumps({"items": len(chunk), "rows": rows, "skipped": skips}))
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
    write_text_atomic(out / "skipped.tsv", "\n".join(lines) + "\n")
    report = {"items": len(items), "samples": len(samples), "skipped": len(skipped), "excluded": len(source.excluded),
              "reused_shards": len(done), "seconds": round(time.time() - t0, 1), "peak_rss_mib": peak_rss_mib()}
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    log(f"{source.dataset}: {len(samples)} samples from {len(items)} items in {report['seconds']} s; "
        f"skipped {len(skipped)} bad files/segments, excluded {len(source.excluded)} before reading"
        + (f" (each with its reason in {out / 'skipped.tsv'})" if skipped or source.excluded else ""))
    for s in skipped[:10]:
        log(f"  skipped {s.name}: {s.reason}")
    if len(skipped) > 10:
        log(f"  ... and {len(skipped) - 10} more")
    return samples
