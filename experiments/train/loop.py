"""The epoch loop every track uses: the device, seeds, the learning-rate schedule, the
optimiser, and per-epoch model selection.

Per epoch: one pass over the training samples with the track's objective (``objectives.py``);
the track's evaluation (zero-shot: validation classes, or the unseen test classes with
``selection="test"``; supervised: the validation part of the training set, or the test set)
scores the epoch, and the checkpoint that scores best is kept. The loop is resumable from
``last.pt``.

With ``weight_average`` (``averaging.py``) the averaged weights are what each epoch evaluates,
what selection considers and what ``best.pt`` and the final model hold (SWA: epochs before
``swa_start`` evaluate the raw weights for the curve but are not selectable). The metric
``averaged`` (1 or 0) and the log line's ``weights ema|swa|raw`` say which weights were evaluated.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.loading import Subset
from experiments.train import distributed
from experiments.tracking.tracker import Tracker
from experiments.train.averaging import WeightAverage, make_average, recompute_batchnorm, swa_first_epoch
from experiments.train.evaluate import Outcome
from experiments.train.settings import OptimSettings, Settings
from experiments.train.state import STATE_FILE, best_path, load_state, restore_rng, save_checkpoint, save_state
from experiments.train.steps import Objective, train_epoch

log = logging.getLogger("pgfa")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return distributed.rank_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return distributed.rank_device(dev)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG the run touches; returns the generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def lr_at(epoch: int, *, lr: float, schedule: str, warmup_epochs: int, epoch_num: int,
          lr_steps: list[int] | tuple[int, ...], lr_gamma: float, lr_min: float = 0.0) -> float:
    """Learning rate of an epoch: linear warm-up, then step decay or cosine.

    Warm-up reaches ``lr`` at epoch ``warmup_epochs`` - 1 (the original started at 0,
    which wasted the first epoch)."""
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    if schedule == "step":
        return lr * lr_gamma ** sum(epoch >= s for s in lr_steps)
    if schedule == "cos":
        span = max(1, epoch_num - warmup_epochs)
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span)) / 2
    raise ValueError(f"unknown lr_schedule {schedule!r}; use 'step' or 'cos'")


def epoch_lr(epoch: int, optim: OptimSettings) -> float:
    return lr_at(epoch, lr=optim.lr, schedule=optim.lr_schedule, warmup_epochs=optim.warmup_epochs,
                 epoch_num=optim.epoch_num, lr_steps=optim.lr_steps, lr_gamma=optim.lr_gamma)


def make_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                   nesterov: bool = False) -> torch.optim.SGD:
    # No weight decay on the temperature: decay would pull the scale towards 1.
    decay = [p for n, p in model.named_parameters() if n != "logit_scale" and p.requires_grad]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    scale = getattr(model, "logit_scale", None)
    if scale is not None and scale.requires_grad:
        groups.append({"params": [scale], "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


# Per-epoch evaluation of a track: (selection score, metrics to log under their names).
EpochEval = Callable[[torch.nn.Module], "tuple[float, dict[str, float]]"]


def epoch_log_line(metrics: dict[str, float], selection_key: str) -> str:
    """The accuracies of an epoch's log line under their metric names, the selection metric first."""
    keys = [selection_key] + [k for k in metrics if k != selection_key and ("top1" in k or "top5" in k)]
    return "  ".join(f"{k} {metrics[k]:.2f}%" for k in keys if k in metrics)


