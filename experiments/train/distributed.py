"""Data-parallel training under PyTorch's launcher: ``torchrun --nproc_per_node=N main.py with ...``.

A plain ``python main.py`` run is a world of one process and every function here is then the
identity (or a no-op). Under ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``):

* every rank holds the whole in-memory dataset, is seeded alike (``seed``), and so draws the same
  batch order and augments each global batch identically; rank ``r`` then runs the forward pass
  on its contiguous shard of the batch (``shard``). The global batch (``batch_size``) keeps its
  meaning and must divide by the number of processes;
* the model's outputs are gathered back into the global batch (``gather``, differentiable), so a
  batch-contrastive loss (PGFA's KL between skeleton and text similarities) sees the same batch
  as a one-process run;
* after the backward pass the gradients are averaged over the ranks with one all-reduce
  (``sync_step``), which with the gathered loss gives exactly the one-process gradient, and rank
  0's BatchNorm running statistics are broadcast (as ``DistributedDataParallel`` does). The
  DDP wrapper itself is not used: the temperature, FR-Head and the part heads are used by the
  loss outside the model's ``forward``, which DDP's reducer does not allow for;
* BatchNorm normalises each rank's shard with its own batch statistics unless
  ``sync_batchnorm=True`` (CUDA only: torch's ``SyncBatchNorm`` has no CPU kernel);
* per-epoch evaluation embeds each rank's share of the subset and gathers the outputs
  (``embed(..., shard=True)``), so selection is the same on every rank;
* only rank 0 records the Sacred run (the observers are attached there only), writes
  ``best.pt`` / ``last.pt`` and scores the unseen classes after training; the other ranks
  end once training is over. ``resume=<folder>`` works as for one process (every rank reads
  the folder's ``last.pt``: on several machines it must be on a shared file system).

Backends: gloo on the CPU, NCCL on CUDA with one GPU per process (``cuda:LOCAL_RANK``).
A collective that waits longer than ``dist_timeout`` seconds fails the run instead of hanging.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

# Tracks that shard their training batches; the others refuse a multi-process launch.
DDP_TRACKS = ("main", "sota", "one_shot", "supervised", "linear_eval")


@dataclass(frozen=True)
class World:
    """This process's place in a launch: rank, number of processes, rank on this machine."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """The launch this process belongs to, from the variables torchrun sets (a plain run: one process)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them): {exc}") from None


def is_main() -> bool:
    return world().main


def check_launch(cfg: dict) -> None:
    """Refuse, before any work, what a multi-process launch cannot honour."""
    w = world()
    if not w.active:
        return
    mode = cfg["train_mode"]
    if mode not in DDP_TRACKS:
        raise ValueError(f"train_mode={mode!r} does not run under torchrun; launch it as one process "
                         f"(multi-process tracks: {', '.join(DDP_TRACKS)})")
    if cfg.get("selection") == "folds":
        raise ValueError("selection='folds' does not run under torchrun; launch it as one process")
    if cfg.get("aggregation"):
        raise ValueError("aggregation=True (SkeletonX) draws partners from the whole training set per sample and "
                         "does not run under torchrun; launch it as one process")
    bs = cfg.get("batch_size")
    if isinstance(bs, int) and bs % w.size:
        raise ValueError(f"batch_size={bs} is the global batch and must divide by the {w.size} processes "
                         f"(e.g. batch_size={bs - bs % w.size or w.size})")
    if cfg.get("sync_batchnorm") and cfg.get("device") == "cpu":
        raise ValueError("sync_batchnorm=True needs CUDA devices: torch's SyncBatchNorm has no CPU kernel")


def setup(cfg: dict) -> World:
    """Join the launch's process group (once; a plain run: nothing). gloo on the CPU, NCCL with CUDA."""
    import torch
    import torch.distributed as dist

    w = world()
    if not w.active or dist.is_initialized():
        return w
    check_launch(cfg)
    cuda = cfg.get("device", "auto") != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=float(cfg.get("dist_timeout", 600))))
    return w


