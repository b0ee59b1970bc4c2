"""Weight averaging: an averaged copy of the model that is evaluated, selected and kept
(``weight_average`` in ``config.py``).

* ``ema``: an exponential moving average updated after every optimiser step. The decay of
  the update after ``n`` earlier ones is ``min(ema_decay, (1 + n) / (10 + n))`` (TensorFlow's
  ``ExponentialMovingAverage`` warm-up): with a fixed 0.999 a short run on a small dataset
  (a few hundred steps) would keep most of its first steps' nearly untrained weights. The
  first update copies the weights. Buffers are averaged the same way (BatchNorm running
  statistics included; integer buffers such as ``num_batches_tracked`` are copied): the EMA
  weights move slowly, so the averaged statistics describe them well.
* ``swa``: the uniform average of the weights at the end of every epoch from ``swa_start`` ×
  ``epoch_num`` on. Averaged BatchNorm statistics would describe none of the averaged
  networks, so after each update they are recomputed (``recompute_batchnorm``): one pass
  over the training samples in order, without gradients and without augmentation, with
  only the BatchNorm layers in training mode (dropout off, as at evaluation) and a
  cumulative mean over the batches. The pass draws no random numbers, so training continues
  exactly as without it.

The state (the averaged weights and the update count) goes into ``last.pt`` so a resumed run
continues identically.
"""
from __future__ import annotations

import copy
import math

import torch

from experiments.train.settings import AverageSettings
from experiments.train.steps import autocast, batches

EMA_WARMUP = 10  # the (1 + n) / (EMA_WARMUP + n) cap of the EMA decay


def swa_first_epoch(swa_start: float, epoch_num: int) -> int:
    """The first (0-based) epoch whose end-of-epoch weights enter the SWA average (at most the last)."""
    return min(epoch_num - 1, math.floor(swa_start * epoch_num))


class WeightAverage:
    """An averaged copy of ``model`` (``self.module``: the same class, the same state-dict keys).

    Args:
        model: the trained model (copied once; the copy never receives gradients).
        kind: ``"ema"`` or ``"swa"``. decay: the EMA decay per update (its cap).
    """

    def __init__(self, model: torch.nn.Module, kind: str, decay: float = 0.999):
        if kind not in ("ema", "swa"):
            raise ValueError(f"weight_average must be 'ema' or 'swa' here, got {kind!r}")
        self.kind, self.decay = kind, decay
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.updates = 0  # how many weights have entered the average

    @property
    def ready(self) -> bool:
        """Whether the average holds any weights yet (before that, only the raw model can be evaluated)."""
        return self.updates > 0

    def weight_of_new(self) -> float:
        """The share the next update gives the current weights."""
        n = self.updates
        if n == 0:
            return 1.0
        if self.kind == "ema":
            return 1.0 - min(self.decay, (1 + n) / (EMA_WARMUP + n))
        return 1.0 / (n + 1)  # swa: the running uniform mean

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (EMA: buffers too; SWA: buffers are copied and
        the BatchNorm statistics are recomputed by the caller, ``recompute_batchnorm``)."""
        w = self.weight_of_new()
        for avg, cur in zip(self.module.parameters(), model.parameters()):
            if w == 1.0:
                avg.copy_(cur)
            else:
                avg.lerp_(cur.detach(), w)
        for avg, cur in zip(self.module.buffers(), model.buffers()):
            if self.kind == "ema" and w != 1.0 and avg.is_floating_point():
                avg.lerp_(cur, w)
            else:
                avg.copy_(cur)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"kind": self.kind, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"the stored average is {state.get('kind')!r}, this run's weight_average is {self.kind!r}")
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def make_average(settings: AverageSettings, model: torch.nn.Module) -> WeightAverage | None:
    """The run's averaged copy, or None for ``weight_average="none"``."""
    if settings.kind == "none":
        return None
    return WeightAverage(model, settings.kind, settings.ema_decay)


BATCHNORMS = (torch.nn.modules.batchnorm._BatchNorm,)


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device,
                        precision: str = "fp32") -> bool:
    """Replace every BatchNorm layer's running statistics by those of ``model`` over the samples ``x``.

    One pass in order (no random draws), only the BatchNorm layers in training mode, each batch
    weighing the same (``momentum=None``: a cumulative mean); the last partial batch is dropped
    as in training. Layers the forward pass does not reach (the training-only FR-Head) keep their
    statistics. Returns False (and changes nothing) when the model has no BatchNorm layer.

    Args:
        x: the training inputs ``(N, C, T, V, M)``, where they live (host or device).
    """
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not norms:
        return False
    was_training = model.training
    momenta = [m.momentum for m in norms]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with autocast(device, precision):
            for idx in batches(len(x), batch_size, shuffle=False, drop_last=True):
                model(x[idx.to(x.device)].to(device, non_blocking=True))
    finally:
        for m, momentum, old in zip(norms, momenta, before):
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # not on the forward path
                m.load_state_dict(old)
        model.train(was_training)
    return True
