"""The tracks: train on the seen classes and score the unseen ones once (``main``, ``sota``,
``one_shot``), or evaluate a stored checkpoint (``test``). The config is unpacked into
``Settings`` here, once; everything below takes the part it uses."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from experiments.tracking.tracker import NullTracker, Tracker
from experiments.train import distributed
from experiments.train.checkpoints import load_checkpoint, resolve_checkpoint
from experiments.train.evaluate import Outcome, final_report
from experiments.train.folds import run_folds
from experiments.train.loop import seed_everything, train_and_select
from experiments.train.objectives import aggregation_record, zero_shot_training
from experiments.train.epoch_eval import EMBEDDINGS_FILE, ZeroShotEpochEval
from experiments.train.prepare import folder_of, prepare_run, with_batch_size
from experiments.train.settings import Settings
from experiments.train.streams import run_streams

log = logging.getLogger("pgfa")


def run_zero_shot(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Train on the seen classes, select on validation, score the unseen classes once
    (the main, sota and one_shot tracks).

    Args:
        cfg: the full run config (``config.py``'s keys).
        tracker: receives per-epoch scalars and artifact files.

    Returns:
        The result dict (accuracies in percent).
    """
    tracker = tracker or NullTracker()
    if cfg.get("streams"):
        return run_streams(cfg, tracker, train_zero_shot)
    s = Settings.from_config(cfg)
    if s.eval.selection == "folds":
        return run_folds(s, tracker)
    t = train_zero_shot(s, tracker)
    if t is None:  # in a launch rank 0 alone goes on
        return {}
    report = final_report(t.s, t.data, t.text, t.model, t.device, tracker, t.outcome)
    return {**report, "batch_size": t.s.optim.batch_size}


@dataclass
class Trained:
    """One training of ``train_zero_shot``, ready to be scored (``final_report``)."""
    s: Settings
    data: object  # ZeroShotData
    text: torch.Tensor
    model: torch.nn.Module
    device: torch.device
    outcome: Outcome
    evaluator: ZeroShotEpochEval


def train_zero_shot(s: Settings, tracker: Tracker) -> Trained | None:
    """Train and select (``s.eval.selection`` "val", "snapshot", "test" or "last"); write the run folder's
    checkpoints (and ``epoch_embeddings.npz``). None on the ranks of a launch that do not report."""
    generator = seed_everything(s.run.seed)
    data, text, model, device = prepare_run(s)
    log.info("train %d samples (%d classes) | val %s | unseen %d samples (%d classes) | device %s",
             len(data.train), len(data.train.classes),
             f"{len(data.val)} samples ({len(data.val.classes)} classes)" if data.val else
             "none (trained on: trainval)" if s.data.trainval else "none (test selection)",
             len(data.unseen), len(data.unseen.classes), device)
    s = with_batch_size(s, len(data.train))
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    objective = zero_shot_training(s, data, text.to(device), device)
    evaluator = ZeroShotEpochEval(s, data, text, device)
    outcome = train_and_select(s, data.train, model, device, tracker, generator, folder, objective, evaluator,
                               "unseen_top1_monitor" if s.eval.by_test else "val_top1")
    outcome.unseen_feats, outcome.record = evaluator.unseen_snapshot(), evaluator.record(outcome.history)
    distributed.shutdown()  # training is over; in a launch rank 0 alone goes on
    if not distributed.is_main():  # rank 0 scores the unseen classes and records the run
        return None
    data.record.update(aggregation_record(s, objective))
    if s.eval.save_embeddings:
        outcome.record["embeddings_file"] = str(evaluator.save_embeddings(folder / EMBEDDINGS_FILE, outcome.history))
    return Trained(s, data, text, model, device, outcome, evaluator)


def run_test(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Evaluate a stored checkpoint (``cfg["checkpoint"]``) on the configured dataset and split, with
    the same numbers and artifacts as after training; recorded as its own run."""
    tracker = tracker or NullTracker()
    seed_everything(cfg["seed"])
    path = resolve_checkpoint(cfg["checkpoint"], cfg.get("mongo_url", ""))
    ckpt = load_checkpoint(path)
    trained = ckpt["config"]
    if trained.get("train_mode") == "pretrain":
        raise ValueError(f"{path}: a self-supervised pretraining checkpoint (no text head); start a run from its "
                         "encoder with init_from=... instead")
    if trained.get("train_mode") in ("supervised", "linear_eval"):
        raise ValueError(f"{path}: a supervised classifier's checkpoint; train_mode='test' evaluates zero-shot "
                         "checkpoints (a supervised run already scores its test set; its scores: test_scores.npz)")
    # the result reports the rule that selected this checkpoint (and whether it trained on the validation
    # classes), not this run's defaults; the FR-Head
    # (a training-only loss) is not rebuilt
    s = Settings.from_config({**cfg, "selection": trained.get("selection", cfg["selection"]),
                              "trainval": bool(trained.get("trainval", False)), "fr_head": False})
    data, text, model, device = prepare_run(s)
    try:
        model.load_state_dict({k: v for k, v in ckpt["model"].items() if not k.startswith("fr_head.")})
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the configured model ({exc})") from None
    outcome = Outcome(int(ckpt.get("epoch", -1)), float(ckpt.get("metrics", {}).get("selection_top1", float("nan"))),
                      0.0, path)
    result = final_report(s, data, text, model, device, tracker, outcome)
    result.update({"evaluated_checkpoint": str(path), "trained_on": {k: trained.get(k) for k in
                   ("dataset", "split", "train_mode", "seed", "selection", "trainval", "tag", "weight_average")}})
    if s.eval.selection == "snapshot":  # a checkpoint holds one epoch's weights, not the ensemble its run scored
        result["evaluated_weights"] = "the last epoch's alone (the snapshot ensemble is not stored)"
    return result
