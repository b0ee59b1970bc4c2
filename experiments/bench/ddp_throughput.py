"""Training samples/s of a data-parallel launch on this CPU: 1 vs 2 processes with gloo (not a test).

    python -m experiments.bench.ddp_throughput
    python -m experiments.bench.ddp_throughput --tiny --epochs 1     # the smoke test's size

Side by side in one run, on the same synthetic resident training tensor and the same global batch:
one process with one thread, one process with all the threads (``--threads``), and a launch of two
processes with one thread each (``experiments/train/distributed.py``: sharded forward, gathered KL
loss, one gradient all-reduce per step). Every configuration runs ``train_epoch``, the loop every
track uses; the first epoch is a warm-up and not timed. Ratios compare like with like only within
one run on one CPU; gloo on CPU cores says nothing about NCCL on GPUs, where each process has a
device of its own.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from experiments.bench.workloads import CLASSES, JOINTS, PERSONS, TEXT_DIM, Spec, cpu_description, frames_of, make_model


def timed_epochs(spec: Spec, samples: int, epochs: int) -> float:
    """Seconds of ``epochs`` training epochs after one warm-up epoch (this process's part of a launch)."""
    from data.loading import Subset
    from experiments.train import distributed
    from experiments.train.steps import train_epoch
    from module.losses import get_loss

    torch.manual_seed(0)
    model = make_model(spec, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, frames_of(spec), JOINTS, PERSONS, generator=g)
    y = torch.randint(0, CLASSES, (samples,), generator=g)
    text = torch.randn(CLASSES, TEXT_DIM, generator=g)
    kl = get_loss("kl")

    def objective(m, xb, yb, generator):
        emb = distributed.gather(m(distributed.shard(xb)))
        return kl(emb, text[yb], yb, m.scale())

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data, order = Subset(x, y, list(range(CLASSES))), torch.Generator().manual_seed(1)

    def epoch() -> None:
        train_epoch(model, data, opt, objective, batch_size=spec.batch, generator=order, device=torch.device("cpu"),
                    desc="bench")

    epoch()
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return time.perf_counter() - t0


def rank_worker(rank: int, size: int, port: int, spec: Spec, samples: int, epochs: int, out: str) -> None:
    from experiments.train import distributed

    distributed.join_local(rank, size, port)
    seconds = timed_epochs(spec, samples, epochs)
    distributed.shutdown()
    if rank == 0:
        Path(out).write_text(str(seconds))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_seconds(size: int, spec: Spec, samples: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        mp.spawn(rank_worker, args=(size, free_port(), spec, samples, epochs, str(out)), nprocs=size, join=True)
        return float(out.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="stgcn", choices=("stgcn", "shiftgcn"))
    p.add_argument("--batch", type=int, default=32, help="the global batch")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the one-process row")
    p.add_argument("--tiny", action="store_true", help="small widths and frames (the smoke test)")
    a = p.parse_args(argv)
    spec, samples = Spec("train", backbone=a.backbone, batch=a.batch, tiny=a.tiny), a.batch * a.steps
    rows = []
    for label, threads, procs in (("1 process, 1 thread", 1, 1), (f"1 process, {a.threads} threads", a.threads, 1),
                                  ("2 processes (gloo), 1 thread each", 1, 2)):
        if procs == 1:
            torch.set_num_threads(threads)
            seconds = timed_epochs(spec, samples, a.epochs)
        else:
            seconds = launch_seconds(procs, spec, samples, a.epochs)
        rows.append({"config": label, "samples_per_s": a.epochs * samples / seconds})
    base = rows[0]["samples_per_s"]
    print(f"{a.backbone}, global batch {a.batch}, {samples} samples/epoch, {a.epochs} timed epochs; {cpu_description()}")
    print("| configuration | samples/s | ratio to 1 process, 1 thread |\n|---|---:|---:|")
    for r in rows:
        r["ratio"] = r["samples_per_s"] / base
        print(f"| {r['config']} | {r['samples_per_s']:.1f} | {r['ratio']:.2f}x |")
    print("(gloo on CPU cores; not representative of NCCL on GPUs)")
    return rows


if __name__ == "__main__":
    main()
