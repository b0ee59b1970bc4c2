"""Training / evaluation speed of the backbones against this machine's own ceiling (not a test).

    python -m experiments.bench.benchmark                     # the full table (about 15 minutes on 2 cores)
    python -m experiments.bench.benchmark --quick             # fewer rows and rounds (about 4 minutes)
    python -m experiments.bench.benchmark --big               # + Shift-GCN at batch 128 (needs ~30 GiB of memory)
    python -m experiments.bench.benchmark --json bench.json   # also write the rows as JSON
    python -m experiments.bench.benchmark --device cuda --epoch-samples 37000   # on a GPU: + epoch times

Every configuration runs in its own worker process (so each has its own peak RSS and its
own allocator environment), and the workers take turns: one timed step of each per round,
so all rows of a group see the same machine load and their ratios are fair on a shared
machine. Each group also times the ceiling: forward + backward of ST-GCN's largest
convolution (256 -> 256 channels, 9 x 1, at the last block's shape for 128 two-person
samples), the best of the NCHW and channels-last layouts. ``% ceiling`` is a row's
achieved GFLOP/s over that figure.

What is counted: ``torch.utils.flop_counter.FlopCounterMode`` over one training step
(forward + backward; evaluation: forward only) of the *plain* formulation, i.e.
every convolution and matrix product including the dense adjacency products, 2 FLOPs
per multiply-add; elementwise ops, BatchNorm and the optimiser are not counted. Every
row of a backbone uses that same model count, so GFLOP/s is proportional to samples/s
(as MFU figures are); ``exec GF`` is what the row's own formulation executes.

Rows: ``formulation`` ``plain`` (the straightforward one; Shift-GCN with the
reference shift op) or ``fast``; ``malloc``: the allocator (``experiments/runtime.py``):
``mimalloc`` (what ``main.py`` applies when installed), ``glibc-keep`` (glibc settings that
keep freed memory; the fallback) or ``system`` (glibc's defaults); ``bf16``:
``torch.autocast`` to bfloat16 (changes the arithmetic; shown for information only).
``x ref`` is a row's speed over the plain row (same allocator); ``x before`` over the
plain formulation with glibc's default allocator, i.e. the state before the fast
paths and the allocator setting (ST-GCN batch 128 and Shift-GCN batch 32 of the full table).
Samples are NTU-shaped random tensors (3 x T x 25 joints x 2 persons; T = 50 for
ST-GCN, 64 for Shift-GCN as in Setting 2) with the paper's widths, the 768-d head,
the KL loss and SGD with momentum; times are medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from experiments.bench.workloads import (CLASSES, JOINTS, PERSONS, TEXT_DIM, Spec, ceiling_step, count_flops, cpu_description, eval_step, frames_of,
                                         make_model, rss_mib, sync, train_step)
from experiments.runtime import allocator_env, default_allocator, mimalloc_loaded, without_allocator

EXTRA_MALLOC = ("MALLOC_MMAP_THRESHOLD_", "THP_MEM_ALLOC_ENABLE", "MALLOC_ARENA_MAX")


def worker(spec: Spec) -> None:
    """Build the configuration, report its FLOPs, then run one timed step per 'step' line."""
    device = torch.device(spec.device)
    info: dict = {"threads": torch.get_num_threads(), "mimalloc_loaded": mimalloc_loaded()}
    if spec.kind == "ceiling":
        run, layouts, flops = ceiling_step(device, spec.tiny)
        for fmt in layouts:
            run(fmt)

        def step():  # time both layouts; the faster one is the ceiling
            times = []
            for fmt in layouts:
                sync(device)
                t0 = time.perf_counter()
                run(fmt)
                sync(device)
                times.append(time.perf_counter() - t0)
            return min(times)

        info.update(flops_per_step=flops, samples=1)
    elif spec.kind == "epoch":
        step, info_epoch = _epoch_runner(spec, device)
        info.update(info_epoch)
    else:
        fn = (train_step if spec.kind == "train" else eval_step)(spec, device)
        info["exec_flops"] = count_flops(fn) / spec.batch  # the model count: the plain row's
        info["samples"] = spec.batch
        fn()  # warm-up (the counted step was the first)

        def step():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            return time.perf_counter() - t0

    info["rss_ready_mib"] = rss_mib()
    _send(info)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            _send({"seconds": step()})
        elif cmd == "done":
            _send({"peak_rss_mib": rss_mib()})
            return


def _epoch_runner(spec: Spec, device: torch.device):
    """One training epoch over a resident random tensor of ``epoch_samples`` samples, through
    the project's own loop (``experiments.train.train_epoch``)."""
    from data.loading import Subset
    from experiments.train.steps import autocast, place_subset, train_epoch
    from module.losses import get_loss

    torch.manual_seed(0)
    model = make_model(spec, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    n = spec.epoch_samples
    data = Subset(torch.randn(n, 3, frames_of(spec), JOINTS, PERSONS), torch.randint(0, CLASSES, (n,)),
                  list(range(CLASSES)))
    data = place_subset(data, device, "auto")
    text = torch.randn(CLASSES, TEXT_DIM, device=device)
    gen = torch.Generator().manual_seed(0)
    loss_fn, precision = get_loss("kl"), "bf16" if spec.bf16 else "fp32"

    def objective(model, x, y, generator):  # the zero-shot objective without augmentation
        with autocast(device, precision):
            emb = model(x)
        return loss_fn(emb.float(), text[y], y, model.scale())

    def step():
        sync(device)
        t0 = time.perf_counter()
        train_epoch(model, data, opt, objective, batch_size=spec.batch, generator=gen, device=device, desc="bench")
        sync(device)
        return time.perf_counter() - t0

    return step, {"samples": n - n % spec.batch, "resident": str(data.x.device)}


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- parent side

@dataclass
class Row:
    spec: Spec
    info: dict = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def samples_per_s(self) -> float:
        return self.info["samples"] / self.median


class Worker:
    def __init__(self, spec: Spec):
        env = {k: v for k, v in without_allocator(dict(os.environ)).items() if k not in EXTRA_MALLOC}
        if spec.malloc.startswith("env:"):
            env.update(dict(kv.split("=", 1) for kv in spec.malloc[4:].split(",")))
        else:
            env.update(allocator_env(spec.malloc))
        self.row = Row(spec)
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.bench.benchmark", "--worker", json.dumps(asdict(spec))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.row.info = self._recv()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.row.spec.name()!r} died (exit code {self.proc.wait()})")
        return json.loads(line)

    def step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.row.seconds.append(self._recv()["seconds"])

    def finish(self) -> Row:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        self.row.peak_rss_mib = self._recv()["peak_rss_mib"]
        self.proc.wait()
        return self.row


