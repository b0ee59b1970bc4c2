"""Sweeps: a grid of datasets × splits × seeds × variants, one Sacred run per point.

Each point runs as its own ``python main.py with ...`` process (a crash or a kill ends one
point, not the sweep) and is recorded like any run. Before starting a point the sweep asks
the database whether a COMPLETED run with exactly that point's settings exists, and skips
it if so: a sweep can be stopped at any moment and started again, and a rerun of a finished
sweep starts nothing.

A variant is a name and a dict of config overrides (``{"labels": {"text_kind": "labels"}}``);
the name is stored as the run's ``tag``, which the results table groups by.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass, field

from experiments.files import PROJECT_ROOT, WORK_ROOT
from data.catalog import dataset_splits, get_dataset
from experiments.tracking.database import MONGO_URL_ENV
from experiments.tracking.output import redact, redact_text


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


def completed_query(point: Point) -> dict:
    """The MongoDB filter matching a COMPLETED run recorded with exactly this point's settings (as
    stored: credentials in URLs redacted)."""
    return {"status": "COMPLETED", **{f"config.{k}": redact(v) for k, v in point.updates().items()}}


def is_completed(db, point: Point) -> bool:
    return db.runs.count_documents(completed_query(point), limit=1) > 0


def command(point: Point, python: str = sys.executable) -> list[str]:
    """The ``main.py`` command line of a point (values as Python literals, which Sacred parses)."""
    return [python, str(PROJECT_ROOT / "main.py"), "with", *[f"{k}={v!r}" for k, v in point.updates().items()]]


def run_sweep(points: list[Point], db, *, dry_run: bool = False, log=print, mongo_url: str = "") -> dict[str, list[str]]:
    """Run the points not yet COMPLETED in ``db``, one process each; returns what happened to each.

    ``mongo_url``: the database the sweep asked, handed to every point's run through
    ``$PGFA_MONGO_URL`` (not its command line, which any user of the machine can read), so
    the runs are recorded where the sweep looks for them."""
    env = {**os.environ, MONGO_URL_ENV: mongo_url} if mongo_url else None
    done: dict[str, list[str]] = {"skipped": [], "completed": [], "failed": [], "planned": []}
    for i, point in enumerate(points, 1):
        head = f"[{i}/{len(points)}] {point.label()}"
        if is_completed(db, point):
            done["skipped"].append(point.label())
            log(f"{head}: already COMPLETED, skipped")
            continue
        if dry_run:
            done["planned"].append(point.label())
            log(f"{head}: would run: {redact_text(' '.join(command(point)[1:]))}")
            continue
        log(f"{head}: running")
        rc = subprocess.call(command(point), cwd=WORK_ROOT, env=env)
        if rc == 0:
            done["completed"].append(point.label())
        else:
            done["failed"].append(point.label())
            log(f"{head}: exit status {rc} (recorded as FAILED or INTERRUPTED; a rerun of the sweep retries it)")
            if rc in (-2, 130):  # Ctrl-C: stop the sweep, not just this point
                break
    log("sweep: " + ", ".join(f"{len(v)} {k}" for k, v in done.items() if v))
    return done


def summarize_points(points: list[Point]) -> str:
    counts = {}
    for p in points:
        counts.setdefault(p.dataset, set()).add(p.split)
    parts = [f"{ds} splits {sorted(map(str, s))}" for ds, s in counts.items()]
    return f"{len(points)} runs: " + "; ".join(parts)

