"""The tracks: train on the seen classes and score the unseen ones once (``main``, ``sota``,
``one_shot``), or evaluate a stored checkpoint (``test``). The config is unpacked into
``Settings`` here, once; everything below takes the part it uses."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from data.catalog import get_dataset
from data.loading import Subset, ZeroShotData, load_zero_shot
from experiments.tracking.tracker import NullTracker, Tracker
from experiments.train.checkpoints import load_checkpoint, resolve_checkpoint
from experiments.train.evaluate import Outcome, final_report
from experiments.train.gzsl import pick_exemplars
from experiments.train.loop import resolve_device, seed_everything, train_and_select
from experiments.train.settings import ModelSettings, Settings
from experiments.train.state import run_folder
from experiments.train.steps import FEW_STEPS, auto_batch_size, autocast, place_subset, steps_per_epoch
from module import backbone_keys, build_backbone
from module.head import SkeletonTextModel
from module.losses import get_loss
from text import embeddings as text_embeddings

log = logging.getLogger("pgfa")
SELECTIONS = ("val", "test")


def build_model(m: ModelSettings) -> SkeletonTextModel:
    """The backbone (its factory gets exactly its own entries, by name) and the text head."""
    backbone = build_backbone(m.backbone, **backbone_kwargs(m))
    return SkeletonTextModel(backbone, m.text_dim, init_temperature=m.init_temperature,
                             learn_temperature=m.learn_temperature)


def backbone_kwargs(m: ModelSettings) -> dict:
    """The model settings a backbone's factory declares (``module.backbone_keys``), passed by name."""
    return {k: getattr(m, k) for k in backbone_keys(m.backbone)}


def place_data(data: ZeroShotData, device: torch.device, mode: str | bool) -> None:
    """Training samples and labels, and the inputs of every evaluated subset, resident on the
    device where they fit (``place_subset``); evaluation labels stay on the CPU with the metrics."""
    data.train = place_subset(data.train, device, mode)
    for name in ("val", "unseen", "seen_test", "val_seen"):
        sub = getattr(data, name)
        if sub is not None:
            setattr(data, name, Subset(place_subset(sub, device, mode).x, sub.y, sub.classes))


def prepare_run(s: Settings) -> tuple[ZeroShotData, torch.Tensor, SkeletonTextModel, torch.device]:
    """Everything that can fail on bad input, checked before the first training step."""
    d = s.data
    spec = get_dataset(d.dataset, d.data_root)
    if s.eval.selection not in SELECTIONS:
        raise ValueError(f"selection must be 'val' or 'test', got {s.eval.selection!r}")
    get_loss(s.loss.name)
    use_val = s.eval.selection == "val" or d.gzsl
    data = load_zero_shot(d.data_root, spec, d.split, list(d.unseen_classes), list(d.val_classes), d.max_frame,
                          use_val=use_val, holdout=d.gzsl_holdout if d.gzsl else 0.0, holdout_seed=d.val_seed)
    if d.gzsl and data.seen_test is None:
        raise ValueError(f"gzsl=True needs seen-class test samples: {d.dataset} split {d.split} has no "
                         "seen_test_data.npy / seen_test_label.npy")
    if s.run.train_mode == "one_shot":
        pick_exemplars(data.unseen.y, data.unseen.classes, s.eval.exemplar_seed)  # every class needs 2+ samples
    text = torch.from_numpy(text_embeddings.load(d.data_root, d.dataset, s.text.kind, s.text.model,
                                                 num_classes=spec.num_classes, dim=s.text.dim))
    device = resolve_device(s.run.device)
    autocast(device, s.run.precision)  # validates the key before any work
    place_data(data, device, s.run.data_on_device)
    model = build_model(s.model).to(device)
    return data, text, model, device


def with_batch_size(s: Settings, n_train: int) -> Settings:
    """``batch_size="auto"`` resolved from the training-set size (logged); a warning when an
    epoch has only a few optimiser steps (a small dataset with a large batch barely learns)."""
    bs = s.optim.batch_size
    if bs == "auto":
        bs = auto_batch_size(n_train)
        log.info("batch_size auto: %d for %d training samples (%d steps per epoch)", bs, n_train,
                 steps_per_epoch(n_train, bs))
        s = replace(s, optim=replace(s.optim, batch_size=bs))
    steps = steps_per_epoch(n_train, bs)
    if steps < FEW_STEPS:
        log.warning("only %d optimiser step%s per epoch (%d training samples, batch_size=%d): the model will "
                    "barely learn; use batch_size=\"auto\" (%d here) or a smaller batch_size", steps,
                    "" if steps == 1 else "s", n_train, bs, auto_batch_size(n_train))
    return s


def folder_of(s: Settings):
    return run_folder(resume=s.run.resume, out_dir=s.run.out_dir, dataset=s.data.dataset, split=s.data.split,
                      train_mode=s.run.train_mode, seed=s.run.seed)


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
    s = Settings.from_config(cfg)
    generator = seed_everything(s.run.seed)
    data, text, model, device = prepare_run(s)
    log.info("train %d samples (%d classes) | val %s | unseen %d samples (%d classes) | device %s",
             len(data.train), len(data.train.classes),
             f"{len(data.val)} samples ({len(data.val.classes)} classes)" if data.val else "none (test selection)",
             len(data.unseen), len(data.unseen.classes), device)
    s = with_batch_size(s, len(data.train))
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    outcome = train_and_select(s, data, text, model, device, tracker, generator, folder)
    return {**final_report(s, data, text, model, device, tracker, outcome), "batch_size": s.optim.batch_size}


def run_test(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Evaluate a stored checkpoint (``cfg["checkpoint"]``) on the configured dataset and split, with
    the same numbers and artifacts as after training; recorded as its own run."""
    tracker = tracker or NullTracker()
    seed_everything(cfg["seed"])
    path = resolve_checkpoint(cfg["checkpoint"], cfg.get("mongo_url", ""))
    ckpt = load_checkpoint(path)
    trained = ckpt["config"]
    # the result reports the rule that selected this checkpoint, not this run's default
    s = Settings.from_config({**cfg, "selection": trained.get("selection", cfg["selection"])})
    data, text, model, device = prepare_run(s)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the configured model ({exc})") from None
    outcome = Outcome(int(ckpt.get("epoch", -1)), float(ckpt.get("metrics", {}).get("selection_top1", float("nan"))),
                      0.0, path)
    result = final_report(s, data, text, model, device, tracker, outcome)
    result.update({"evaluated_checkpoint": str(path), "trained_on": {k: trained.get(k) for k in
                   ("dataset", "split", "train_mode", "seed", "selection", "tag")}})
    return result
