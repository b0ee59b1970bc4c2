"""Benchmark of the temporal-shift op and of a Shift-GCN training step (not a test).

    python -m experiments.bench.shift_op                       # CPU, reference op
    python -m experiments.bench.shift_op --device cuda         # GPU: CUDA kernel vs reference, in one run

For every implementation: forward + backward of the op alone at the shapes of Shift-GCN's
temporal shifts (batch x persons, channels, frames, 25 joints), and training samples per
second of a full step (Shift-GCN + projection head, the paper's KL loss, backward, SGD with
momentum) at the paper's widths and 64 frames. Runs with the same allocator settings as
training (``experiments/runtime.py``). Timings are wall-clock medians over ``--steps``
repetitions after ``--warmup`` untimed ones.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from experiments.runtime import ensure_allocator_settings
from module import build_backbone
from module.head import SkeletonTextModel
from module.losses import get_loss
from module.shift import temporal_shift


def _timed(fn: Callable[[], None], device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """Median wall-clock seconds of ``fn`` (synchronising the GPU around each call) and the median
    process CPU seconds (all threads; on a shared machine less affected by other load)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_op(impl: str, device: torch.device, batch: int, frames: int, steps: int, warmup: int) -> list[tuple]:
    """(shape, stride, ms) of forward + backward (input and position gradients) per op shape."""
    rows = []
    for channels, t, stride in ((64, frames, 1), (128, frames, 2), (256, frames // 2, 2), (256, frames // 4, 1)):
        x = torch.randn(batch, channels, t, 25, device=device, requires_grad=True)
        xpos = torch.zeros(channels, device=device).uniform_(-1e-8, 1e-8).requires_grad_(True)
        ypos = torch.zeros(channels, device=device).uniform_(-1, 1).requires_grad_(True)
        g = torch.randn(batch, channels, t // stride, 25, device=device)

        def step():
            x.grad = xpos.grad = ypos.grad = None
            temporal_shift(x, xpos, ypos, stride, impl=impl).backward(g)

        rows.append(((batch, channels, t, 25), stride, 1000 * _timed(step, device, steps, warmup)[0]))
    return rows


def bench_train_step(impl: str, device: torch.device, batch: int, persons: int, frames: int, steps: int,
                     warmup: int, text_dim: int = 768) -> tuple[float, float]:
    """Training samples per second of Shift-GCN (paper widths) + head + KL loss + SGD, and the
    process CPU seconds per step."""
    torch.manual_seed(0)
    model = SkeletonTextModel(build_backbone("shiftgcn", num_person=persons, shift_impl=impl), text_dim).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = get_loss("kl")
    x = torch.randn(batch, 3, frames, 25, persons, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    text = torch.randn(10, text_dim, device=device)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), text[labels], labels, model.scale()).backward()
        opt.step()

    wall, cpu = _timed(step, device, steps, warmup)
    return batch / wall, cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--impl", default=None, choices=["ref", "cuda", "both"],
                   help="default: ref on cpu, both on cuda")
    p.add_argument("--batch", type=int, default=16, help="samples per training step")
    p.add_argument("--persons", type=int, default=2, help="M (NTU arrays: 2)")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--skip-op", action="store_true", help="only the training step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    impls = {"ref": ["ref"], "cuda": ["cuda"], "both": ["cuda", "ref"], None: None}[args.impl]
    impls = impls or (["cuda", "ref"] if device.type == "cuda" else ["ref"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; batch {args.batch} x {args.persons} persons, "
          f"{args.frames} frames, median of {args.steps} after {args.warmup} warm-up")
    for impl in impls:
        if not args.skip_op:
            for shape, stride, ms in bench_op(impl, device, args.batch * args.persons, args.frames, args.steps,
                                              args.warmup):
                print(f"  op {impl:4s} fwd+bwd  x{tuple(shape)} stride {stride}: {ms:8.2f} ms")
        sps, cpu = bench_train_step(impl, device, args.batch, args.persons, args.frames, args.steps, args.warmup)
        print(f"Shift-GCN training step, temporal shift impl={impl}: {sps:.2f} samples/s "
              f"({1000 * args.batch / sps:.0f} ms per step of {args.batch}; {cpu:.1f} CPU-s per step)")


if __name__ == "__main__":
    ensure_allocator_settings()
    main()