def run_group(specs: list[Spec], rounds: int, log) -> list[Row]:
    """Start every worker of a group, then time one step of each per round, in turn."""
    workers = []
    try:
        for s in specs:
            log(f"  starting {s.name()}")
            workers.append(Worker(s))
        for r in range(rounds):
            for w in workers:
                w.step()
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{w.row.seconds[-1]:.2f}s" for w in workers))
        return [w.finish() for w in workers]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()


def groups(args) -> list[tuple[str, list[Spec]]]:
    dev, tiny = args.device, args.tiny
    ceil = Spec("ceiling", device=dev, tiny=tiny)

    default = default_allocator()

    def s(kind, backbone, formulation, batch, malloc=default, bf16=False):
        return Spec(kind, backbone, formulation, 4 if tiny else batch, malloc, bf16, dev, tiny)

    out = []
    for backbone in ("stgcn", "shiftgcn"):
        for batch in (32, 128):
            if backbone == "shiftgcn" and batch == 128 and not args.big:
                continue  # about 19 GiB for the plain formulation's worker at 64 frames x 2 persons
            rows = [s("train", backbone, "plain", batch), s("train", backbone, "fast", batch)]
            # "before this issue": the straightforward formulation under glibc's default allocator
            if (backbone, batch) in (("stgcn", 128), ("shiftgcn", 32)) and not args.quick and dev == "cpu":
                rows = [s("train", backbone, "plain", batch, "system"), rows[0],
                        s("train", backbone, "fast", batch, "system"), rows[1]]
                if default != "glibc-keep":  # the glibc setting, for its speed and memory
                    rows.append(s("train", backbone, "fast", batch, "glibc-keep"))
            if args.bf16 and batch == 32:
                rows.append(s("train", backbone, "fast", batch, bf16=True))
            out.append((f"{backbone} training, batch {batch}", [ceil, *rows]))
        out.append((f"{backbone} evaluation, batch 256",
                    [ceil, s("eval", backbone, "plain", 256), s("eval", backbone, "fast", 256)]))
    if args.epoch_samples:
        for backbone in ("stgcn", "shiftgcn"):
            out.append((f"{backbone} one epoch of {args.epoch_samples} resident samples, batch 128",
                        [Spec("epoch", backbone, "fast", 128, device=dev, tiny=tiny,
                              epoch_samples=args.epoch_samples, bf16=args.bf16)]))
    return out


