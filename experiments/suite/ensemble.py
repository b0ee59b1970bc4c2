"""Score ensembles of recorded runs (``train_mode="ensemble"``, or ``python main.py ensemble
with ensemble_members=[...]``): the weighted sum of the members' saved scores, recorded as its
own run that names its members.

A member is a run id recorded in MongoDB, a run folder, or a scores file: a supervised run's
``test_scores.npz`` (class logits, as CTR-GCN/FR-Head's ``epoch1_test_score.pkl``) or a
zero-shot run's ``unseen_scores.npz`` (cosine to each unseen class's text). Every member must
score the same samples in the same order over the same classes (the same dataset, protocol or
split): anything else is refused naming the member.

Weights: ``ensemble_weights``, or by default FR-Head's ``ensemble.py`` weights for four
streams (joint, bone, joint motion, bone motion: NW-UCLA and NTU-60 xview 0.6 0.6 0.4 0.4,
NTU-60 xsub 2 2 1 1, NTU-120 0.6 0.75 0.3 0.15) where the members are distinct streams of such
a dataset, else equal weights (FR-Head's two-stream default: joint + 1 · bone). The result
records the weights and the rule that chose them.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from experiments.tracking.tracker import NullTracker, Tracker
from experiments.train.artifacts import TEST_SCORES_FILE, UNSEEN_SCORES_FILE, save_scores
from experiments.train.metrics import balanced_accuracy, top1, topk
from experiments.train.state import run_folder

log = logging.getLogger("pgfa")
SCORE_FILES = (TEST_SCORES_FILE, UNSEEN_SCORES_FILE)

# FR-Head's ensemble.py, per (dataset, protocol): weights of joint, bone, joint_motion, bone_motion.
STREAM_ORDER = ("joint", "bone", "joint_motion", "bone_motion")
FRHEAD_WEIGHTS = {("nw_ucla", "xview"): (0.6, 0.6, 0.4, 0.4), ("ntu60", "xview"): (0.6, 0.6, 0.4, 0.4),
                  ("ntu60", "xsub"): (2.0, 2.0, 1.0, 1.0), ("ntu120", "xsub"): (0.6, 0.75, 0.3, 0.15),
                  ("ntu120", "xset"): (0.6, 0.75, 0.3, 0.15)}


class EnsembleError(ValueError):
    """Members that cannot be fused (the message names the member)."""


def fetch_scores(run_id: int, into: Path, mongo_url: str = "") -> Path:
    """A recorded run's scores artifact, downloaded into ``into/run-<id>/`` (every time: run ids repeat
    across databases, so a cache keyed by id could hand over another database's scores)."""
    from experiments.train.checkpoints import fetch_artifact

    return fetch_artifact(run_id, SCORE_FILES, into / f"run-{run_id}", mongo_url, what="ensemble member")


def member_path(ref, into: Path, mongo_url: str = "") -> Path:
    """The scores file a member reference points at."""
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        found = [path / n for n in SCORE_FILES if (path / n).is_file()]
        if not found:
            raise EnsembleError(f"ensemble member {ref!r}: the folder holds no {' / '.join(SCORE_FILES)}")
        return found[0]
    if path.is_file():
        return path
    if str(ref).isdigit():
        return fetch_scores(int(ref), into, mongo_url)
    raise EnsembleError(f"ensemble member {ref!r}: not a run id, a run folder or a scores file")


def load_member(ref, into: Path, mongo_url: str = "") -> dict:
    """``{"scores" (N, K), "labels" (N,), "classes" (K,), "modality", "dataset", "protocol", "source"}``."""
    path = member_path(ref, into, mongo_url)
    try:
        with np.load(path) as z:
            doc = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"ensemble member {ref!r}: {path} is not a readable scores file ({exc})") from None
    if not {"scores", "labels", "classes"} <= set(doc):
        raise EnsembleError(f"ensemble member {ref!r}: {path} has no scores/labels/classes arrays")
    scores = doc["scores"]
    if scores.ndim != 2 or scores.shape != (len(doc["labels"]), len(doc["classes"])) or not np.isfinite(scores).all():
        raise EnsembleError(f"ensemble member {ref!r}: {path} holds scores of shape {scores.shape} for "
                            f"{len(doc['labels'])} samples and {len(doc['classes'])} classes (or NaN/Inf)")
    meta = {k: str(doc[k]) for k in ("modality", "dataset", "protocol", "split") if k in doc}
    return {"scores": scores.astype(np.float64), "labels": doc["labels"], "classes": doc["classes"], **meta,
            "source": str(path), "ref": str(ref)}


