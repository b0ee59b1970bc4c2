"""The stream ensemble as one run (``streams=["joint", "joint_motion"]``).

One training per input stream (``modality``), each with the run's config, seed and snapshot ensemble,
in ``<run folder>/<stream>/``; then the unseen (and validation) classes are scored once by the streams
fused: each stream's unit embedding side by side, over √k, against the class text repeated k times over
√k. A cosine in that space is the mean of the streams' cosines, so the fused inductive score is the
equal-weight score ensemble of the streams (as ``python main.py ensemble`` fuses separate runs), and
PGFA's alignment, the class-centred scores and ConSE work on it unchanged. Each stream's training is
the run a single-stream config with the same seed would make: its folder holds the same checkpoints
(and ``epoch_embeddings.npz`` with ``save_embeddings=True``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from data.streams import check_modality
from experiments.files import STREAMS_FILE
from experiments.tracking.tracker import PrefixTracker, Tracker
from experiments.train import distributed
from experiments.train.epoch_eval import holdout_top1
from experiments.train.evaluate import Outcome, final_report, zero_shot_eval
from experiments.train.prepare import folder_of
from experiments.train.rescore import load_embeddings, snapshot_sums
from experiments.train.settings import AlignSettings, Settings

log = logging.getLogger("pgfa")


def fuse_features(feats: list[torch.Tensor]) -> torch.Tensor:
    """The streams' unit embeddings side by side, over √k (module docstring)."""
    return torch.cat([F.normalize(f.float(), dim=1) for f in feats], dim=1) / math.sqrt(len(feats))


def fuse_text(text: torch.Tensor, k: int) -> torch.Tensor:
    """The class texts repeated for ``k`` streams: a cosine against them is the mean of the k cosines."""
    return torch.cat([F.normalize(text.float(), dim=1)] * k, dim=1) / math.sqrt(k)


def fused_validation(feats: list[torch.Tensor], labels: torch.Tensor, classes: list[int], text: torch.Tensor,
                     conse=None, seen: list[int] = ()) -> tuple[float, float]:
    """The fused streams' validation top-1 and held-out estimate (``holdout_top1`` of a fixed model)."""
    k = len(feats)
    res = zero_shot_eval(fuse_features(feats), labels, classes, fuse_text(text, k), conse=conse, seen=seen)
    fixed = res.pred == labels.cpu()
    return res.top1, holdout_top1(fixed[None], labels.cpu(), [True], fixed)


def check_streams(cfg: dict) -> list[str]:
    """The config's streams, or a ``ValueError`` naming what a stream ensemble run cannot do."""
    streams = [check_modality(str(m)) for m in cfg["streams"]]
    if len(streams) < 2 or len(set(streams)) != len(streams):
        raise ValueError(f"streams={cfg['streams']!r}: give two or more different streams (or [] for one model)")
    refuse = {"selection": cfg["selection"] != "snapshot", "gzsl": bool(cfg["gzsl"]),
              "train_mode": cfg["train_mode"] not in ("main", "sota"), "resume": bool(cfg["resume"])}
    if any(refuse.values()):
        raise ValueError(f"streams={streams!r}: a stream ensemble run needs selection='snapshot' (the streams' "
                         "snapshot ensembles are fused; no epoch is picked), the main or sota track, gzsl=False "
                         f"and no resume; this config sets {', '.join(k for k, v in refuse.items() if v)}")
    if distributed.world().size > 1:
        raise ValueError(f"streams={streams!r}: not in a torchrun launch (launch one stream at a time)")
    return streams


