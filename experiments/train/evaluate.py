"""Scoring a trained model: zero-shot classification of a subset by its class texts (and,
with alignment, by PGFA's prototypes), and the final report of a run.

After training, the unseen test classes are scored once with the selected checkpoint:
inductive top-1 (nearest text), per-class mean accuracy, and top-1 after
prototype-guided alignment; plus GZSL and one-shot numbers when the track asks. All
accuracies are percentages over samples (means over classes for the per-class numbers).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.loading import ZeroShotData
from experiments.tracking.tracker import Tracker
from experiments.train.artifacts import UNSEEN_SCORES_FILE, class_names, plot_curves, save_scores, write_unseen_report
from experiments.train.gzsl import choose_gamma, class_scores, evaluate_gzsl, one_shot_eval, pick_exemplars
from experiments.train.metrics import balanced_accuracy, per_class_accuracy, top1
from experiments.train.settings import AlignSettings, ConseSettings, Settings
from experiments.train.steps import embed
from module.align import class_centred, nearest_text, prototype_align, seen_mixture
from module.head import SkeletonTextModel
from module.losses import cosine

log = logging.getLogger("pgfa")


@dataclass
class Outcome:
    """What training and selection produced; the model holds the selected weights afterwards."""
    best_epoch: int
    best_score: float
    train_seconds: float
    checkpoint: Path
    history: list[dict] = field(default_factory=list)  # per-epoch metrics (empty for a checkpoint evaluation)
    unseen_feats: torch.Tensor | None = None  # selection="snapshot": the ensemble's unseen embeddings
    record: dict = field(default_factory=dict)  # entries the result records of how the model was chosen


@dataclass
class ZeroShotResult:
    top1: float
    per_class_mean: float
    per_class: dict[int, float]
    pred: torch.Tensor              # predicted class ids (inductive)
    top1_aligned: float | None = None
    per_class_mean_aligned: float | None = None
    pred_aligned: torch.Tensor | None = None
    top1_centred: float | None = None  # transductive: class-centred scores (module/align.py: class_centred)
    prototypes: torch.Tensor | None = None
    support: torch.Tensor | None = None
    feats: torch.Tensor | None = None


def zero_shot_eval(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], text: torch.Tensor,
                   align: AlignSettings | None = None, conse: ConseSettings | None = None,
                   seen: list[int] = ()) -> ZeroShotResult:
    """Classify ``feats`` among ``classes`` by their text embeddings (and, with ``align``, by prototypes).
    With ``conse`` each embedding is first replaced by its mix of the ``seen`` classes' texts (ConSE)."""
    cls = torch.tensor(classes)
    if conse is not None:
        if not len(seen):
            raise ValueError("conse=True needs the training classes' texts to mix (none given)")
        feats = seen_mixture(feats, text[torch.tensor(list(seen))].cpu(), conse.temperature, conse.top_k)
    cand = text[cls].cpu()  # (K, D) candidate class texts
    logits, nearest = nearest_text(feats, cand)
    pred = cls[nearest]
    pc = per_class_accuracy(pred, labels, classes)
    res = ZeroShotResult(top1(pred, labels), balanced_accuracy(pred, labels), pc, pred, feats=feats)
    if align is not None:
        a = prototype_align(feats, cand, align.support_factor, align.min_support, align.entropy_scale)
        pred_a = cls[a.pred_aligned]
        res.top1_aligned, res.per_class_mean_aligned = top1(pred_a, labels), balanced_accuracy(pred_a, labels)
        res.pred_aligned, res.prototypes, res.support = pred_a, a.prototypes, a.support
        res.top1_centred = top1(cls[class_centred(logits).argmax(dim=1)], labels)
    return res


