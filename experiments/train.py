"""The one train / evaluate loop every track uses.

Per epoch: train on the training classes; evaluate zero-shot on the validation
classes (held-out seen classes) and keep the checkpoint that scores best there.
After training, the unseen test classes are scored once with that checkpoint:
inductive top-1 (nearest text), per-class mean accuracy, and top-1 after
prototype-guided alignment. ``selection="test"`` picks the epoch by unseen accuracy
instead (what the original code does); it is recorded in the result.

All accuracies are percentages over samples (and means over classes for the
per-class numbers).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from data.catalog import PROJECT_ROOT, get_dataset
from data.loading import Subset, ZeroShotData, load_zero_shot
from experiments.artifacts import class_names, write_unseen_report
from experiments.metrics import per_class_accuracy, top1
from experiments.tracking import NullTracker, Tracker
from module import build_backbone_from_config
from module.align import nearest_text, prototype_align
from module.head import SkeletonTextModel
from module.losses import get_loss
from text import embeddings as text_embeddings

log = logging.getLogger("pgfa")


# ----------------------------------------------------------------------------- set-up

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


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
          lr_steps: list[int], lr_gamma: float = 0.1, lr_min: float = 0.0) -> float:
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


def build_model(cfg: dict) -> SkeletonTextModel:
    backbone = build_backbone_from_config(cfg["backbone"], cfg)
    return SkeletonTextModel(backbone, cfg["text_dim"], init_temperature=cfg["init_temperature"],
                             learn_temperature=cfg["learn_temperature"])


def make_optimizer(model: SkeletonTextModel, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    # No weight decay on the temperature: decay would pull the scale towards 1.
    decay = [p for n, p in model.named_parameters() if n != "logit_scale" and p.requires_grad]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if model.logit_scale.requires_grad:
        groups.append({"params": [model.logit_scale], "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


# ----------------------------------------------------------------------------- loops

def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index batches over an in-memory dataset (no loader workers: faster on few cores)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield order[s:s + batch_size]


def progress(iterable, total: int, desc: str):
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0, disable=None)


def train_epoch(model: SkeletonTextModel, data: Subset, text: torch.Tensor, optimizer, loss_fn, *,
                batch_size: int, generator: torch.Generator, device: torch.device, loss_kwargs: dict,
                desc: str = "train") -> float:
    """One pass over the training samples; returns the sample-weighted mean loss."""
    model.train()
    total, seen = 0.0, 0
    n_batches = len(data) // batch_size if len(data) >= batch_size else 1
    for idx in progress(batches(len(data), batch_size, shuffle=True, generator=generator, drop_last=True),
                        n_batches, desc):
        x = data.x[idx].to(device, non_blocking=True)
        y = data.y[idx].to(device, non_blocking=True)
        emb = model(x)
        loss = loss_fn(emb, text[y], y, model.scale(), **loss_kwargs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} ({desc}); lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def embed(model: SkeletonTextModel, x: torch.Tensor, *, batch_size: int, device: torch.device,
          desc: str = "embed") -> torch.Tensor:
    """(N, text_dim) embeddings of a whole subset, in order."""
    model.eval()
    out = [model(x[idx].to(device)).float().cpu()
           for idx in progress(batches(len(x), batch_size, shuffle=False), math.ceil(len(x) / batch_size), desc)]
    return torch.cat(out)


@dataclass
class ZeroShotResult:
    top1: float
    per_class_mean: float
    per_class: dict[int, float]
    pred: torch.Tensor              # predicted class ids (inductive)
    top1_aligned: float | None = None
    per_class_mean_aligned: float | None = None
    pred_aligned: torch.Tensor | None = None
    prototypes: torch.Tensor | None = None
    support: torch.Tensor | None = None
    feats: torch.Tensor | None = None


def zero_shot_eval(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], text: torch.Tensor, *,
                   align: bool, support_factor: float = 1.0, min_support: int = 1,
                   entropy_scale: float = 1.0) -> ZeroShotResult:
    """Classify ``feats`` among ``classes`` by their text embeddings (and, with ``align``, by prototypes)."""
    cls = torch.tensor(classes)
    cand = text[cls].cpu()  # (K, D) candidate class texts
    pred = cls[nearest_text(feats, cand)[1]]
    pc = per_class_accuracy(pred, labels, classes)
    res = ZeroShotResult(top1(pred, labels), float(np.mean(list(pc.values()))), pc, pred, feats=feats)
    if align:
        a = prototype_align(feats, cand, support_factor, min_support, entropy_scale)
        pred_a = cls[a.pred_aligned]
        pca = per_class_accuracy(pred_a, labels, classes)
        res.top1_aligned, res.per_class_mean_aligned = top1(pred_a, labels), float(np.mean(list(pca.values())))
        res.pred_aligned, res.prototypes, res.support = pred_a, a.prototypes, a.support
    return res


# ----------------------------------------------------------------------------- the track

def checkpoint_dir(cfg: dict) -> Path:
    if cfg.get("out_dir"):
        return Path(cfg["out_dir"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return PROJECT_ROOT / "runs" / f"{stamp}-{cfg['dataset']}-split{cfg['split']}-{cfg['train_mode']}-seed{cfg['seed']}"


def save_checkpoint(path: Path, model: SkeletonTextModel, cfg: dict, epoch: int, metrics: dict) -> None:
    """Weights plus the run's config, loadable with ``torch.load(path, weights_only=True)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "config": cfg, "epoch": epoch, "metrics": metrics}, tmp)
    tmp.replace(path)