def train_and_select(s: Settings, train: Subset, model: torch.nn.Module, device: torch.device, tracker: Tracker,
                     generator: torch.Generator, folder: Path, objective: Objective, evaluate_epoch: EpochEval,
                     selection_key: str, stop_epoch: int | None = None) -> Outcome:
    """The epoch loop with per-epoch selection; resumable from ``last.pt`` (``s.run.resume``).

    Args:
        train: the training samples. objective: the loss of one batch (``objectives.py``).
        evaluate_epoch: the track's per-epoch evaluation; its score selects the checkpoint (the
            highest; with ``selection="last"`` the last epoch's).
        selection_key: the metric name the score is logged under.
        stop_epoch: stop after this many epochs of the ``epoch_num`` schedule (the final stage of
            ``selection="folds"``, which keeps the last epoch).
    """
    optim = s.optim
    optimizer = make_optimizer(model, optim.lr, optim.momentum, optim.weight_decay, optim.nesterov)
    ckpt_path, state_path = best_path(folder), folder / STATE_FILE
    keep_last = s.eval.selection in ("last", "folds", "snapshot")
    writes = distributed.is_main()  # in a torchrun launch only rank 0 writes best.pt / last.pt

    average = make_average(s.average, model)
    best = {"score": -1.0, "epoch": -1, "state": None}
    history: list[dict] = []
    start_epoch, spent = 0, 0.0
    if s.run.resume:
        state = load_state(s.run.resume, s.config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generator)
        if average is not None:
            if "average" not in state:
                raise ValueError(f"resume={s.run.resume!r}: its last.pt holds no weight average "
                                 f"(weight_average={s.average.kind!r})")
            average.load_state_dict(state["average"])
        if "evaluator" in state and hasattr(evaluate_epoch, "load_state_dict"):  # e.g. a snapshot ensemble's sums
            evaluate_epoch.load_state_dict(state["evaluator"])
        best, history, start_epoch, spent = state["best"], state["history"], state["next_epoch"], state["train_seconds"]
        for epoch, metrics in enumerate(history):  # the new run record gets the whole curve
            for k, v in metrics.items():
                tracker.log_scalar(k, v, epoch)
        log.info("resuming %s at epoch %d/%d", s.run.resume, start_epoch + 1, optim.epoch_num)

    t_start = time.time() - spent
    for epoch in range(start_epoch, optim.epoch_num if stop_epoch is None else min(stop_epoch, optim.epoch_num)):
        t0 = time.time()
        lr = epoch_lr(epoch, optim)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss = train_epoch(model, train, optimizer, objective, batch_size=optim.batch_size, generator=generator,
                           device=device, desc=f"epoch {epoch + 1}/{optim.epoch_num}", repeat=optim.train_repeat,
                           after_step=ema_hook(average, model))
        scored, weights = weights_to_evaluate(s, average, model, train, epoch, device)
        score, evaluated = evaluate_epoch(scored)
        metrics = {"train_loss": loss, "lr": lr}
        if hasattr(scored, "scale"):
            metrics["temperature"] = 1.0 / scored.scale().item()
        if average is not None:
            metrics["averaged"] = float(weights != "raw")
        metrics.update(evaluated)
        selectable = average is None or weights != "raw"
        if selectable and (keep_last or score > best["score"]):
            best = {"score": score, "epoch": epoch, "state": copy.deepcopy(scored.state_dict())}
            if writes:
                save_checkpoint(ckpt_path, scored, s.config, epoch, {"selection_top1": score, "weights": weights})
        metrics["epoch_seconds"] = time.time() - t0
        history.append(metrics)
        if writes:
            save_state(state_path, model=model, optimizer=optimizer, generator=generator, cfg=s.config,
                       next_epoch=epoch + 1, best=best, history=history, train_seconds=time.time() - t_start,
                       average=None if average is None else average.state_dict(),
                       evaluator=evaluate_epoch.state_dict() if hasattr(evaluate_epoch, "state_dict") else None)
        for k, v in metrics.items():
            tracker.log_scalar(k, v, epoch)
        log.info("epoch %d/%d  loss %.4f  lr %.4g  %s%s  (%.1fs)", epoch + 1, optim.epoch_num, loss, lr,
                 "" if average is None else f"weights {weights}  ", epoch_log_line(metrics, selection_key),
                 metrics["epoch_seconds"])
    model.load_state_dict(best["state"])
    return Outcome(best["epoch"], best["score"], time.time() - t_start, ckpt_path, history)


def ema_hook(average: WeightAverage | None, model: torch.nn.Module) -> Callable[[], None] | None:
    """The per-optimiser-step update of an EMA (None otherwise: ``train_epoch`` runs as without averaging)."""
    if average is None or average.kind != "ema":
        return None
    return lambda: average.update(model)


def weights_to_evaluate(s: Settings, average: WeightAverage | None, model: torch.nn.Module, train: Subset,
                        epoch: int, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The module an epoch evaluates and its name (``"raw"``, ``"ema"``, ``"swa"``); SWA folds the epoch's
    weights in from ``swa_start`` on and recomputes the average's BatchNorm statistics on ``train``."""
    if average is None:
        return model, "raw"
    if average.kind == "swa" and epoch >= swa_first_epoch(s.average.swa_start, s.optim.epoch_num):
        average.update(model)
        recompute_batchnorm(average.module, train.x, batch_size=s.optim.batch_size, device=device,
                            precision=s.run.precision)
    return (average.module, average.kind) if average.ready else (model, "raw")