def join_local(rank: int, size: int, port: int, timeout: float = 600) -> World:
    """Make this process rank ``rank`` of a ``size``-process launch on this machine, as torchrun would
    (one thread each; a process started by ``torch.multiprocessing.spawn``: the tests, the benchmark)."""
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return setup({"device": "cpu", "train_mode": "main", "dist_timeout": timeout})


def rank_device(device):
    """``cuda`` becomes ``cuda:LOCAL_RANK`` in a launch (one GPU per process)."""
    import torch

    w = world()
    if w.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", w.local_rank)
    return device


def _dist():
    import torch.distributed as dist

    return dist if world().active and dist.is_initialized() else None


def shard(*tensors):
    """This rank's contiguous share of each global-batch tensor (``None`` passes through)."""
    dist = _dist()
    if dist is None:
        return tensors if len(tensors) > 1 else tensors[0]
    w = world()
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        if len(t) % w.size:
            raise ValueError(f"a global batch of {len(t)} samples does not divide by the {w.size} processes")
        per = len(t) // w.size
        out.append(t[w.rank * per:(w.rank + 1) * per])
    return tuple(out) if len(out) > 1 else out[0]


def _gather_autograd():
    import torch
    import torch.distributed as dist

    class Gather(torch.autograd.Function):
        """All-gather along dim 0; the backward sums every rank's gradient of the whole batch and
        returns this rank's rows (what each rank's copy of the loss contributed to them)."""

        @staticmethod
        def forward(ctx, local):
            parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, local.contiguous())
            ctx.rows = (dist.get_rank() * len(local), (dist.get_rank() + 1) * len(local))
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            dist.all_reduce(grad)
            return grad[ctx.rows[0]:ctx.rows[1]]

    return Gather


def gather(local):
    """The global batch of a per-rank output (equal shards, rank order), differentiable."""
    if _dist() is None:
        return local
    return _gather_autograd().apply(local)


def sync_step(model, loss) -> float:
    """After ``loss.backward()``: average the gradients (and the loss, returned) over the ranks in
    one all-reduce, and give every rank rank 0's buffers (BatchNorm running statistics).

    Every rank computes the same global loss on the gathered outputs, so ``gather``'s backward
    hands each rank ``size`` times its rows' gradient; the average restores the one-process
    gradient. A parameter without a gradient (frozen, unused) is left without one."""
    import torch

    dist = _dist()
    if dist is None:
        return loss.item()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype if grads else
                                                                                    torch.float32)])
    dist.all_reduce(flat)
    flat /= world().size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    broadcast_buffers(model)
    return flat[-1].item()


def broadcast_buffers(model) -> None:
    """Rank 0's buffers (BatchNorm running mean / variance / batch count) on every rank."""
    dist = _dist()
    if dist is None:
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def broadcast_object(obj):
    """Rank 0's value of ``obj`` on every rank (e.g. the run folder, whose name holds rank 0's time)."""
    dist = _dist()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(compute, n: int):
    """The (n, ...) outputs of a subset split over the ranks: ``compute(start, stop)`` gives this
    rank's rows (float32, any device); returns every row, in order, on the CPU, on every rank."""
    import torch

    dist = _dist()
    if dist is None:
        return compute(0, n).cpu()
    w = world()
    per = math.ceil(n / w.size)
    start, stop = min(w.rank * per, n), min((w.rank + 1) * per, n)
    local = compute(start, stop)
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:max(0, min(per, n - r * per))] for r, p in enumerate(parts)]).cpu()


def maybe_sync_batchnorm(model, enabled: bool):
    """``sync_batchnorm=True`` in a CUDA launch: BatchNorm statistics over the global batch."""
    import torch

    if not enabled or not world().active:
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def shutdown() -> None:
    """Leave the process group (after a barrier, so no rank tears down a peer's last operation)."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
