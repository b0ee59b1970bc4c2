"""The zero-shot tracks' per-epoch evaluation, and the snapshot ensemble over epochs.

Per epoch: zero-shot top-1 on the selection subset (the validation classes, or the unseen test
classes with ``selection="test"``) and the unseen classes as a monitor (never selected on).

``selection="snapshot"`` picks no epoch. From epoch ``floor(snapshot_start · epoch_num)`` on, every
epoch's unit-length embeddings of the validation and unseen samples are summed; the validation
score of an epoch is that of the ensemble so far, and the unseen classes are scored once, after the
last epoch, with the ensemble's embeddings (``ZeroShotEpochEval.unseen_snapshot``). A cosine is
linear in a unit embedding, so this is the mean of the epochs' cosine scores: the ensemble of the
epochs' models, at the cost of one training. The sums are part of the resumable state. Since it
selects nothing, it can train on the validation classes too (``trainval=True``, the trainval protocol
of Xian et al., TPAMI 2019): then there is no validation score and only the unseen part is summed.

The validation top-1 of the picked epoch is a maximum over noisy epochs, inflated by the pick, so it
cannot be compared with the snapshot ensemble's. Every run with validation classes therefore also
records ``val_holdout_top1`` (``holdout_top1``): pick on half the validation classes, score the other.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F

from data.loading import Subset, ZeroShotData
from experiments.train.evaluate import zero_shot_eval
from experiments.train.settings import Settings
from experiments.train.steps import embed

EMBEDDINGS_FILE = "epoch_embeddings.npz"  # save_embeddings=True: every epoch's embeddings (rescore.py)


def holdout_top1(correct: torch.Tensor, labels: torch.Tensor, selectable: list[bool] | None = None,
                 fixed: torch.Tensor | None = None) -> float:
    """A validation estimate of a selection rule that no pick inflates: the validation classes are split
    into two halves A and B every way (sizes ``k // 2`` and ``k - k // 2`` as A), the epoch with the
    best top-1 on A's samples is scored on B's, and the mean over the splits is returned (percent).

    Args:
        correct: (E, N) bool, whether epoch e classified validation sample n right.
        labels: (N,) the samples' classes. selectable: (E,) the epochs the run may pick (all: None).
        fixed: (N,) bool, a model chosen without the validation classes (the snapshot ensemble): B's
            top-1 of it instead of the picked epoch's.

    Returns:
        NaN with fewer than 2 validation classes or no selectable epoch.
    """
    classes = sorted(set(labels.tolist()))
    keep = torch.ones(correct.shape[0], dtype=torch.bool) if selectable is None else torch.tensor(selectable)
    if len(classes) < 2 or not keep.any():
        return float("nan")
    scores = []
    for size in sorted({len(classes) // 2, len(classes) - len(classes) // 2}):
        for half in itertools.combinations(classes, size):
            a = torch.isin(labels, torch.tensor(half))
            if fixed is None:
                on_a = correct[:, a].double().mean(dim=1).masked_fill(~keep, -1.0)
                chosen = correct[int(on_a.argmax())]
            else:
                chosen = fixed
            scores.append(100.0 * chosen[~a].double().mean().item())
    return sum(scores) / len(scores)


def add_unit(sums: dict[str, torch.Tensor], part: str, feats: torch.Tensor) -> None:
    """Add the unit-length rows of ``feats`` to ``sums[part]`` (the snapshot ensemble's running sum)."""
    unit = F.normalize(feats.float(), dim=1)
    sums[part] = unit if part not in sums else sums[part] + unit


def pickable(history: list[dict], epochs: int) -> list[bool]:
    """Which of the last ``epochs`` epochs the run could pick (not SWA's raw weights before averaging)."""
    return [h.get("averaged", 1.0) == 1.0 for h in history[-epochs:]]


def snapshot_first_epoch(start: float, epoch_num: int) -> int:
    """The first (0-based) epoch the snapshot ensemble averages: ``floor(start · epoch_num)``."""
    if not 0.0 <= start < 1.0:
        raise ValueError(f"snapshot_start must be in [0, 1) (a fraction of epoch_num), got {start}")
    return int(math.floor(start * epoch_num))  # < epoch_num: at least the last epoch is averaged


class ZeroShotEpochEval:
    """Called with the model once per epoch: ``(selection score, metrics to log)``. Without a selection
    subset (the final stage of ``selection="folds"``, which keeps its last epoch) the score is NaN and
    only the monitor is logged."""

    def __init__(self, s: Settings, data: ZeroShotData, text: torch.Tensor, device: torch.device):
        ev = s.eval
        self.s, self.data, self.text, self.device = s, data, text, device
        self.select_on = data.unseen if ev.by_test else data.val
        self.snapshot = ev.selection == "snapshot"
        self.first = snapshot_first_epoch(ev.snapshot_start, s.optim.epoch_num) if self.snapshot else 0
        self.epoch = 0  # the next epoch this is called for
        self.sums: dict[str, torch.Tensor] = {}
        self.correct: list[torch.Tensor] = []  # per epoch: which validation samples it classified right
        self.snapshot_correct: torch.Tensor | None = None  # the same, of the snapshot ensemble so far
        self.saved: dict[str, list[torch.Tensor]] = {}  # save_embeddings: every epoch's embeddings per part

    def scores(self, feats: torch.Tensor, subset: Subset, align: bool = False):
        """``zero_shot_eval`` of ``feats`` of ``subset`` with the run's text side (ConSE over the training classes)."""
        ev = self.s.eval
        return zero_shot_eval(feats, subset.y, subset.classes, self.text, ev.align if align else None,
                              conse=ev.conse, seen=self.data.train.classes)

    def _embed(self, model, subset: Subset) -> torch.Tensor:
        return embed(model, subset.x, batch_size=self.s.eval.batch_size, device=self.device,
                     precision=self.s.run.precision, shard=True)

    def __call__(self, model) -> tuple[float, dict]:
        ev, epoch = self.s.eval, self.epoch
        self.epoch += 1
        score, metrics = float("nan"), {}
        feats = {}
        if self.select_on is not None:
            feats["val"] = self._embed(model, self.select_on)
            res = self.scores(feats["val"], self.select_on)
            score = res.top1
            self.correct.append(res.pred == self.select_on.y.cpu())
            metrics["unseen_top1_monitor" if ev.by_test else "val_top1"] = score
        if (ev.monitor_unseen or self.snapshot or ev.save_embeddings) and not ev.by_test:
            feats["unseen"] = self._embed(model, self.data.unseen)
        if "unseen" in feats and ev.monitor_unseen:
            mon = self.scores(feats["unseen"], self.data.unseen, align=True)
            metrics["unseen_top1_monitor"] = mon.top1
            if mon.top1_aligned is not None:
                metrics["unseen_top1_aligned_monitor"] = mon.top1_aligned
        if ev.save_embeddings:
            for part, f in feats.items():
                self.saved.setdefault(part, []).append(f.float().cpu())
        if self.snapshot and epoch >= self.first:
            for part, f in feats.items():  # trainval: the unseen part alone
                add_unit(self.sums, part, f)
            if self.select_on is not None:
                res = self.scores(self.sums["val"], self.select_on)
                score, self.snapshot_correct = res.top1, res.pred == self.select_on.y.cpu()
                metrics["val_top1_snapshot"] = score
        return score, metrics

    @property
    def count(self) -> int:
        """The epochs averaged so far."""
        return max(self.epoch - self.first, 0) if self.snapshot else 0

    def unseen_snapshot(self) -> torch.Tensor | None:
        """The snapshot ensemble's unseen embeddings (the mean of the epochs' unit embeddings), or None."""
        if not self.snapshot:
            return None
        if not self.count:
            raise RuntimeError("selection='snapshot': no epoch was averaged (the run ended before snapshot_start)")
        return self.sums["unseen"] / self.count

    def record(self, history: list[dict]) -> dict:
        """What a result records of the snapshot ensemble, and ``val_holdout_top1`` (``holdout_top1`` of
        the run's rule over the epochs it could pick: ``history``'s, not averaging's raw ones)."""
        out = {}
        if self.snapshot:
            out.update({"snapshot_start": self.s.eval.snapshot_start, "snapshot_from_epoch": self.first,
                        "snapshot_epochs": self.count})
        if self.s.data.trainval:
            out.update({"trainval": True, "train_classes": len(self.data.train.classes)})
        if self.correct and not self.s.eval.by_test and self.s.eval.selection in ("val", "snapshot"):
            out["val_holdout_top1"] = holdout_top1(torch.stack(self.correct), self.select_on.y.cpu(),
                                                   pickable(history, len(self.correct)),
                                                   self.snapshot_correct)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "sums": dict(self.sums), "correct": list(self.correct),
                "snapshot_correct": self.snapshot_correct, "saved": {k: list(v) for k, v in self.saved.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.sums = int(state["epoch"]), dict(state["sums"])
        self.correct, self.snapshot_correct = list(state.get("correct", [])), state.get("snapshot_correct")
        self.saved = {k: list(v) for k, v in state.get("saved", {}).items()}

    def save_embeddings(self, path: Path, history: list[dict]) -> Path:
        """Write every epoch's embeddings with what rescoring them needs (``experiments/train/rescore.py``)."""
        data = self.data
        arrays = {part: torch.stack(v).numpy() for part, v in self.saved.items()}
        for part in list(arrays):
            sub = data.val if part == "val" else data.unseen
            arrays.update({f"{part}_y": sub.y.cpu().numpy(), f"{part}_classes": np.array(sub.classes)})
        np.savez(path, **arrays, text=self.text.cpu().float().numpy(), train_classes=np.array(data.train.classes),
                 selectable=np.array(pickable(history, self.epoch)),
                 config=np.array(json.dumps(self.s.config, default=str)))
        return path
