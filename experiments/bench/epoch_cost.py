"""Seconds per training epoch of the data-efficiency tracks, side by side in one process (not a test).

    python -m experiments.bench.epoch_cost --dataset utd_mhad --epochs 3
    python -m experiments.bench.epoch_cost --dataset demo --epochs 2 --samples-per-class 5
    python -m experiments.bench.epoch_cost --dataset utd_mhad --backbones

With ``--backbones``: the zero-shot track's epoch instead, with ST-GCN and CTR-GCN at this project's
small-data width (16) and CTR-GCN at the paper's (64).

Runs, one after the other on the same prepared data: the supervised track on N samples per
class without and with SkeletonX's aggregation, self-supervised pretraining (MoCo with one
SkeleMix view) on the protocol's training part, and the linear evaluation of a frozen encoder;
each for ``--epochs`` epochs, unrecorded (no observer), and prints the mean seconds of the
epochs after the first (the first pays one-time costs), the seconds per 1000 training
sequences, and that per-sequence cost's ratio to the plain supervised epoch's. Ratios compare like with like only within one run on one CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from experiments.bench.workloads import cpu_description


def configs(dataset: str, n: int) -> dict[str, dict]:
    """The tracks timed (name → config updates)."""
    return {
        f"supervised, {n}/class": {"train_mode": "supervised", "samples_per_class": n},
        f"supervised, {n}/class + aggregation": {"train_mode": "supervised", "samples_per_class": n,
                                                 "aggregation": True},
        "pretrain (protocol train part)": {"train_mode": "pretrain", "pretrain_on": "protocol"},
        "linear_eval (frozen encoder)": {"train_mode": "linear_eval"},
    }


def backbone_configs() -> dict[str, dict]:
    """The zero-shot track's epoch per backbone and width (name → config updates)."""
    return {
        "zero-shot, ST-GCN, width 16": {"train_mode": "main", "backbone": "stgcn", "hidden_channels": 16},
        "zero-shot, CTR-GCN, width 16": {"train_mode": "main", "backbone": "ctrgcn", "hidden_channels": 16},
        "zero-shot, CTR-GCN, width 64": {"train_mode": "main", "backbone": "ctrgcn", "hidden_channels": 64},
    }


def epoch_seconds(updates: dict, dataset: str, epochs: int, out: Path) -> tuple[float, int]:
    """Mean seconds of the epochs after the first, and the training-set size (0: the track does not report it)."""
    from main import ex

    cfg = {"dataset": dataset, "epoch_num": epochs, "warmup_epochs": 1, "lr_steps": [], "monitor_unseen": False,
           "out_dir": str(out), **updates}
    with contextlib.redirect_stdout(io.StringIO()):  # each run's end summary
        run = ex.run(config_updates=cfg, options={"--loglevel": "ERROR"})
    history = torch.load(out / "last.pt", weights_only=False)["history"]
    times = [h["epoch_seconds"] for h in history]
    res = run.result
    n = res.get("num_train_samples") or res.get("num_pretrain_sequences") or 0
    return statistics.mean(times[1:] if len(times) > 1 else times), int(n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples-per-class", type=int, default=10)
    ap.add_argument("--backbones", action="store_true", help="the zero-shot epoch per backbone and width")
    args = ap.parse_args(argv)
    tracks = backbone_configs() if args.backbones else configs(args.dataset, args.samples_per_class)
    logging.getLogger("pgfa").setLevel(logging.WARNING)
    print(f"{args.dataset}: seconds per epoch, {args.epochs} epochs each (mean of epochs 2+), "
          f"{cpu_description()}, {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, updates) in enumerate(tracks.items()):
            sec, n = epoch_seconds(updates, args.dataset, args.epochs, Path(tmp) / f"r{i}")
            rows.append((name, sec, n))
            size = f"  ({n} training sequences, {1000 * sec / n:.2f} s per 1000)" if n else ""
            print(f"  {name:40s} {sec:7.2f} s{size}", flush=True)
    counted = all(n for _, _, n in rows)  # else (the zero-shot track reports no count): one training set, per epoch
    per = [sec / n if counted else sec for _, sec, n in rows]
    print(f"per {'training sequence' if counted else 'epoch'}, against {rows[0][0]}: "
          + ", ".join(f"{name}: {p / per[0]:.2f}x" for (name, _, _), p in zip(rows, per)))


if __name__ == "__main__":
    main()
