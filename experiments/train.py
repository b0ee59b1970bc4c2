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

import contextlib
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
from experiments.checkpoints import load_checkpoint, resolve_checkpoint
from experiments.gzsl import choose_gamma, class_scores, evaluate_gzsl, one_shot_eval, pick_exemplars
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


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str):
    """``precision="bf16"``: the forward pass under ``torch.autocast`` to bfloat16 (CPU or CUDA;
    weights, gradients and the optimiser stay float32). ``"fp32"``: no autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def place_subset(subset: Subset, device: torch.device, mode: str | bool = "auto") -> Subset:
    """The subset with its tensors resident on ``device`` (no per-batch host-to-device copies).

    ``mode``: True moves it, False keeps it in host memory (batches are copied per step),
    ``"auto"`` moves it when it takes at most half of the device's free memory (always on
    the CPU, where it already is)."""
    if device.type == "cpu" or mode is False or subset.x.device == device:
        return subset
    if mode == "auto":
        free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
        size = subset.x.numel() * subset.x.element_size() + subset.y.numel() * subset.y.element_size()
        if size > free // 2:
            log.info("data stays in host memory: %.1f GiB > half of the %.1f GiB free on %s",
                     size / 2 ** 30, free / 2 ** 30, device)
            return subset
    elif mode is not True:
        raise ValueError(f"data_on_device must be True, False or 'auto', got {mode!r}")
    return Subset(subset.x.to(device), subset.y.to(device), subset.classes)


def progress(iterable, total: int, desc: str):
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0, disable=None)


def train_epoch(model: SkeletonTextModel, data: Subset, text: torch.Tensor, optimizer, loss_fn, *,
                batch_size: int, generator: torch.Generator, device: torch.device, loss_kwargs: dict,
                desc: str = "train", precision: str = "fp32") -> float:
    """One pass over the training samples; returns the sample-weighted mean loss.

    ``precision="bf16"`` runs the forward pass under bfloat16 autocast; the loss is computed
    in float32."""
    model.train()
    total, seen = 0.0, 0
    n_batches = len(data) // batch_size if len(data) >= batch_size else 1
    for idx in progress(batches(len(data), batch_size, shuffle=True, generator=generator, drop_last=True),
                        n_batches, desc):
        idx = idx.to(data.x.device)  # resident data (place_subset) is indexed where it lives
        x = data.x[idx].to(device, non_blocking=True)
        y = data.y[idx].to(device, non_blocking=True)
        with autocast(device, precision):
            emb = model(x)
        loss = loss_fn(emb.float(), text[y], y, model.scale(), **loss_kwargs)
        value = loss.item()  # one device sync per step, checked before the weights change
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} ({desc}); lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def embed(model: SkeletonTextModel, x: torch.Tensor, *, batch_size: int, device: torch.device,
          desc: str = "embed", precision: str = "fp32") -> torch.Tensor:
    """(N, text_dim) embeddings of a whole subset, in order (float32, on the CPU)."""
    model.eval()
    with autocast(device, precision):
        out = [model(x[idx.to(x.device)].to(device)).float().cpu()
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
    if cfg.get("resume"):
        return Path(cfg["resume"])
    if cfg.get("out_dir"):
        return Path(cfg["out_dir"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return PROJECT_ROOT / "runs" / f"{stamp}-{cfg['dataset']}-split{cfg['split']}-{cfg['train_mode']}-seed{cfg['seed']}"


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file, then rename: a kill at any moment leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_checkpoint(path: Path, model: SkeletonTextModel, cfg: dict, epoch: int, metrics: dict) -> None:
    """Weights plus the run's config, loadable with ``torch.load(path, weights_only=True)``."""
    _save_atomic({"model": model.state_dict(), "config": cfg, "epoch": epoch, "metrics": metrics}, path)


# ----------------------------------------------------------------------------- resumable state

STATE_FILE = "last.pt"
# Entries that may differ between a run and its continuation (where and how it is recorded).
RESUME_FREE_KEYS = {"resume", "out_dir", "mongo_url", "offline", "device", "shift_impl", "eval_batch_size"}


def rng_snapshot(generator: torch.Generator) -> dict:
    """Every random state the loop depends on, as tensors and plain values (``weights_only``-safe)."""
    np_state = np.random.get_state()
    return {"batches": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": list(random.getstate())}


def restore_rng(snap: dict, generator: torch.Generator) -> None:
    generator.set_state(snap["batches"])
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    name, keys, *rest = snap["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = snap["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: Path, *, model, optimizer, generator, cfg: dict, next_epoch: int, best: dict,
               history: list[dict], train_seconds: float) -> None:
    """Everything needed to continue after ``next_epoch - 1`` as if never interrupted."""
    _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_snapshot(generator),
                  "next_epoch": next_epoch, "best": best, "history": history, "config": cfg,
                  "train_seconds": train_seconds}, path)