def final_report(s: Settings, data: ZeroShotData, text: torch.Tensor, model: SkeletonTextModel,
                 device: torch.device, tracker: Tracker, outcome: Outcome) -> dict:
    """Score the unseen classes once with the selected model (plus GZSL / one-shot when asked); write the
    artifacts. Shared by training runs and checkpoint evaluation."""
    ev, precision = s.eval, s.run.precision
    feats = outcome.unseen_feats if outcome.unseen_feats is not None else \
        embed(model, data.unseen.x, batch_size=ev.batch_size, device=device, desc="unseen", precision=precision)
    res = zero_shot_eval(feats, data.unseen.y, data.unseen.classes, text, ev.align, ev.conse, data.train.classes)
    result = {
        "dataset": s.data.dataset, "split": str(s.data.split), "train_mode": s.run.train_mode, "seed": s.run.seed,
        "tag": s.run.tag, "selection": ev.selection, "best_epoch": outcome.best_epoch,
        ("best_unseen_top1_selection" if ev.by_test else "best_val_top1"): outcome.best_score,
        "unseen_top1": res.top1, "unseen_per_class_mean": res.per_class_mean,
        "unseen_per_class": {str(k): v for k, v in res.per_class.items()},
        "num_unseen_samples": len(data.unseen), "unseen_classes": list(data.unseen.classes),
        "val_classes": list(data.val.classes) if data.val else [],
        "train_seconds": round(outcome.train_seconds, 1), "checkpoint": str(outcome.checkpoint),
        **(s.average.record() if s.run.train_mode != "test" else {}),  # (test mode: not this run's training)
        **data.record,  # limited scale, init_from, freeze_backbone
        **outcome.record,  # selection="snapshot": the epochs averaged
    }
    if ev.conse is not None:
        result.update({"conse_temperature": ev.conse.temperature, "conse_top_k": ev.conse.top_k})
    if ev.align is not None:
        result.update({"unseen_top1_aligned": res.top1_aligned,
                       "unseen_per_class_mean_aligned": res.per_class_mean_aligned,
                       "unseen_top1_centred": res.top1_centred,
                       "alignment": "transductive (prototypes from the whole unseen test set)",
                       "support_factor": ev.align.support_factor})
    if s.data.gzsl:
        result.update(gzsl_report(s, data, text, model, device))
    if s.run.train_mode == "one_shot":
        exemplars = pick_exemplars(data.unseen.y, data.unseen.classes, ev.exemplar_seed)
        result.update(one_shot_eval(feats, data.unseen.y, data.unseen.classes, text, exemplars,
                                    ev.one_shot_text_weight))
        result["exemplars"] = {str(c): i for c, i in exemplars.items()}  # indices into unseen_data.npy
    report = write_unseen_report(outcome.checkpoint.parent, data.unseen.y, data.unseen.classes,
                                 class_names(s.data.dataset, data.unseen.classes, s.data.data_root), res.pred,
                                 res.pred_aligned, res.feats, text, res.prototypes)
    # the inductive scores (cosine to each unseen class's text, of the ConSE mix when on), for stream ensembles
    report.append(save_scores(outcome.checkpoint.parent / UNSEEN_SCORES_FILE,
                              cosine(res.feats, text[torch.tensor(data.unseen.classes)].cpu()), data.unseen.y,
                              data.unseen.classes, {"dataset": s.data.dataset, "split": str(s.data.split),
                                                    "modality": s.model.modality}))
    if outcome.history:
        report.append(plot_curves(outcome.checkpoint.parent / "curves.png", outcome.history, outcome.best_epoch))
    for path in [outcome.checkpoint, *report]:
        tracker.add_artifact(path)
    log.info("unseen top-1: inductive %.2f%%%s (per-class mean %.2f%%), %s", res.top1,
             f", aligned {res.top1_aligned:.2f}%, centred {res.top1_centred:.2f}%" if ev.align is not None else "",
             res.per_class_mean,
             chosen_by(ev.selection, outcome))
    for key in ("H", "one_shot_top1_exemplar", "one_shot_top1_text", "one_shot_top1_combined"):
        if key in result:
            log.info("%s: %.2f%%", key, result[key])
    return result


def chosen_by(selection: str, outcome: Outcome) -> str:
    """How the scored model was chosen, for the log line of the final score."""
    if outcome.unseen_feats is not None:
        first = outcome.record.get("snapshot_from_epoch", 0)
        return f"snapshot ensemble of epochs {first + 1}-{outcome.best_epoch + 1} (no epoch selected)"
    if selection == "snapshot":  # a checkpoint evaluation of a snapshot run: its weights alone
        return f"the weights of epoch {outcome.best_epoch + 1} alone (its run scored the snapshot ensemble)"
    return f"checkpoint of epoch {outcome.best_epoch + 1} selected by " + {
        "test": "unseen test accuracy",
        "folds": "mean validation accuracy over folds (then trained on every seen class)"}.get(selection,
                                                                                             "validation accuracy")


def gzsl_report(s: Settings, data: ZeroShotData, text: torch.Tensor, model: SkeletonTextModel,
                device: torch.device) -> dict:
    """Generalized zero-shot: gamma chosen on validation data (held-out training-class samples +
    validation classes), then applied once to seen-test (training classes) + unseen samples."""
    bs, precision = s.eval.batch_size, s.run.precision
    train_cls, val_cls, unseen_cls = data.train.classes, data.val.classes, data.unseen.classes
    vx = torch.cat([data.val_seen.x, data.val.x])
    vy = torch.cat([data.val_seen.y, data.val.y])
    v_classes = sorted(train_cls + val_cls)
    v_scores = class_scores(embed(model, vx, batch_size=bs, device=device, desc="gzsl val", precision=precision),
                            text, v_classes)
    gamma, val_h = choose_gamma(v_scores, vy, v_classes, train_cls, val_cls)
    # the test side: seen-test samples of the training classes (validation classes were never trained on)
    keep = torch.isin(data.seen_test.y, torch.tensor(train_cls))
    tx = torch.cat([data.seen_test.x[keep], data.unseen.x])
    ty = torch.cat([data.seen_test.y[keep], data.unseen.y])
    t_classes = sorted(train_cls + unseen_cls)
    t_scores = class_scores(embed(model, tx, batch_size=bs, device=device, desc="gzsl test", precision=precision),
                            text, t_classes)
    res = evaluate_gzsl(t_scores, ty, t_classes, train_cls, unseen_cls, gamma)
    return {"gzsl_gamma": gamma, "gzsl_val_H": val_h, "gzsl_calibration": "gamma chosen on validation data only",
            **{f"gzsl_{k}": v for k, v in res.items() if k != "gamma"}, "H": res["H"]}