def prepare_run(cfg: dict) -> tuple[ZeroShotData, torch.Tensor, SkeletonTextModel, torch.device]:
    """Everything that can fail on bad input, checked before the first training step."""
    spec = get_dataset(cfg["dataset"], cfg["data_root"])
    use_val = cfg["selection"] == "val"
    if cfg["selection"] not in ("val", "test"):
        raise ValueError(f"selection must be 'val' or 'test', got {cfg['selection']!r}")
    get_loss(cfg["loss_type"])
    data = load_zero_shot(cfg["data_root"], spec, cfg["split"], cfg["unseen_classes"], cfg["val_classes"],
                          cfg["max_frame"], use_val=use_val)
    text = torch.from_numpy(text_embeddings.load(cfg["data_root"], cfg["dataset"], cfg["text_kind"],
                                                 cfg["text_model"], num_classes=spec.num_classes,
                                                 dim=cfg["text_dim"]))
    device = resolve_device(cfg["device"])
    model = build_model(cfg).to(device)
    return data, text, model, device


def run_zero_shot(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Train on the seen classes, select on validation, score the unseen classes once.

    Args:
        cfg: the full run config (``config.py``'s keys).
        tracker: receives per-epoch scalars and artifact files.

    Returns:
        The result dict (accuracies in percent).
    """
    tracker = tracker or NullTracker()
    generator = seed_everything(cfg["seed"])
    data, text, model, device = prepare_run(cfg)
    text_dev = text.to(device)
    loss_fn = get_loss(cfg["loss_type"])
    loss_kwargs = {"alpha": cfg["loss_alpha"], "beta": cfg["loss_beta"], "margin": cfg["loss_margin"]}
    optimizer = make_optimizer(model, cfg["lr"], cfg["momentum"], cfg["weight_decay"])
    by_test = cfg["selection"] == "test"
    select_on = data.unseen if by_test else data.val
    ckpt_path = checkpoint_dir(cfg) / "best.pt"
    eval_bs = cfg["eval_batch_size"]
    log.info("train %d samples (%d classes) | val %s | unseen %d samples (%d classes) | device %s",
             len(data.train), len(data.train.classes),
             f"{len(data.val)} samples ({len(data.val.classes)} classes)" if data.val else "none (test selection)",
             len(data.unseen), len(data.unseen.classes), device)

    best = {"score": -1.0, "epoch": -1, "state": None}
    t_start = time.time()
    for epoch in range(cfg["epoch_num"]):
        t0 = time.time()
        lr = lr_at(epoch, lr=cfg["lr"], schedule=cfg["lr_schedule"], warmup_epochs=cfg["warmup_epochs"],
                   epoch_num=cfg["epoch_num"], lr_steps=cfg["lr_steps"], lr_gamma=cfg["lr_gamma"])
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss = train_epoch(model, data.train, text_dev, optimizer, loss_fn, batch_size=cfg["batch_size"],
                           generator=generator, device=device, loss_kwargs=loss_kwargs,
                           desc=f"epoch {epoch + 1}/{cfg['epoch_num']}")
        sel = zero_shot_eval(embed(model, select_on.x, batch_size=eval_bs, device=device), select_on.y,
                             select_on.classes, text, align=False)
        metrics = {"train_loss": loss, "lr": lr, "temperature": 1.0 / model.scale().item()}
        metrics["unseen_top1_monitor" if by_test else "val_top1"] = sel.top1
        if cfg["monitor_unseen"] and not by_test:
            mon = zero_shot_eval(embed(model, data.unseen.x, batch_size=eval_bs, device=device), data.unseen.y,
                                 data.unseen.classes, text, align=cfg["DA"], support_factor=cfg["support_factor"],
                                 min_support=cfg["min_support"], entropy_scale=cfg["entropy_scale"])
            metrics["unseen_top1_monitor"] = mon.top1
            if mon.top1_aligned is not None:
                metrics["unseen_top1_aligned_monitor"] = mon.top1_aligned
        if sel.top1 > best["score"]:
            best.update(score=sel.top1, epoch=epoch, state=copy.deepcopy(model.state_dict()))
            save_checkpoint(ckpt_path, model, cfg, epoch, {"selection_top1": sel.top1})
        metrics["epoch_seconds"] = time.time() - t0
        for k, v in metrics.items():
            tracker.log_scalar(k, v, epoch)
        log.info("epoch %d/%d  loss %.4f  lr %.4g  %s %.2f%%%s  (%.1fs)", epoch + 1, cfg["epoch_num"], loss, lr,
                 "unseen(selection)" if by_test else "val", sel.top1,
                 f"  unseen(monitor) {metrics['unseen_top1_monitor']:.2f}%" if "unseen_top1_monitor" in metrics
                 and not by_test else "", metrics["epoch_seconds"])
    train_seconds = time.time() - t_start

    # Score the unseen classes once, with the selected checkpoint.
    model.load_state_dict(best["state"])
    feats = embed(model, data.unseen.x, batch_size=eval_bs, device=device, desc="unseen")
    res = zero_shot_eval(feats, data.unseen.y, data.unseen.classes, text, align=cfg["DA"],
                         support_factor=cfg["support_factor"], min_support=cfg["min_support"],
                         entropy_scale=cfg["entropy_scale"])
    result = {
        "dataset": cfg["dataset"], "split": str(cfg["split"]), "train_mode": cfg["train_mode"], "seed": cfg["seed"],
        "selection": cfg["selection"], "best_epoch": best["epoch"],
        ("best_unseen_top1_selection" if by_test else "best_val_top1"): best["score"],
        "unseen_top1": res.top1, "unseen_per_class_mean": res.per_class_mean,
        "unseen_per_class": {str(k): v for k, v in res.per_class.items()},
        "num_unseen_samples": len(data.unseen), "unseen_classes": list(data.unseen.classes),
        "val_classes": list(data.val.classes) if data.val else [],
        "train_seconds": round(train_seconds, 1), "checkpoint": str(ckpt_path),
    }
    if cfg["DA"]:
        result.update({"unseen_top1_aligned": res.top1_aligned,
                       "unseen_per_class_mean_aligned": res.per_class_mean_aligned,
                       "alignment": "transductive (prototypes from the whole unseen test set)",
                       "support_factor": cfg["support_factor"]})
    report = write_unseen_report(ckpt_path.parent, data.unseen.y, data.unseen.classes,
                                 class_names(cfg["dataset"], data.unseen.classes), res.pred, res.pred_aligned,
                                 res.feats, text, res.prototypes)
    for path in [ckpt_path, *report]:
        tracker.add_artifact(path)
    log.info("unseen top-1: inductive %.2f%%%s (per-class mean %.2f%%), selected epoch %d by %s",
             res.top1, f", aligned {res.top1_aligned:.2f}%" if cfg["DA"] else "", res.per_class_mean,
             best["epoch"] + 1, "unseen test accuracy" if by_test else "validation accuracy")
    return result
