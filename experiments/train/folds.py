"""Model selection over several validation folds of the seen classes (``selection="folds"``).

On a small dataset one set of validation classes ranks epochs noisily (UTD-MHAD: 5 classes,
80 samples; NW-UCLA: 2 classes), and the classes held out for it are missing from training.
With ``selection="folds"`` a zero-shot run

1. trains ``val_folds`` times, each time holding out one fold of validation classes (the split's
   own validation classes first, then folds of as many classes drawn, seeded by ``val_seed``,
   from the seen classes no earlier fold held out; once too few are left, from the seen classes
   outside the fold before);
2. takes the epoch whose validation top-1, averaged over the folds, is highest (the first of
   equals; with weight averaging only epochs that evaluated averaged weights count);
3. trains once more on **every** seen class with the same schedule, stops after that epoch and
   scores the unseen classes once with those (last) weights.

Nothing in it reads the unseen classes (``monitor_unseen`` is off in the fold stage; the final
stage logs the unseen monitor per epoch, as every run does, but keeps its last epoch whatever
that shows). Each fold's curve is logged as ``fold<k>_val_top1``; the result records the folds,
each fold's best epoch and the mean curve.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from data.catalog import get_dataset
from experiments.tracking.tracker import PrefixTracker, Tracker
from experiments.train.epoch_eval import ZeroShotEpochEval
from experiments.train.evaluate import Outcome, final_report
from experiments.train.loop import seed_everything, train_and_select
from experiments.train.objectives import zero_shot_training
from experiments.train.prepare import folder_of, prepare_run, with_batch_size
from experiments.train.settings import Settings

log = logging.getLogger("pgfa")


def fold_classes(seen: list[int], first: list[int], k: int, seed: int) -> list[list[int]]:
    """``k`` validation folds of ``len(first)`` seen classes each, ``first`` (the split's own) first.

    Later folds are drawn (seeded) from the seen classes no fold has held out yet; when fewer
    than a fold's size remain, from the seen classes outside the previous fold. Every fold leaves
    at least one class to train on."""
    seen, first = sorted(seen), sorted(first)
    if k < 1:
        raise ValueError(f"val_folds must be >= 1, got {k}")
    if not first or not set(first) <= set(seen):
        raise ValueError(f"the first validation fold {first} must be non-empty seen classes")
    size = len(first)
    if size >= len(seen):
        raise ValueError(f"validation folds of {size} classes leave nothing to train on among {len(seen)} seen classes")
    rng = np.random.default_rng(seed)
    folds, used = [first], set(first)
    for _ in range(k - 1):
        pool = [c for c in seen if c not in used]
        if len(pool) < size:
            pool = [c for c in seen if c not in folds[-1]]
        fold = sorted(int(c) for c in rng.choice(pool, size=size, replace=False))
        folds.append(fold)
        used.update(fold)
    return folds


def best_mean_epoch(curves: list[list[float]], selectable: list[list[bool]] | None = None) -> tuple[int, np.ndarray]:
    """The epoch with the highest mean validation top-1 over folds (the first of equals) and the
    mean curve; epochs not selectable in every fold (SWA's raw epochs) are skipped."""
    if not curves or len({len(c) for c in curves}) != 1:
        raise ValueError(f"fold curves must be non-empty and of equal length, got lengths {[len(c) for c in curves]}")
    mean = np.mean(np.asarray(curves, dtype=float), axis=0)
    ok = np.ones(len(mean), bool) if selectable is None else np.all(np.asarray(selectable, bool), axis=0)
    if not ok.any():
        raise ValueError("no epoch is selectable in every fold")
    return int(np.flatnonzero(ok)[np.argmax(mean[ok])]), mean


def run_folds(s: Settings, tracker: Tracker) -> dict:
    """``selection="folds"`` (module docstring); returns the run's result like ``run_zero_shot``."""
    d = s.data
    if s.run.resume:
        raise ValueError("selection='folds' cannot resume a run (it trains several models); start it again")
    if d.gzsl:
        raise ValueError("selection='folds' with gzsl=True is not supported: GZSL calibrates on held-out seen samples "
                         "of one training set; use selection='val'")
    spec = get_dataset(d.dataset, d.data_root)
    seen = sorted(set(range(spec.num_classes)) - set(d.unseen_classes))
    folds = fold_classes(seen, list(d.val_classes), s.eval.folds, d.val_seed)
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    curves, selectable, fold_best = [], [], []
    for i, val in enumerate(folds, 1):
        fs = replace(s, data=replace(d, val_classes=tuple(val)),
                     eval=replace(s.eval, selection="val", monitor_unseen=False),
                     run=replace(s.run, out_dir=str(folder / f"fold{i}")))
        generator = seed_everything(s.run.seed)
        data, text, model, device = prepare_run(fs)
        fs = with_batch_size(fs, len(data.train))
        log.info("fold %d/%d: validation classes %s, training on %d classes", i, len(folds), val,
                 len(data.train.classes))
        outcome = train_and_select(fs, data.train, model, device, PrefixTracker(tracker, f"fold{i}_"), generator,
                                   folder / f"fold{i}", zero_shot_training(fs, data, text.to(device), device),
                                   ZeroShotEpochEval(fs, data, text, device), "val_top1")
        curves.append([h["val_top1"] for h in outcome.history])
        selectable.append([h.get("averaged", 1.0) == 1.0 for h in outcome.history])
        fold_best.append(outcome.best_epoch)
    best, mean = best_mean_epoch(curves, selectable)
    log.info("folds: mean validation top-1 is best after epoch %d (%.2f%%; the folds' own best epochs: %s); "
             "training on all %d seen classes for %d epochs", best + 1, mean[best], [e + 1 for e in fold_best],
             len(seen), best + 1)
    # the final model: every seen class, the same schedule, stopped after the chosen epoch
    generator = seed_everything(s.run.seed)
    data, text, model, device = prepare_run(s)  # selection="folds": no classes held out
    s = with_batch_size(s, len(data.train))
    outcome = train_and_select(s, data.train, model, device, tracker, generator, folder,
                               zero_shot_training(s, data, text.to(device), device),
                               ZeroShotEpochEval(s, data, text, device), "val_top1", stop_epoch=best + 1)
    outcome = Outcome(best, float(mean[best]), outcome.train_seconds, outcome.checkpoint, outcome.history)
    result = final_report(s, data, text, model, device, tracker, outcome)
    result.update({"batch_size": s.optim.batch_size, "train_classes": len(data.train.classes), "val_folds": folds, "fold_best_epochs": fold_best,
                   "fold_val_curve_mean": [round(float(v), 4) for v in mean]})
    return result