def run_streams(cfg: dict, tracker: Tracker, train_zero_shot: Callable) -> dict:
    """Train each stream with ``train_zero_shot`` (``experiments/train/tracks.py``'s), then score the fused
    streams once (module docstring); returns the run's result."""
    streams = check_streams(cfg)
    s = Settings.from_config({**cfg, "streams": []})
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    trained = []
    for i, m in enumerate(streams, 1):
        log.info("stream %d/%d: %s", i, len(streams), m)
        sub = Settings.from_config({**cfg, "streams": [], "modality": m, "out_dir": str(folder / m)})
        trained.append(train_zero_shot(sub, PrefixTracker(tracker, f"{m}_")))
    first = trained[0]
    data, k = first.data, len(trained)
    text = fuse_text(first.text, k)
    per_stream, record = {}, dict(first.outcome.record)
    for m, t in zip(streams, trained):
        own = zero_shot_eval(t.outcome.unseen_feats, data.unseen.y, data.unseen.classes, t.text, conse=s.eval.conse,
                             seen=data.train.classes)
        per_stream[m] = {"unseen_top1": own.top1, "checkpoint": str(t.outcome.checkpoint),
                         **{key: t.outcome.record[key] for key in ("val_holdout_top1",) if key in t.outcome.record}}
        tracker.add_artifact(t.outcome.checkpoint, f"{m}_{t.outcome.checkpoint.name}")
    best_score = float("nan")
    if data.val is not None:  # the fused snapshot ensembles on the validation classes: what comparisons read
        best_score, record["val_holdout_top1"] = fused_validation(
            [t.evaluator.sums["val"] / t.evaluator.count for t in trained], data.val.y, data.val.classes,
            first.text, s.eval.conse, data.train.classes)
    record.pop("embeddings_file", None)  # each stream's, in its folder
    manifest = folder / STREAMS_FILE
    manifest.write_text(json.dumps({"streams": streams, "folders": [str(folder / m) for m in streams],
                                    "checkpoints": [str(t.outcome.checkpoint) for t in trained]}, indent=1))
    outcome = Outcome(first.outcome.best_epoch, best_score, sum(t.outcome.train_seconds for t in trained),
                      manifest, [], fuse_features([t.outcome.unseen_feats for t in trained]),
                      {**record, "streams": streams, "stream_results": per_stream})
    fused = replace(s, model=replace(s.model, modality="+".join(streams)))
    log.info("streams %s fused (equal weights): %s", "+".join(streams),
             ", ".join(f"{m} alone {r['unseen_top1']:.2f}%" for m, r in per_stream.items()))
    return {**final_report(fused, data, text, first.model, first.device, tracker, outcome),
            "batch_size": first.s.optim.batch_size}


def fused_from_folders(folders: list[str]) -> dict:
    """What a streams run of these single-stream runs' streams scores (inductive, aligned, centred), from their
    saved embeddings (``save_embeddings=True``, ``selection="snapshot"``; same split and texts)."""
    embs = [load_embeddings(f) for f in folders]
    feats, val_feats = [], []
    for f, e in zip(folders, embs):
        if e["config"].get("selection") != "snapshot":
            raise ValueError(f"{f}: selection={e['config'].get('selection')!r}; streams fuse snapshot ensembles")
        if not (torch.equal(e["unseen_y"], embs[0]["unseen_y"]) and torch.equal(e["text"], embs[0]["text"])):
            raise ValueError(f"{f}: other unseen samples or class texts than {folders[0]}")
        if "val" in embs[0] and not ("val" in e and torch.equal(e["val_y"], embs[0]["val_y"])):
            raise ValueError(f"{f}: other validation samples than {folders[0]}")
        sums, count = snapshot_sums(e, float(e["config"]["snapshot_start"]))
        feats.append(sums["unseen"] / count)
        if "val" in embs[0]:
            val_feats.append(sums["val"] / count)
    e0 = embs[0]
    res = zero_shot_eval(fuse_features(feats), e0["unseen_y"], e0["unseen_classes"].tolist(),
                         fuse_text(e0["text"], len(embs)), AlignSettings.from_config(e0["config"]))
    out = {"streams": [e["config"].get("modality") for e in embs], "split": e0["config"].get("split"),
           "seed": e0["config"].get("seed"), "unseen_top1": res.top1, "unseen_top1_aligned": res.top1_aligned,
           "unseen_top1_centred": res.top1_centred}
    if val_feats:
        out["val_top1"], out["val_holdout_top1"] = fused_validation(
            val_feats, e0["val_y"], e0["val_classes"].tolist(), e0["text"], seen=e0["train_classes"].tolist())
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3:
        sys.exit("usage: python -m experiments.train.streams RUN_FOLDER RUN_FOLDER [...]  (single-stream runs of one "
                 "split and seed, saved with save_embeddings=True): what a streams run of them scores")
    print(json.dumps(fused_from_folders(sys.argv[1:])))