def table(title: str, rows: list[Row]) -> list[str]:
    ceil = next((r for r in rows if r.spec.kind == "ceiling"), None)
    ceil_gfs = ceil.info["flops_per_step"] / ceil.median / 1e9 if ceil else None
    lines = [title]
    if ceil:
        lines.append(f"  {'conv ceiling (best layout)':44s} {ceil_gfs:8.1f} GFLOP/s   ({ceil.median * 1e3:.0f} ms per step)")
    ref = {}  # the plain row: the speed baseline, and its FLOP count is every row's model count
    before = {}  # the plain formulation with glibc's default allocator, where the group has it
    for r in rows:
        if r.spec.kind in ("train", "eval") and r.spec.formulation == "plain":
            (before if r.spec.malloc == "system" else ref)[r.spec.backbone] = r
    for r in rows:
        if r.spec.backbone in ref:
            r.info["model_flops"] = ref[r.spec.backbone].info["exec_flops"]
    no_plain_row = False
    lines.append(f"  {'configuration':44s} {'samples/s':>9s} {'x ref':>6s} {'x before':>8s} {'GFLOP/s':>8s} {'% ceil':>7s} "
                 f"{'model GF':>8s} {'exec GF':>8s} {'peak RSS':>9s}")
    for r in rows:
        if r.spec.kind == "ceiling":
            continue
        if r.spec.kind == "epoch":
            lines.append(f"  {r.spec.name():44s} epoch {r.median:.1f} s = {r.samples_per_s:.0f} samples/s "
                         f"(data resident on {r.info['resident']})")
            continue
        sps = r.samples_per_s
        if "model_flops" not in r.info:  # no plain row to take the model count from
            r.info["model_flops"] = r.info["exec_flops"]
            no_plain_row = True
        gfs = r.info["model_flops"] * sps / 1e9
        base = ref.get(r.spec.backbone)
        ratio = sps / base.samples_per_s if base else float("nan")
        old = before.get(r.spec.backbone)
        vs_before = f"{sps / old.samples_per_s:8.2f}" if old else f"{'-':>8s}"
        pct = f"{100 * gfs / ceil_gfs:6.1f}%" if ceil_gfs else "   n/a"
        lines.append(f"  {r.spec.name():44s} {sps:9.2f} {ratio:6.2f} {vs_before} {gfs:8.1f} {pct:>7s} "
                     f"{r.info['model_flops'] / 1e9:8.3f} {r.info['exec_flops'] / 1e9:8.3f} "
                     f"{r.peak_rss_mib / 1024:7.2f} GiB")
    if no_plain_row:
        lines.append("  (no plain row for some rows: their GFLOP/s and % ceil count the FLOPs they execute, "
                     "not the model's)")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, no allocator rows")
    p.add_argument("--big", action="store_true",
                   help="add Shift-GCN at batch 128 (its plain worker needs about 19 GiB of memory)")
    p.add_argument("--rounds", type=int, default=0, help="timed steps per configuration (default 5, quick 3)")
    p.add_argument("--json", default="", help="also write the rows to this file")
    p.add_argument("--bf16", action="store_true", help="add bf16-autocast rows (not the same arithmetic)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epoch-samples", type=int, default=0,
                   help="also time one epoch over this many resident random samples (NTU-60: about 37000)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test: tiny widths
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--malloc-trial", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Spec(**json.loads(args.worker)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    rounds = args.rounds or (3 if args.quick else 5)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load0 = os.getloadavg()
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_description()
    header = (f"torch {torch.__version__}, {args.device} ({dev_name}), {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs; median of {rounds} interleaved rounds; "
              f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    log(header)
    results, out_lines = [], [header]
    todo = groups(args)
    if args.malloc_trial:  # compare allocator environments on ST-GCN at batch 128
        todo = [("malloc trial", [Spec("ceiling"), *[Spec("train", "stgcn", "fast", 128, m) for m in args.malloc_trial]])]
    for title, specs in todo:
        log(title)
        rows = run_group(specs, rounds, log)
        lines = table(title, rows)
        log("\n".join(lines))
        out_lines += lines
        results += [{"group": title, "name": r.spec.name(), **asdict(r.spec), **r.info, "seconds": r.seconds,
                     "samples_per_s": r.samples_per_s, "peak_rss_mib": r.peak_rss_mib} for r in rows]
    load1 = os.getloadavg()
    out_lines.append(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("\n".join(out_lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "load_start": load0, "load_end": load1, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
