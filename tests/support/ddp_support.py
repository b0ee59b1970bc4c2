"""Workers of the data-parallel tests: each is one rank of a gloo launch on this machine, started by
``torch.multiprocessing.spawn`` (a module-level function, so the spawned interpreter can import it)."""
from __future__ import annotations

from pathlib import Path

import torch


def join(rank: int, size: int, port: int) -> None:
    """Make this process rank ``rank`` of a ``size``-process launch, as torchrun would."""
    from experiments.train import distributed

    distributed.join_local(rank, size, port, timeout=60)


def leave(out: str, rank: int) -> None:
    """Leave the process group, then mark that this rank got past it (``ranks_that_left``): a rank
    that dies by a signal after its marker died in the interpreter's exit, not in the step under test."""
    from experiments.train import distributed

    distributed.shutdown()
    (Path(out) / f"left{rank}").touch()


def ranks_that_left(out: str, size: int) -> list[int]:
    return [r for r in range(size) if (Path(out) / f"left{r}").exists()]


class TinyTextModel(torch.nn.Module):
    """A linear skeleton encoder with a BatchNorm (its running statistics are buffers) and a
    learnable temperature, like ``SkeletonTextModel`` but small enough to compare gradients."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(6) if bn else torch.nn.Identity()
        self.proj = torch.nn.Linear(6, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.proj(self.norm(x))

    def scale(self):
        return self.logit_scale.exp()


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    text = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    return x, y, text


def train_steps(bn: bool, epochs: int = 1):
    """One model trained by ``train_epoch`` on ``problem()`` with PGFA's KL loss on the gathered batch
    (batch 8: two steps per epoch); returns the model."""
    from data.loading import Subset
    from experiments.train import distributed
    from experiments.train.steps import train_epoch
    from module.losses import get_loss

    torch.manual_seed(0)
    model = TinyTextModel(bn)
    x, y, text = problem()
    kl = get_loss("kl")

    def objective(m, xb, yb, generator):
        emb = distributed.gather(m(distributed.shard(xb)))
        return kl(emb, text[yb], yb, m.scale())

    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = [train_epoch(model, Subset(x, y, list(range(5))), opt, objective, batch_size=8, generator=gen,
                          device=torch.device("cpu")) for _ in range(epochs)]
    return model, losses


def train_worker(rank: int, size: int, port: int, bn: bool, out: str) -> None:
    join(rank, size, port)
    model, losses = train_steps(bn, epochs=2)
    torch.save({"state": model.state_dict(), "losses": losses}, Path(out) / f"rank{rank}.pt")
    leave(out, rank)


def gather_rows_worker(rank: int, size: int, port: int, n: int, out: str) -> None:
    """Each rank's ``gather_rows`` of an (n, 3) table whose row i is computed as i (in order)."""
    join(rank, size, port)
    from experiments.train import distributed

    rows = distributed.gather_rows(lambda start, stop: torch.arange(start, stop, dtype=torch.float32)[:, None]
                                   .expand(-1, 3).clone(), n)
    torch.save(rows, Path(out) / f"rows{rank}.pt")
    leave(out, rank)