def load_state(folder: str | Path, cfg: dict) -> dict:
    """The state of an interrupted run, checked against the current config."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"resume={str(folder)!r}: no {STATE_FILE} there (a run writes it after each epoch)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    differ = sorted(k for k in set(cfg) | set(state["config"])
                    if k not in RESUME_FREE_KEYS and cfg.get(k) != state["config"].get(k))
    if differ:
        detail = ", ".join(f"{k}: {state['config'].get(k)!r} → {cfg.get(k)!r}" for k in differ[:8])
        raise ValueError(f"resume={str(folder)!r}: the config differs from the interrupted run's ({detail}); "
                         "resume with the same settings")
    return state


# ----------------------------------------------------------------------------- the tracks

def prepare_run(cfg: dict) -> tuple[ZeroShotData, torch.Tensor, SkeletonTextModel, torch.device]:
    """Everything that can fail on bad input, checked before the first training step."""
    spec = get_dataset(cfg["dataset"], cfg["data_root"])
    if cfg["selection"] not in ("val", "test"):
        raise ValueError(f"selection must be 'val' or 'test', got {cfg['selection']!r}")
    get_loss(cfg["loss_type"])
    use_val = cfg["selection"] == "val" or cfg.get("gzsl", False)
    data = load_zero_shot(cfg["data_root"], spec, cfg["split"], cfg["unseen_classes"], cfg["val_classes"],
                          cfg["max_frame"], use_val=use_val,
                          holdout=cfg["gzsl_holdout"] if cfg.get("gzsl") else 0.0, holdout_seed=cfg["val_seed"])
    if cfg.get("gzsl") and data.seen_test is None:
        raise ValueError(f"gzsl=True needs seen-class test samples: {cfg['dataset']} split {cfg['split']} has no "
                         "seen_test_data.npy / seen_test_label.npy")
    if cfg["train_mode"] == "one_shot":
        pick_exemplars(data.unseen.y, data.unseen.classes, cfg["exemplar_seed"])  # every class needs 2+ samples
    text = torch.from_numpy(text_embeddings.load(cfg["data_root"], cfg["dataset"], cfg["text_kind"],
                                                 cfg["text_model"], num_classes=spec.num_classes,
                                                 dim=cfg["text_dim"]))
    device = resolve_device(cfg["device"])
    autocast(device, cfg["precision"])  # validates the key before any work
    place_data(data, device, cfg["data_on_device"])
    model = build_model(cfg).to(device)
    return data, text, model, device


def place_data(data: ZeroShotData, device: torch.device, mode: str | bool) -> None:
    """Training samples and labels, and the inputs of every evaluated subset, resident on the
    device where they fit (``place_subset``); evaluation labels stay on the CPU with the metrics."""
    data.train = place_subset(data.train, device, mode)
    for name in ("val", "unseen", "seen_test", "val_seen"):
        sub = getattr(data, name)
        if sub is not None:
            setattr(data, name, Subset(place_subset(sub, device, mode).x, sub.y, sub.classes))



@dataclass
class Outcome:
    """What training and selection produced; the model holds the selected weights afterwards."""
    best_epoch: int
    best_score: float
    train_seconds: float
    checkpoint: Path


def train_and_select(cfg: dict, data: ZeroShotData, text: torch.Tensor, model: SkeletonTextModel,
                     device: torch.device, tracker: Tracker, generator: torch.Generator) -> Outcome:
    """The epoch loop with per-epoch selection; resumable from ``last.pt`` (``cfg["resume"]``)."""
    text_dev = text.to(device)
    loss_fn = get_loss(cfg["loss_type"])
    loss_kwargs = {"alpha": cfg["loss_alpha"], "beta": cfg["loss_beta"], "margin": cfg["loss_margin"]}
    optimizer = make_optimizer(model, cfg["lr"], cfg["momentum"], cfg["weight_decay"])
    by_test = cfg["selection"] == "test"
    select_on = data.unseen if by_test else data.val
    out = checkpoint_dir(cfg)
    ckpt_path, state_path = out / "best.pt", out / STATE_FILE
    eval_bs = cfg["eval_batch_size"]

    best = {"score": -1.0, "epoch": -1, "state": None}
    history: list[dict] = []
    start_epoch, spent = 0, 0.0
    if cfg.get("resume"):
        state = load_state(cfg["resume"], cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generator)
        best, history, start_epoch, spent = state["best"], state["history"], state["next_epoch"], state["train_seconds"]
        for epoch, metrics in enumerate(history):  # the new run record gets the whole curve
            for k, v in metrics.items():
                tracker.log_scalar(k, v, epoch)
        log.info("resuming %s at epoch %d/%d", cfg["resume"], start_epoch + 1, cfg["epoch_num"])

    t_start = time.time() - spent
    for epoch in range(start_epoch, cfg["epoch_num"]):
        t0 = time.time()
        lr = lr_at(epoch, lr=cfg["lr"], schedule=cfg["lr_schedule"], warmup_epochs=cfg["warmup_epochs"],
                   epoch_num=cfg["epoch_num"], lr_steps=cfg["lr_steps"], lr_gamma=cfg["lr_gamma"])
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss = train_epoch(model, data.train, text_dev, optimizer, loss_fn, batch_size=cfg["batch_size"],
                           generator=generator, device=device, loss_kwargs=loss_kwargs,
                           desc=f"epoch {epoch + 1}/{cfg['epoch_num']}", precision=cfg["precision"])
        sel = zero_shot_eval(embed(model, select_on.x, batch_size=eval_bs, device=device,
                                   precision=cfg["precision"]), select_on.y,
                             select_on.classes, text, align=False)
        metrics = {"train_loss": loss, "lr": lr, "temperature": 1.0 / model.scale().item()}
        metrics["unseen_top1_monitor" if by_test else "val_top1"] = sel.top1
        if cfg["monitor_unseen"] and not by_test:
            mon = zero_shot_eval(embed(model, data.unseen.x, batch_size=eval_bs, device=device,
                                       precision=cfg["precision"]), data.unseen.y,
                                 data.unseen.classes, text, align=cfg["DA"], support_factor=cfg["support_factor"],
                                 min_support=cfg["min_support"], entropy_scale=cfg["entropy_scale"])
            metrics["unseen_top1_monitor"] = mon.top1
            if mon.top1_aligned is not None:
                metrics["unseen_top1_aligned_monitor"] = mon.top1_aligned
        if sel.top1 > best["score"]:
            best = {"score": sel.top1, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            save_checkpoint(ckpt_path, model, cfg, epoch, {"selection_top1": sel.top1})
        metrics["epoch_seconds"] = time.time() - t0
        history.append(metrics)
        save_state(state_path, model=model, optimizer=optimizer, generator=generator, cfg=cfg, next_epoch=epoch + 1,
                   best=best, history=history, train_seconds=time.time() - t_start)
        for k, v in metrics.items():
            tracker.log_scalar(k, v, epoch)
        log.info("epoch %d/%d  loss %.4f  lr %.4g  %s %.2f%%%s  (%.1fs)", epoch + 1, cfg["epoch_num"], loss, lr,
                 "unseen(selection)" if by_test else "val", sel.top1,
                 f"  unseen(monitor) {metrics['unseen_top1_monitor']:.2f}%" if "unseen_top1_monitor" in metrics
                 and not by_test else "", metrics["epoch_seconds"])
    model.load_state_dict(best["state"])
    return Outcome(best["epoch"], best["score"], time.time() - t_start, ckpt_path)


def final_report(cfg: dict, data: ZeroShotData, text: torch.Tensor, model: SkeletonTextModel, device: torch.device,
                 tracker: Tracker, outcome: Outcome) -> dict:
    """Score the unseen classes once with the selected model (plus GZSL / one-shot when asked); write the
    artifacts. Shared by training runs and checkpoint evaluation."""
    by_test = cfg["selection"] == "test"
    eval_bs = cfg["eval_batch_size"]
    feats = embed(model, data.unseen.x, batch_size=eval_bs, device=device, desc="unseen",
                  precision=cfg["precision"])
    res = zero_shot_eval(feats, data.unseen.y, data.unseen.classes, text, align=cfg["DA"],
                         support_factor=cfg["support_factor"], min_support=cfg["min_support"],
                         entropy_scale=cfg["entropy_scale"])
    result = {
        "dataset": cfg["dataset"], "split": str(cfg["split"]), "train_mode": cfg["train_mode"], "seed": cfg["seed"],
        "tag": cfg.get("tag", ""), "selection": cfg["selection"], "best_epoch": outcome.best_epoch,
        ("best_unseen_top1_selection" if by_test else "best_val_top1"): outcome.best_score,
        "unseen_top1": res.top1, "unseen_per_class_mean": res.per_class_mean,
        "unseen_per_class": {str(k): v for k, v in res.per_class.items()},
        "num_unseen_samples": len(data.unseen), "unseen_classes": list(data.unseen.classes),
        "val_classes": list(data.val.classes) if data.val else [],
        "train_seconds": round(outcome.train_seconds, 1), "checkpoint": str(outcome.checkpoint),
    }
    if cfg["DA"]:
        result.update({"unseen_top1_aligned": res.top1_aligned,
                       "unseen_per_class_mean_aligned": res.per_class_mean_aligned,
                       "alignment": "transductive (prototypes from the whole unseen test set)",
                       "support_factor": cfg["support_factor"]})
    if cfg.get("gzsl"):
        result.update(gzsl_report(cfg, data, text, model, device))
    if cfg["train_mode"] == "one_shot":
        exemplars = pick_exemplars(data.unseen.y, data.unseen.classes, cfg["exemplar_seed"])
        result.update(one_shot_eval(feats, data.unseen.y, data.unseen.classes, text, exemplars,
                                    cfg["one_shot_text_weight"]))
        result["exemplars"] = {str(c): i for c, i in exemplars.items()}  # indices into unseen_data.npy
    report = write_unseen_report(outcome.checkpoint.parent, data.unseen.y, data.unseen.classes,
                                 class_names(cfg["dataset"], data.unseen.classes, cfg["data_root"]), res.pred, res.pred_aligned,
                                 res.feats, text, res.prototypes)
    for path in [outcome.checkpoint, *report]:
        tracker.add_artifact(path)
    log.info("unseen top-1: inductive %.2f%%%s (per-class mean %.2f%%), %s", res.top1,
             f", aligned {res.top1_aligned:.2f}%" if cfg["DA"] else "", res.per_class_mean,
             f"checkpoint of epoch {outcome.best_epoch + 1} selected by "
             f"{'unseen test accuracy' if by_test else 'validation accuracy'}")
    for key in ("H", "one_shot_top1_exemplar", "one_shot_top1_text", "one_shot_top1_combined"):
        if key in result:
            log.info("%s: %.2f%%", key, result[key])
    return result


def gzsl_report(cfg: dict, data: ZeroShotData, text: torch.Tensor, model: SkeletonTextModel,
                device: torch.device) -> dict:
    """Generalized zero-shot: gamma chosen on validation data (held-out training-class samples +
    validation classes), then applied once to seen-test (training classes) + unseen samples."""
    eval_bs = cfg["eval_batch_size"]
    train_cls, val_cls, unseen_cls = data.train.classes, data.val.classes, data.unseen.classes
    vx = torch.cat([data.val_seen.x, data.val.x])
    vy = torch.cat([data.val_seen.y, data.val.y])
    v_classes = sorted(train_cls + val_cls)
    v_scores = class_scores(embed(model, vx, batch_size=eval_bs, device=device, desc="gzsl val",
                                  precision=cfg["precision"]), text, v_classes)
    gamma, val_h = choose_gamma(v_scores, vy, v_classes, train_cls, val_cls)
    # the test side: seen-test samples of the training classes (validation classes were never trained on)
    keep = torch.isin(data.seen_test.y, torch.tensor(train_cls))
    tx = torch.cat([data.seen_test.x[keep], data.unseen.x])
    ty = torch.cat([data.seen_test.y[keep], data.unseen.y])
    t_classes = sorted(train_cls + unseen_cls)
    t_scores = class_scores(embed(model, tx, batch_size=eval_bs, device=device, desc="gzsl test",
                                  precision=cfg["precision"]), text, t_classes)
    res = evaluate_gzsl(t_scores, ty, t_classes, train_cls, unseen_cls, gamma)
    return {"gzsl_gamma": gamma, "gzsl_val_H": val_h, "gzsl_calibration": "gamma chosen on validation data only",
            **{f"gzsl_{k}": v for k, v in res.items() if k != "gamma"}, "H": res["H"]}


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
    generator = seed_everything(cfg["seed"])
    data, text, model, device = prepare_run(cfg)
    log.info("train %d samples (%d classes) | val %s | unseen %d samples (%d classes) | device %s",
             len(data.train), len(data.train.classes),
             f"{len(data.val)} samples ({len(data.val.classes)} classes)" if data.val else "none (test selection)",
             len(data.unseen), len(data.unseen.classes), device)
    outcome = train_and_select(cfg, data, text, model, device, tracker, generator)
    return final_report(cfg, data, text, model, device, tracker, outcome)


def run_test(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Evaluate a stored checkpoint (``cfg["checkpoint"]``) on the configured dataset and split, with
    the same numbers and artifacts as after training; recorded as its own run."""
    tracker = tracker or NullTracker()
    seed_everything(cfg["seed"])
    path = resolve_checkpoint(cfg["checkpoint"], cfg.get("mongo_url", ""))
    ckpt = load_checkpoint(path)
    trained = ckpt["config"]
    # the result reports the rule that selected this checkpoint, not this run's default
    cfg = {**cfg, "selection": trained.get("selection", cfg["selection"])}
    data, text, model, device = prepare_run(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the configured model ({exc})") from None
    outcome = Outcome(int(ckpt.get("epoch", -1)), float(ckpt.get("metrics", {}).get("selection_top1", float("nan"))),
                      0.0, path)
    result = final_report(cfg, data, text, model, device, tracker, outcome)
    result.update({"evaluated_checkpoint": str(path), "trained_on": {k: trained.get(k) for k in
                   ("dataset", "split", "train_mode", "seed", "selection", "tag")}})
    return result
