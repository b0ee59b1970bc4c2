"""The per-step work of every track: index batches over in-memory tensors, the forward
precision, data placement, one training pass, and embedding a whole subset."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from data.loading import Subset
from experiments.train import distributed

log = logging.getLogger("pgfa")

PRECISIONS = ("fp32", "bf16")


MAX_AUTO_BATCH = 128  # PGFA's batch size, the largest "auto" picks
MIN_AUTO_BATCH = 8
TARGET_STEPS = 8       # "auto" aims at this many optimiser steps per epoch or more
FEW_STEPS = 4          # fewer steps per epoch than this: the run is warned


def auto_batch_size(n: int) -> int:
    """``batch_size="auto"``: the largest power of two up to 128 that gives at least 8 steps
    per epoch over ``n`` training samples, but at least 8 samples (BatchNorm statistics)."""
    bs = MAX_AUTO_BATCH
    while bs > MIN_AUTO_BATCH and n // bs < TARGET_STEPS:
        bs //= 2
    return bs


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch (the last partial batch is dropped, but never the only one)."""
    return max(1, n // batch_size)


def batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False, repeat: int = 1) -> Iterator[torch.Tensor]:
    """Index batches over an in-memory dataset (no loader workers: faster on few cores).

    ``repeat`` > 1 makes one pass over ``repeat`` shuffled copies of the index list (CTR-GCN's
    NW-UCLA feeder repeats its training set 5 times per epoch)."""
    if shuffle:
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(repeat)])
    else:
        order = torch.arange(n).repeat(repeat)
    n = len(order)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        yield order[s:s + batch_size]


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


LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
HALFWAY_AFTER = 3.0  # an epoch still running after this many seconds logs its half-way point


def progress(iterable, total: int, desc: str):
    """A progress bar on a terminal; in a log (``make demo > log``, nohup, CI) one line about
    every 30 s, and one at the half-way batch of an epoch that takes more than a few seconds,
    with the batch position, the rate and the time left."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                    mininterval=1.0)
    return log_progress(iterable, total, desc)


def log_progress(iterable, total: int, desc: str, every: float = LOG_EVERY, clock=time.monotonic):
    start = last = clock()
    for i, item in enumerate(iterable, 1):
        yield item
        now = clock()
        halfway = i == total // 2 and now - start >= HALFWAY_AFTER  # short epochs get one line too
        if (now - last >= every or halfway) and i < total:
            last = now
            rate = (now - start) / i
            log.info("%s: batch %d/%d (%d%%), %.2f s/batch, about %s left", desc, i, total, 100 * i // total,
                     rate, _duration(rate * (total - i)))


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def train_epoch(model: torch.nn.Module, data: Subset, optimizer, objective: Objective, *, batch_size: int,
                generator: torch.Generator, device: torch.device, desc: str = "train", repeat: int = 1,
                after_step: Callable[[], None] | None = None) -> float:
    """One pass (``repeat`` passes) over the training samples; returns the sample-weighted mean loss.

    ``objective(model, x, y, generator)`` is the track's loss of one batch
    (``experiments/train/objectives.py``: augmentation, the forward pass and its precision, the
    loss and any auxiliary loss). ``after_step()`` runs after every optimiser step (the EMA update
    of ``averaging.py``)."""
    model.train()
    total, seen = 0.0, 0
    n = len(data) * repeat
    n_batches = n // batch_size if n >= batch_size else 1
    for idx in progress(batches(len(data), batch_size, shuffle=True, generator=generator, drop_last=True,
                                repeat=repeat), n_batches, desc):
        idx = idx.to(data.x.device)  # resident data (place_subset) is indexed where it lives
        x = data.x[idx].to(device, non_blocking=True)
        y = data.y[idx].to(device, non_blocking=True)
        if getattr(objective, "wants_index", False):  # a loss that draws partners from the whole set (SkeletonX)
            loss = objective(model, x, y, generator, idx, data.x)
        else:
            loss = objective(model, x, y, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = distributed.sync_step(model, loss)  # the loss (mean over ranks); gradients averaged in a launch
        if not math.isfinite(value):  # checked before the weights change
            raise FloatingPointError(f"loss became {value} ({desc}); lower lr or check the data")
        optimizer.step()
        if after_step is not None:
            after_step()
        total += value * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device,
          desc: str = "embed", precision: str = "fp32", shard: bool = False) -> torch.Tensor:
    """(N, D) outputs of a whole subset, in order (float32, on the CPU): text-space embeddings of a
    ``SkeletonTextModel``, class logits of a ``ClassifierModel``.

    ``shard``: in a torchrun launch each rank embeds its share and the outputs are gathered (every
    rank must call it; ``distributed.py``); a one-process run embeds everything."""
    model.eval()

    def rows(start: int, stop: int) -> torch.Tensor:
        part = x[start:stop] if stop > start else x[:1]  # an empty share (fewer rows than ranks) runs one row
        with autocast(device, precision):
            out = [model(part[idx.to(x.device)].to(device)).float() for idx in
                   progress(batches(len(part), batch_size, shuffle=False), math.ceil(len(part) / batch_size), desc)]
        return torch.cat(out)[:stop - start]

    if shard:
        return distributed.gather_rows(rows, len(x))
    return rows(0, len(x)).cpu()
