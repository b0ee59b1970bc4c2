"""Where one training (or evaluation) step's time goes, against this machine's conv ceiling (not a test).

    python -m experiments.bench.breakdown                          # ST-GCN, fast formulation, batch 128
    python -m experiments.bench.breakdown --backbone shiftgcn --batch 32
    python -m experiments.bench.breakdown --formulation plain --kind eval --batch 256

``experiments.bench.benchmark`` says how fast a step is; this says why. It times the ceiling
convolution in this process (the benchmark's: ST-GCN's 256 -> 256, 9 x 1 convolution,
forward + backward, best of two layouts), then profiles a few steps with
``torch.profiler`` and splits each step into

* every convolution shape (forward and backward; ``fwd``: the forward pass's share of its time; FLOPs
  from the recorded shapes, strides and gradient masks, 2 per multiply-add), with its
  GFLOP/s and % of the ceiling;
* matrix products (``mm``, ``bmm``, ``addmm``, ``baddbmm``: einsum, matmul and linear layers), with
  their FLOPs;
* BatchNorm (forward and backward);
* everything else: elementwise passes, copies, the loss, the optimiser, autograd.

It ends with two bounds: the % of ceiling the step would reach if every convolution and
matrix product ran at the ceiling's speed and everything else took what it takes now, once with the FLOPs this
formulation executes and once with the model's FLOPs (what the plain formulation
executes). Profiling adds some overhead; the unprofiled step time is printed for comparison.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import torch
from torch.profiler import ProfilerActivity, profile

from experiments.bench.workloads import (Spec, ceiling_step, conv_flops, count_flops, cpu_description, eval_step,
                                         train_step)
from experiments.runtime import applied_allocator, ensure_allocator_settings

CONV_FORWARD, CONV_BACKWARD = "aten::convolution", "aten::convolution_backward"
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
CEILING_SIGNATURE = (256, 256, 9, 1, 1, 1, 13, 25)  # in, out, kh, kw, stride, groups, in H, in W


@dataclass
class ConvGroup:
    """All calls of one convolution shape within the profiled steps."""

    signature: tuple[int, ...]       # in, out, kh, kw, stride (H), groups, input H, input W
    forward_us: float = 0.0
    backward_us: float = 0.0
    flops: int = 0

    def label(self) -> str:
        ci, co, kh, kw, s, g, h, w = self.signature
        text = f"{ci}->{co} {kh}x{kw}" + (f" s{s}" if s != 1 else "") + (f" g{g}" if g != 1 else "")
        text += f" on {h}x{w}"
        return text + ("  (ceiling shape)" if self.signature == CEILING_SIGNATURE else "")


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def conv_event_flops(name: str, shapes: list, args: list) -> tuple[tuple[int, ...], int]:
    """(signature, FLOPs) of one ``aten::convolution`` / ``aten::convolution_backward``
    profiler event, from its recorded input shapes and concrete arguments (2-d convolutions)."""
    if name == CONV_FORWARD:
        (n, ci, h, w), (co, _, kh, kw) = shapes[0], shapes[1]
        stride, pad, dil, transposed, groups = args[3], args[4], args[5], args[6], args[8]
        out = n * co * _out_size(h, kh, stride[0], pad[0], dil[0]) * _out_size(w, kw, stride[1], pad[1], dil[1])
        flops = conv_flops(out, shapes[1])
    elif name == CONV_BACKWARD:
        grad_out, (n, ci, h, w), (co, _, kh, kw) = shapes[0], shapes[1], shapes[2]
        stride, transposed, groups, mask = args[4], args[7], args[9], args[10]
        flops = conv_flops(math.prod(grad_out), shapes[2], int(mask[0]) + int(mask[1]))  # input, weight gradients
    else:
        raise ValueError(f"not a convolution event: {name}")
    if transposed:
        raise ValueError("transposed convolutions are not counted")
    return (ci, co, kh, kw, stride[0], groups, h, w), flops


def matmul_event_flops(name: str, shapes: list) -> int:
    """FLOPs (2 per multiply-add) of one ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` event."""
    a, b = shapes[1:3] if name in ("aten::addmm", "aten::baddbmm") else shapes[0:2]  # addmm: (bias, a, b, beta, alpha)
    if name in ("aten::mm", "aten::addmm"):
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]


@dataclass
class StepParts:
    """The profiled time (microseconds, over all profiled steps) of a step's parts."""

    convs: dict[tuple, ConvGroup] = field(default_factory=dict)
    matmul_us: float = 0.0
    matmul_flops: int = 0
    batch_norm_us: float = 0.0


def _has_ancestor(event, names: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if any(k in parent.name for k in names):
            return True
        parent = parent.cpu_parent
    return False


def split_events(events) -> StepParts:
    """Convolutions by signature, matrix products and BatchNorm, counting only outermost
    events so that nothing is counted twice."""
    parts = StepParts()
    for e in events:
        if e.name in (CONV_FORWARD, CONV_BACKWARD):
            if _has_ancestor(e, ("convolution",)):
                continue
            sig, flops = conv_event_flops(e.name, e.input_shapes, e.concrete_inputs)
            group = parts.convs.setdefault(sig, ConvGroup(sig))
            group.flops += flops
            if e.name == CONV_FORWARD:
                group.forward_us += e.cpu_time_total
            else:
                group.backward_us += e.cpu_time_total
        elif e.name in MATMULS:
            if not _has_ancestor(e, ("convolution", *MATMULS)):
                parts.matmul_us += e.cpu_time_total
                parts.matmul_flops += matmul_event_flops(e.name, e.input_shapes)
        elif "batch_norm" in e.name and not _has_ancestor(e, ("batch_norm", "convolution")):
            parts.batch_norm_us += e.cpu_time_total
    return parts


def ceiling_gflops(device: torch.device, tiny: bool, repeats: int = 3) -> float:
    """The benchmark's ceiling, measured here: the best layout's best time."""
    run, layouts, flops = ceiling_step(device, tiny)
    best = float("inf")
    for fmt in layouts:
        run(fmt)
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(fmt)
            best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def _timed(fn, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn``."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def report(spec: Spec, steps: int = 3, top: int = 14) -> list[str]:
    """Profile ``steps`` steps of the configuration; the printed lines."""
    device = torch.device(spec.device)
    make = train_step if spec.kind == "train" else eval_step
    fn = make(spec, device)
    exec_flops = count_flops(fn)                     # per step, this formulation
    model_flops = count_flops(make(replace(spec, formulation="plain"), device))
    ceiling = ceiling_gflops(device, spec.tiny)
    fn()
    plain = _timed(fn, steps)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        walls = _timed(fn, steps)
    parts = split_events(prof.events())
    convs = parts.convs
    step_ms = sum(walls) / steps * 1e3
    conv_ms = sum(g.forward_us + g.backward_us for g in convs.values()) / steps / 1e3
    conv_flops = sum(g.flops for g in convs.values()) / steps
    mm_ms, mm_flops = parts.matmul_us / steps / 1e3, parts.matmul_flops / steps
    bn_ms = parts.batch_norm_us / steps / 1e3
    rest_ms = step_ms - conv_ms - mm_ms - bn_ms
    both = "forward + backward" if spec.kind == "train" else "forward"

    def pct_ceil(flops: float, ms: float) -> str:
        return f"{flops / (ms / 1e3) / 1e9 / ceiling * 100:5.1f}%" if ms > 0 else "    -"

    allocator = applied_allocator() or "none applied"
    lines = [f"{spec.name().split(' malloc=')[0]} on {cpu_description()} (allocator: {allocator}), {torch.get_num_threads()} threads: "
             f"{step_ms:.0f} ms per profiled step, {statistics.median(plain) * 1e3:.0f} ms unprofiled "
             f"(median of {steps})",
             f"  conv ceiling (best layout) in this process: {ceiling:.1f} GFLOP/s; "
             f"model {model_flops / spec.batch / 1e9:.3f} GF/sample, this formulation executes "
             f"{exec_flops / spec.batch / 1e9:.3f}; whole step: {pct_ceil(model_flops, step_ms).strip()} of ceiling",
             f"  {'part of the step':50s} {'ms/step':>8s} {'share':>6s} {'fwd':>4s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'% ceil':>7s}"]

    def row(label: str, ms: float, flops: float | None, fwd: str = "") -> str:
        gf = f" {flops / 1e9:7.1f} {flops / (ms / 1e3) / 1e9:8.1f} {pct_ceil(flops, ms):>7s}" if flops else ""
        return f"  {label:50s} {ms:8.1f} {ms / step_ms * 100:5.1f}% {fwd:>4s}{gf}".rstrip()

    lines.append(row(f"convolutions, {both}", conv_ms, conv_flops))
    ranked = sorted(convs.values(), key=lambda g: -(g.forward_us + g.backward_us))
    for g in ranked[:top]:
        ms = (g.forward_us + g.backward_us) / steps / 1e3
        fwd_share = g.forward_us / max(g.forward_us + g.backward_us, 1e-9) * 100
        lines.append(row(f"  {g.label()}", ms, g.flops / steps, f"{fwd_share:.0f}%"))
    if len(ranked) > top:
        rest = ranked[top:]
        ms = sum(g.forward_us + g.backward_us for g in rest) / steps / 1e3
        lines.append(row(f"  {len(rest)} more shapes", ms, sum(g.flops for g in rest) / steps))
    lines.append(row(f"matrix products, {both}", mm_ms, mm_flops))
    lines.append(row(f"BatchNorm, {both}", bn_ms, None))
    lines.append(row("everything else (elementwise, copies" + (", optimiser)" if spec.kind == "train" else ")"),
                     rest_ms, None))
    ceiling_share = sum(g.flops for g in convs.values() if g.signature == CEILING_SIGNATURE) / steps / model_flops
    lines.append(f"  the ceiling-shaped convolution: {ceiling_share * 100:.0f}% of the model's FLOPs")
    other_ms = bn_ms + rest_ms
    for what, flops in (("executed", conv_flops + mm_flops), ("model", model_flops)):
        ideal_ms = flops / (ceiling * 1e9) * 1e3 + other_ms
        lines.append(f"  bound: convolutions and products at the ceiling's speed ({what} FLOPs), the rest as now: "
                     f"{ideal_ms:.0f} ms per step, {pct_ceil(model_flops, ideal_ms).strip()} of ceiling")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="stgcn", choices=["stgcn", "shiftgcn"])
    p.add_argument("--formulation", default="fast", choices=["fast", "plain"])
    p.add_argument("--kind", default="train", choices=["train", "eval"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (and as many unprofiled)")
    p.add_argument("--top", type=int, default=14, help="convolution shapes listed one by one")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test: tiny widths
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        raise SystemExit("error: --batch and --steps must be at least 1")
    if argv is None:
        ensure_allocator_settings()  # the command line runs under the project's allocator, as main.py does
    spec = Spec(args.kind, args.backbone, args.formulation, args.batch, tiny=args.tiny)
    print("\n".join(report(spec, args.steps, args.top)))


if __name__ == "__main__":
    sys.exit(main())