def check_dataset(members: list[dict], dataset: str) -> None:
    """The run is named and filed under ``dataset`` (folder, run list): refuse members recorded on another."""
    recorded = sorted({m["dataset"] for m in members if m.get("dataset")})
    if len(recorded) > 1:
        raise EnsembleError(f"ensemble members come from different datasets {recorded}: "
                            + ", ".join(f"{m['ref']!r}: {m.get('dataset', '?')}" for m in members))
    if recorded and recorded[0] != dataset:
        raise EnsembleError(f"the ensemble members are {recorded[0]} runs but dataset={dataset!r}: pass "
                            f"dataset={recorded[0]} (the ensemble run is named and filed under its dataset)")


def default_weights(members: list[dict]) -> tuple[list[float], str]:
    """FR-Head's stream weights where they apply (module docstring), else equal weights."""
    streams = [m.get("modality", "") for m in members]
    key = (members[0].get("dataset", ""), members[0].get("protocol", ""))
    if key in FRHEAD_WEIGHTS and len(set(streams)) == len(streams) and set(streams) <= set(STREAM_ORDER):
        table = FRHEAD_WEIGHTS[key]
        return [table[STREAM_ORDER.index(m)] for m in streams], f"FR-Head ensemble.py weights for {key[0]} {key[1]}"
    return [1.0] * len(members), "equal weights"


def fuse(members: list[dict], weights: list[float]) -> np.ndarray:
    """Σ w_i · scores_i, after checking that every member scores the same samples and classes."""
    if len(weights) != len(members):
        raise EnsembleError(f"ensemble_weights has {len(weights)} weights for {len(members)} members")
    first = members[0]
    for m in members[1:]:
        if m["scores"].shape != first["scores"].shape or not np.array_equal(m["labels"], first["labels"]) \
                or not np.array_equal(m["classes"], first["classes"]):
            raise EnsembleError(f"ensemble member {m['ref']!r} scores other samples or classes than "
                                f"{first['ref']!r} (shapes {m['scores'].shape} / {first['scores'].shape}); members "
                                "must come from runs on the same dataset, protocol or split")
    return sum(w * m["scores"] for w, m in zip(weights, members))


def accuracies(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    s, y = torch.from_numpy(scores), torch.from_numpy(labels).long()
    pred = torch.from_numpy(classes).long()[s.argmax(1)]
    idx = torch.searchsorted(torch.from_numpy(classes).long(), y)  # labels as positions among the classes
    return {"top1": top1(pred, y), "top5": topk(s, idx, 5), "per_class_mean": balanced_accuracy(pred, y)}


def run_ensemble(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Fuse ``cfg["ensemble_members"]``' saved scores (module docstring); the fused scores are an artifact."""
    tracker = tracker or NullTracker()
    refs = list(cfg["ensemble_members"])
    if len(refs) < 2:
        raise EnsembleError(f"ensemble_members needs two or more runs (ids, run folders or scores files), got {refs}")
    folder = run_folder(resume="", out_dir=cfg["out_dir"], dataset=cfg["dataset"], split="-",
                        train_mode="ensemble", seed=cfg["seed"])
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)  # recorded members' scores are fetched into it
    try:
        members = [load_member(r, folder, cfg.get("mongo_url", "")) for r in refs]
        check_dataset(members, cfg["dataset"])
        weights, rule = (list(map(float, cfg["ensemble_weights"])), "given") if cfg["ensemble_weights"] \
            else default_weights(members)
        fused = fuse(members, weights)
    except BaseException:
        if created:  # a refused ensemble leaves no folder behind (only fetched scores would be in it)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    labels, classes = members[0]["labels"], members[0]["classes"]
    path = save_scores(folder / "ensemble_scores.npz", torch.from_numpy(fused).float(), torch.from_numpy(labels),
                       classes.tolist(), {"members": np.asarray(refs, dtype=str), "weights": np.asarray(weights)})
    tracker.add_artifact(path)
    acc = accuracies(fused, labels, classes)
    result = {"train_mode": "ensemble", "dataset": cfg["dataset"], "tag": cfg["tag"],
              "members": [{"ref": m["ref"], "source": m["source"], "modality": m.get("modality", ""),
                           "top1": accuracies(m["scores"], labels, classes)["top1"]} for m in members],
              "weights": weights, "weight_rule": rule, "ensemble_top1": acc["top1"], "ensemble_top5": acc["top5"],
              "ensemble_per_class_mean": acc["per_class_mean"], "num_samples": int(len(labels)),
              "scores": str(path)}
    log.info("ensemble of %d runs (%s: %s): top-1 %.2f%%, top-5 %.2f%% (members: %s)", len(members), rule,
             ", ".join(f"{w:g}" for w in weights), acc["top1"], acc["top5"],
             ", ".join(f"{m['modality'] or m['ref']} {m['top1']:.2f}%" for m in result["members"]))
    return result
