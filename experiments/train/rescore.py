"""Rescoring runs from their saved per-epoch embeddings (``save_embeddings=True``).

The choices made after training (the epoch picked on validation or the snapshot ensemble from any
start, ConSE at any temperature, PGFA's alignment) change no weight, so one training gives all of
them. A run with ``save_embeddings=True`` writes ``epoch_embeddings.npz`` into its folder: every
epoch's validation and unseen embeddings, the labels, the class-text matrix, the training classes,
which epochs could be picked and the run's config. This module scores them as a run would:

    python -m experiments.train.rescore RUN_FOLDER [RUN_FOLDER ...] --snapshot-start 0.25 0.5 --conse 0.1

prints one row per variant, pooled over the folders (mean ± sample std) and the unseen top-1 per split;
``--val-classes`` validates on some of the saved validation classes only; ``--against OTHER ...`` adds
each variant's held-out pick minus theirs (scored with their own settings), its standard error and
whether it is a clear gain by more than ``--ses`` standard errors (default 1; ``experiments/suite/ablation.py:
clear_gain``, the rule defaults change by); ``--paired`` pairs each run with the ``--against`` run of its
split, seed and validation classes and uses the paired differences' standard error.
Rescoring a run with its own settings gives its recorded numbers (tests/train/test_rescore.py). It
reads the unseen classes like any run's final score does; choose variants by the validation columns only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from experiments.train.epoch_eval import EMBEDDINGS_FILE, add_unit, holdout_top1, snapshot_first_epoch
from experiments.train.evaluate import zero_shot_eval
from experiments.train.settings import AlignSettings, ConseSettings

HELD_OUT = "val_holdout_top1"  # the number a variant is compared by (docs/zeroshot_small.md: the held-out pick)
COLUMNS = ("unseen_top1", "unseen_top1_aligned", "unseen_top1_centred", "val_top1", HELD_OUT)


def load_embeddings(folder: str | Path) -> dict:
    """The saved embeddings of a run folder (or of the file itself), as tensors; the config as a dict."""
    path = Path(folder)
    path = path / EMBEDDINGS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved embeddings (run with save_embeddings=True)")
    with np.load(path) as z:
        out = {k: torch.from_numpy(z[k]) for k in z.files if k != "config"}
        out["config"] = json.loads(str(z["config"]))
    return out


def only_classes(emb: dict, classes: list[int]) -> dict:
    """``emb`` with its validation part cut down to ``classes`` (a subset of the saved validation classes)."""
    if "val" not in emb:
        raise ValueError("--val-classes: this run saved no validation embeddings (trainval=True trains on them)")
    saved = emb["val_classes"].tolist()
    if not classes or set(classes) - set(saved):
        raise ValueError(f"validation classes {sorted(classes)} must be a non-empty subset of the saved ones {saved}")
    keep = torch.isin(emb["val_y"], torch.tensor(classes))
    return {**emb, "val": emb["val"][:, keep], "val_y": emb["val_y"][keep], "val_classes": torch.tensor(classes)}


def snapshot_sums(emb: dict, snapshot_start: float) -> tuple[dict[str, torch.Tensor], int]:
    """The snapshot ensemble of saved embeddings: per part ("val" where saved, "unseen") the sum of the unit
    embeddings of the epochs from ``floor(snapshot_start · epochs)`` on, and how many epochs were summed."""
    epochs = emb["unseen"].shape[0]
    first = snapshot_first_epoch(snapshot_start, epochs)
    sums = {}
    for part in ("val", "unseen") if "val" in emb else ("unseen",):
        for e in range(first, epochs):  # summed in epoch order, as the run did
            add_unit(sums, part, emb[part][e])
    return sums, epochs - first


def rescore(emb: dict, selection: str, snapshot_start: float = 0.25, conse: ConseSettings | None = None,
            align: AlignSettings | None = None, val_classes: list[int] | None = None) -> dict:
    """One variant of one run: ``selection`` "val" (the epoch best on validation, the first of equals, among
    the epochs the run could pick) or "snapshot" (the mean of the epochs' unit embeddings from
    ``floor(snapshot_start · epochs)`` on), each score with ``conse`` when given; the unseen classes scored
    with ``align``. ``val_classes``: validate on these of the saved validation classes only (a nested
    comparison, docs/zeroshot_small.md). Returns the result keys a run records (``COLUMNS``, ``best_epoch``)."""
    emb = only_classes(emb, val_classes) if val_classes else emb
    text, seen = emb["text"], emb["train_classes"].tolist()
    has_val = "val" in emb
    if selection == "val" and not has_val:
        raise ValueError("selection='val' needs validation embeddings; this run has none (trainval=True)")
    if selection not in ("val", "snapshot"):
        raise ValueError(f"rescoring repeats selection 'val' or 'snapshot', got {selection!r}")
    epochs = emb["unseen"].shape[0]
    selectable = emb["selectable"].tolist()
    out = {}
    if has_val:
        val_y, classes = emb["val_y"], emb["val_classes"].tolist()
    if selection == "val":
        runs = [zero_shot_eval(f, val_y, classes, text, conse=conse, seen=seen) for f in emb["val"]]
        correct = torch.stack([r.pred == val_y for r in runs])
        top1 = [r.top1 if ok else -1.0 for r, ok in zip(runs, selectable)]
        best = int(np.argmax(top1))
        feats = emb["unseen"][best]
        out.update(best_epoch=best, val_top1=top1[best], val_holdout_top1=holdout_top1(correct, val_y, selectable))
    else:
        sums, count = snapshot_sums(emb, snapshot_start)
        feats = sums["unseen"] / count
        out["best_epoch"] = epochs - 1
        if has_val:
            res = zero_shot_eval(sums["val"], val_y, classes, text, conse=conse, seen=seen)
            fixed = res.pred == val_y  # a model no epoch pick chose: only whether any epoch was pickable matters
            out.update(val_top1=res.top1, val_holdout_top1=holdout_top1(fixed[None], val_y, [any(selectable)], fixed))
    res = zero_shot_eval(feats, emb["unseen_y"], emb["unseen_classes"].tolist(), text, align, conse, seen)
    out.update(unseen_top1=res.top1, unseen_top1_aligned=res.top1_aligned, unseen_top1_centred=res.top1_centred)
    return out


def variants(starts: list[float], temperatures: list[float], top_k: int = 0) -> dict[str, tuple]:
    """Name → (selection, snapshot_start, ConSE settings or None), ConSE off and at each temperature."""
    out = {}
    for tau in [None, *temperatures]:
        conse = None if tau is None else ConseSettings(tau, top_k)
        tail = "" if tau is None else f"+conse(τ {tau:g})"
        out["val pick" + tail] = ("val", 0.25, conse)
        out.update({f"snapshot from {s:g}" + tail: ("snapshot", s, conse) for s in starts})
    return out


def as_run(emb: dict, val_classes: list[int] = ()) -> dict:
    """A run's embeddings scored with its own recorded settings (selection, snapshot start, ConSE, alignment),
    validated on ``val_classes`` only when given and the run has validation embeddings."""
    c = emb["config"]
    return rescore(emb, c["selection"], float(c["snapshot_start"]), ConseSettings.from_config(c),
                   AlignSettings.from_config(c), list(val_classes) if "val" in emb else None)


def _split_order(item: tuple[str, list]) -> tuple:
    return (0, int(item[0]), "") if item[0].isdigit() else (1, 0, item[0])  # 1, 2, 10, then named splits


def _cell(vals: list[float]) -> str:
    return f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.2f}" if vals else "–"


def run_key(emb: dict) -> tuple:
    """What pairs a run with its partner: dataset, split, seed and its validation classes (the draw), as
    saved beside the embeddings where they are (the classes the run validated on), else as configured."""
    c = emb["config"]
    val = emb["val_classes"].tolist() if "val_classes" in emb else c.get("val_classes") or []
    return c.get("dataset"), str(c.get("split")), c.get("seed"), tuple(sorted(int(v) for v in val))


def _keyed(pairs: list[tuple[tuple, dict]], side: str) -> dict:
    out = {}
    for key, r in pairs:
        if key in out:
            raise ValueError(f"--paired: two {side} runs share (dataset, split, seed, validation classes) = {key}")
        if r.get(HELD_OUT) is not None:
            out[key] = r[HELD_OUT]
    return out


def table(folders: list[str], starts: list[float], temperatures: list[float], val_classes: list[int] = (),
          top_k: int = 0, against: list[str] = (), ses: float = 1.0, paired: bool = False) -> str:
    """A markdown table: per variant, mean ± sample std over the runs of each column and the unseen top-1
    per split; with ``against`` (runs scored with their own settings), each variant's held-out pick minus
    theirs and whether it is a clear gain by more than ``ses`` standard errors
    (``experiments/suite/ablation.py: clear_gain``, the rule a default changes by; validation only).
    ``paired``: each run is compared with the ``against`` run of the same dataset, split, seed and
    validation classes, and the standard error is that of the paired differences."""
    from experiments.suite.ablation import AblationRow, beyond, clear_gain, difference, paired_difference

    embs = [load_embeddings(f) for f in folders]
    base = AblationRow("", "against")
    theirs = [(run_key(e), as_run(e, val_classes)) for e in (load_embeddings(f) for f in against)]
    base.values[HELD_OUT] = [r[HELD_OUT] for _, r in theirs if r.get(HELD_OUT) is not None]
    base_keyed = _keyed(theirs, "--against") if paired else {}
    extra = ["per split (unseen_top1)"] + (["Δ held-out (SE)", f"clear gain (> {ses:g} SE)"] if against else [])
    lines = ["| variant | runs | " + " | ".join([*COLUMNS, *extra]) + " |",
             "|---|---|" + "---|" * (len(COLUMNS) + len(extra))]
    for name, (selection, start, conse) in variants(starts, temperatures, top_k).items():
        scored = [(e, rescore(e, selection, start, conse, AlignSettings.from_config(e["config"]), list(val_classes)))
                  for e in embs if selection == "snapshot" or "val" in e]
        rows = [r for _, r in scored]
        cells = [_cell([r[col] for r in rows if r.get(col) is not None]) for col in COLUMNS]
        splits = {}
        for e, r in scored:
            splits.setdefault(str(e["config"].get("split")), []).append(r["unseen_top1"])
        cells.append(" / ".join(f"{np.mean(v):.1f}" for _, v in sorted(splits.items(), key=_split_order)))
        if against:
            row = AblationRow("", name)
            row.values[HELD_OUT] = [r[HELD_OUT] for r in rows if r.get(HELD_OUT) is not None]
            if paired:
                diff, se = paired_difference(_keyed([(run_key(e), r) for e, r in scored], "variant"), base_keyed)
                gain = beyond(diff, se, ses)
            else:
                diff, se = difference(row.values[HELD_OUT], base.values[HELD_OUT])
                gain = clear_gain(row, base, HELD_OUT, ses)
            cells += [f"{diff:+.2f} ({se:.2f})" if np.isfinite(diff) else
                      f"– (fewer than 2 {'pairs' if paired else 'runs a side'})", "yes" if gain else "no"]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rescore runs saved with save_embeddings=True (module docstring).")
    p.add_argument("folders", nargs="+", help="run folders (or their epoch_embeddings.npz)")
    p.add_argument("--snapshot-start", type=float, nargs="+", default=[0.25], help="snapshot ensemble starts")
    p.add_argument("--conse", type=float, nargs="*", default=[], help="ConSE temperatures (besides ConSE off)")
    p.add_argument("--val-classes", type=int, nargs="*", default=[],
                   help="validate on these of the saved validation classes only (default: all)")
    p.add_argument("--conse-top-k", type=int, default=0, help="ConSE: mix only the k nearest seen classes (0: all)")
    p.add_argument("--against", nargs="*", default=[],
                   help="runs (scored with their own settings) to compare each variant's held-out pick with")
    p.add_argument("--ses", type=float, default=1.0,
                   help="a clear gain: the held-out pick's difference above this many standard errors (round 8: 2)")
    p.add_argument("--paired", action="store_true",
                   help="pair each run with the --against run of its dataset, split, seed and validation classes")
    a = p.parse_args(argv)
    if a.ses <= 0:
        p.error(f"--ses must be positive, got {a.ses}")
    if a.paired and not a.against:
        p.error("--paired compares with --against runs: give them")
    print(table(a.folders, a.snapshot_start, a.conse, a.val_classes, a.conse_top_k, a.against, a.ses, a.paired))


if __name__ == "__main__":
    main()
