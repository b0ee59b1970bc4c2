"""The supervised track (``train_mode="supervised"``): a classifier over every class of a
dataset under its standard protocol, the setting of the FR-Head / CTR-GCN / SkeletonX tables
and the one external check of the data pipeline and the backbones this machine allows.

The same loop as the zero-shot tracks (``loop.train_and_select``) with the classifier's
objective (``objectives.supervised_objective``). Selection: ``val`` (default) on a held-out
part of the training set; ``test`` (the published tables' best test epoch) and ``last`` are
labelled options recorded in the result. The test set is scored once with the selected
checkpoint: top-1 and top-5 over samples, the per-class mean, a confusion matrix, and the
class scores saved (``test_scores.npz``) for score ensembles (``experiments/suite/ensemble.py``).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from data.catalog import get_dataset
from data.loading import limit_training
from data.supervised import SupervisedData, load_supervised
from experiments.tracking.tracker import NullTracker, Tracker
from experiments.train.artifacts import (TEST_SCORES_FILE, class_names, plot_confusion, plot_curves, save_scores,
                                         write_per_class_csv)
from experiments.train.averaging import recompute_batchnorm
from experiments.train.evaluate import Outcome
from experiments.train import distributed
from experiments.train.loop import EpochEval, resolve_device, seed_everything, train_and_select
from experiments.train.metrics import balanced_accuracy, per_class_accuracy, top1, topk
from experiments.train.objectives import (aggregation_objective, aggregation_record, check_aggregation, check_objective,
                                          supervised_objective)
from experiments.train.settings import Settings
from experiments.train.steps import autocast, embed, place_subset
from experiments.train.prepare import attach_fr_head, backbone_kwargs, folder_of, start_encoder, with_batch_size
from module import build_backbone
from module.head import ClassifierModel, InputStream

log = logging.getLogger("pgfa")
SUPERVISED_SELECTIONS = ("val", "test", "last")


def build_classifier(s: Settings, num_classes: int) -> ClassifierModel:
    """The classifier (``aggregation=True``: SkeletonX's decoupled one), with an FR-Head when asked."""
    m = s.model
    backbone = build_backbone(m.backbone, **backbone_kwargs(m))
    stream = InputStream(m.modality, m.graph_layout, m.input_norm)
    if s.aggregation.enabled:
        from module.skeletonx import DecoupleClassifier

        return DecoupleClassifier(backbone, num_classes, stream)
    return attach_fr_head(ClassifierModel(backbone, num_classes, stream), s, num_classes)


def training_objective(s: Settings, data: SupervisedData, device: torch.device):
    """Cross-entropy (``supervised_objective``), or SkeletonX's aggregation loss with cross-entropy."""
    if not s.aggregation.enabled:
        return supervised_objective(s, device)
    check_aggregation(s, data.train_performer)
    return aggregation_objective(s, device, data.train.y, data.train_performer,
                                 lambda model, logits, target: F.cross_entropy(logits, target))


def supervised_epoch_eval(s: Settings, data: SupervisedData, device: torch.device) -> EpochEval:
    """Per epoch: top-1 on the validation part (``selection="val"``) and on the test set (a monitor,
    or the selection score with ``selection="test"``/``"last"``)."""
    ev, precision = s.eval, s.run.precision

    def accuracy(model, subset) -> float:
        logits = embed(model, subset.x, batch_size=ev.batch_size, device=device, precision=precision, shard=True)
        return top1(logits.argmax(1), subset.y)

    def evaluate(model) -> tuple[float, dict]:
        metrics = {}
        if data.val is not None:
            metrics["val_top1"] = accuracy(model, data.val)
        if ev.selection != "val" or ev.monitor_unseen:
            metrics["test_top1_monitor"] = accuracy(model, data.test)
        return metrics["val_top1" if ev.selection == "val" else "test_top1_monitor"], metrics

    return evaluate


def run_supervised(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Train a classifier on the protocol's training samples, select, score the test samples once.

    Args:
        cfg: the full run config (``config.py``'s keys).
        tracker: receives per-epoch scalars and artifact files.
    """
    tracker = tracker or NullTracker()
    s = Settings.from_config(cfg)
    ev = s.eval
    if ev.selection not in SUPERVISED_SELECTIONS:
        raise ValueError(f"selection must be one of {SUPERVISED_SELECTIONS} for train_mode={s.run.train_mode!r}, "
                         f"got {ev.selection!r}")
    if ev.selection == "val" and s.supervised.val_fraction <= 0:
        raise ValueError("selection='val' needs a validation part: val_fraction > 0 (or selection='test' / 'last', "
                         "labelled in the result)")
    check_objective(s)
    generator = seed_everything(s.run.seed)
    spec = get_dataset(s.data.dataset, s.data.data_root)
    data = load_supervised(s.data.data_root, spec, s.supervised.protocol, s.data.max_frame,
                           s.supervised.val_fraction, s.data.val_seed)
    limited = limit_training(data, s.data.samples_per_class, s.data.samples_seed)
    device = resolve_device(s.run.device)
    autocast(device, s.run.precision)
    data.train = place_subset(data.train, device, s.run.data_on_device)
    model = build_classifier(s, spec.num_classes)
    data.record.update(limited, **start_encoder(s, model))
    model = distributed.maybe_sync_batchnorm(model, s.run.sync_batchnorm).to(device)
    if s.init.freeze and not s.init.source:  # a frozen random encoder: BatchNorm statistics of the data, not (0, 1)
        recompute_batchnorm(model, data.train.x, batch_size=s.eval.batch_size, device=device,
                            precision=s.run.precision)
        data.record["encoder_batchnorm"] = "random encoder; BatchNorm statistics from one pass over the training data"
    log.info("supervised %s (%s): train %d | val %s | test %d samples, %d classes | %s stream | device %s",
             spec.name, data.protocol, len(data.train), len(data.val) if data.val else "none", len(data.test),
             spec.num_classes, s.model.modality, device)
    s = with_batch_size(s, len(data.train))
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    selection_key = "val_top1" if ev.selection == "val" else "test_top1_monitor"
    objective = training_objective(s, data, device)
    outcome = train_and_select(s, data.train, model, device, tracker, generator, folder, objective,
                               supervised_epoch_eval(s, data, device), selection_key)
    distributed.shutdown()  # training is over; in a launch rank 0 alone goes on
    if not distributed.is_main():  # rank 0 scores the test set and records the run
        return {}
    data.record.update(aggregation_record(s, objective))
    return supervised_report(s, data, model, device, tracker, outcome, spec.num_classes)


def supervised_report(s: Settings, data: SupervisedData, model: torch.nn.Module, device: torch.device,
                      tracker: Tracker, outcome: Outcome, num_classes: int) -> dict:
    """Score the test set once with the selected model; write and record the artifacts."""
    ev = s.eval
    scores = embed(model, data.test.x, batch_size=ev.batch_size, device=device, desc="test", precision=s.run.precision)
    labels, classes = data.test.y, list(range(num_classes))
    pred = scores.argmax(1)
    folder = outcome.checkpoint.parent
    names = class_names(s.data.dataset, classes, s.data.data_root)
    present = sorted(set(labels.tolist()))
    paths = [folder / "test_confusion.png", folder / "test_per_class.csv", folder / TEST_SCORES_FILE]
    plot_confusion(paths[0], labels, present, names, pred, None, title=f"{s.model.modality} stream")
    write_per_class_csv(paths[1], labels, present, names, pred, None)
    save_scores(paths[2], scores, labels, classes, {"dataset": s.data.dataset, "protocol": data.protocol,
                                                   "modality": s.model.modality})
    if outcome.history:
        paths.append(plot_curves(folder / "curves.png", outcome.history, outcome.best_epoch))
    for path in [outcome.checkpoint, *paths]:
        tracker.add_artifact(path)
    by = {"val": "validation accuracy", "test": "test accuracy (as the published tables)", "last": "the last epoch"}
    result = {
        "dataset": s.data.dataset, "train_mode": s.run.train_mode, "protocol": data.protocol, "seed": s.run.seed,
        "tag": s.run.tag, "modality": s.model.modality, "backbone": s.model.backbone, "fr_head": s.fr.enabled,
        "selection": ev.selection, "best_epoch": outcome.best_epoch, "aggregation": s.aggregation.enabled,
        ("best_val_top1" if ev.selection == "val" else "best_test_top1_selection"): outcome.best_score,
        "test_top1": top1(pred, labels), "test_top5": topk(scores, labels, 5),
        "test_per_class_mean": balanced_accuracy(pred, labels),
        "test_per_class": {str(k): v for k, v in per_class_accuracy(pred, labels, present).items()},
        "num_train_samples": len(data.train), "num_val_samples": len(data.val) if data.val else 0,
        "num_test_samples": len(data.test), "train_seconds": round(outcome.train_seconds, 1),
        "epoch_seconds_mean": round(float(np.mean([h["epoch_seconds"] for h in outcome.history])), 2)
        if outcome.history else None,
        "checkpoint": str(outcome.checkpoint), "scores": str(paths[2]), "batch_size": s.optim.batch_size,
        **s.average.record(), **data.record,
    }
    log.info("test top-1 %.2f%%, top-5 %.2f%% (per-class mean %.2f%%), checkpoint of epoch %d selected by %s",
             result["test_top1"], result["test_top5"], result["test_per_class_mean"], outcome.best_epoch + 1,
             by[ev.selection])
    return result
