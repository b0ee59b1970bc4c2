"""Self-supervised pretraining (``train_mode="pretrain"``): SkeletonCLR's momentum contrast with
SkeleMixCLR's mixed queries, on the same loop, optimiser, checkpoints and tracking as every track.

The sequences (``pretrain_on``):

* ``"split"`` (default): the zero-shot split's training sequences (the seen classes minus the
  validation classes), so a zero-shot run started from it (``init_from``) has seen nothing of
  its validation or unseen classes; ``transductive=True`` adds the validation and unseen test
  sequences, unlabelled (recorded as transductive in the result).
* ``"protocol"``: the supervised protocol's training part (every class; the self-supervised
  literature's setting, for ``train_mode="linear_eval"``); ``transductive=True`` adds its test
  sequences.

Labels are never read: the pretraining set's labels are replaced by -1 before the loop sees it.
Per batch: two augmented views of every sequence (``aug_*``; SkeletonCLR: shear 0.5 and a
temporal crop), the query of one against the key of the other and the queue (InfoNCE), plus,
with ``moco_mix > 0``, ``moco_mix_views`` SkeleMixes of the query view (body parts × a time span
from a partner sequence of the batch): the pasted region's query against the partner's key, the
complement's against the sequence's own (``module/moco.py``: ``skelemix_loss``). The last epoch
is kept (``selection="last"``); with ``pretrain_on="protocol"`` a 1-nearest-neighbour top-1 of the
test sequences against the training ones is logged each epoch as a monitor (``knn_top1_monitor``).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from data.augment import draw_skelemix_region, skelemix
from data.catalog import get_dataset
from data.loading import Subset, limit_per_class, load_zero_shot
from data.supervised import load_supervised
from experiments.tracking.tracker import NullTracker, Tracker
from experiments.train.loop import EpochEval, resolve_device, seed_everything, train_and_select
from experiments.train.metrics import top1
from experiments.train.objectives import augmentation
from experiments.train.prepare import backbone_kwargs, folder_of, start_encoder, with_batch_size
from experiments.train.settings import Settings
from experiments.train.steps import Objective, autocast, embed, place_subset
from module import build_backbone
from module.head import InputStream
from module.moco import MoCoModel, info_nce, skelemix_loss
from module.parts import body_parts

log = logging.getLogger("pgfa")
PRETRAIN_ON = ("split", "protocol")


def pretrain_sets(s: Settings) -> tuple[Subset, Subset | None, Subset | None, dict]:
    """The unlabelled pretraining set, and the labelled train / test sets of the kNN monitor
    (``pretrain_on="protocol"`` only), and what the result records about them."""
    d, p = s.data, s.pretrain
    spec = get_dataset(d.dataset, d.data_root)
    if p.on == "split":
        data = load_zero_shot(d.data_root, spec, d.split, list(d.unseen_classes), list(d.val_classes), d.max_frame)
        train, record = limit_per_class(data.train, d.samples_per_class, d.samples_seed)
        extra = [data.val.x, data.unseen.x] if p.transductive else []
        mon_train = mon_test = None
        what = f"split {d.split}: training classes {train.classes}" + (
            " + the validation and unseen test sequences (transductive)" if p.transductive else "")
    else:
        data = load_supervised(d.data_root, spec, s.supervised.protocol, d.max_frame, 0.0, d.val_seed)
        train, record = limit_per_class(data.train, d.samples_per_class, d.samples_seed)
        extra = [data.test.x] if p.transductive else []
        mon_train, mon_test = train, data.test
        what = f"protocol {data.protocol}: training part" + (" + test sequences (transductive)" if p.transductive else "")
    x = torch.cat([train.x, *extra]) if extra else train.x
    unlabelled = Subset(x, torch.full((x.shape[0],), -1, dtype=torch.long), [])
    record.update({"pretrain_on": p.on, "pretrain_data": what, "transductive": p.transductive,
                   "num_pretrain_sequences": int(x.shape[0])})
    return unlabelled, mon_train, mon_test, record


def build_moco(s: Settings, n_train: int, batch_size: int) -> MoCoModel:
    """The MoCo model of the run; ``moco_queue="auto"``: as many keys as fit in the pretraining set
    less one batch (a queue larger than the data holds stale copies of a query's own positive)."""
    m, p = s.model, s.pretrain
    queue = p.queue if p.queue != "auto" else max(batch_size, n_train - batch_size)
    return MoCoModel(build_backbone(m.backbone, **backbone_kwargs(m)), dim=p.dim, queue_size=int(queue),
                     momentum=p.momentum, temperature=p.temperature,
                     stream=InputStream(m.modality, m.graph_layout, m.input_norm))


def pretrain_objective(s: Settings, device: torch.device) -> Objective:
    """The contrastive loss of one batch (module docstring); ``y`` is never read."""
    aug, layout, precision, p = augmentation(s), s.model.graph_layout, s.run.precision, s.pretrain
    parts = body_parts(layout)

    def objective(model: MoCoModel, x, y, generator):
        xq = aug.apply(x, generator, layout)[0]
        xk = aug.apply(x, generator, layout)[0]
        with autocast(device, precision):
            q = model(xq).float()
            model.momentum_update()
            k = model.keys(xk).float()
            loss = info_nce(model.logits(q, k))
            for _ in range(p.mix_views if p.mix > 0 else 0):  # SkeleMixCLR: L_ins + mix * sum (L_p + L_c) / 2
                partner, joints, frames = draw_skelemix_region(x.shape[0], x.shape[2], parts, generator,
                                                               device=x.device)
                mask = torch.zeros(x.shape[2], x.shape[3], device=x.device)
                mask[frames[0]:frames[1], joints] = 1.0
                mixed = skelemix(xq, xq[partner], joints, frames)
                loss = loss + p.mix * skelemix_loss(model, mixed, mask, k, partner.to(k.device))
        model.enqueue(k)
        return loss

    return objective


def knn_monitor(s: Settings, train: Subset | None, test: Subset | None, device: torch.device) -> EpochEval:
    """Per epoch: 1-NN top-1 (cosine of the backbone's pooled features) of the test sequences against
    the labelled training ones, a monitor only; without them, nothing is scored."""
    bs, precision = s.eval.batch_size, s.run.precision

    def evaluate(model: MoCoModel) -> tuple[float, dict]:
        if train is None:
            return float("nan"), {}
        encoder = torch.nn.Sequential(model.stream, model.backbone)
        a = torch.nn.functional.normalize(embed(encoder, train.x, batch_size=bs, device=device, precision=precision))
        b = torch.nn.functional.normalize(embed(encoder, test.x, batch_size=bs, device=device, precision=precision))
        pred = train.y[(b @ a.T).argmax(1)]
        score = top1(pred, test.y)
        return score, {"knn_top1_monitor": score}

    return evaluate


def run_pretrain(cfg: dict, tracker: Tracker | None = None) -> dict:
    """Pretrain an encoder without labels; its checkpoint starts other runs through ``init_from``."""
    tracker = tracker or NullTracker()
    s = Settings.from_config(cfg)
    if s.pretrain.on not in PRETRAIN_ON:
        raise ValueError(f"pretrain_on must be one of {PRETRAIN_ON}, got {s.pretrain.on!r}")
    if s.eval.selection != "last":
        raise ValueError(f"train_mode='pretrain' keeps its last epoch (no labels to select on): selection='last', "
                         f"not {s.eval.selection!r}")
    if s.augment.skelemix:
        raise ValueError("train_mode='pretrain' mixes its queries itself (moco_mix); set skelemix=0")
    generator = seed_everything(s.run.seed)
    data, mon_train, mon_test, record = pretrain_sets(s)
    device = resolve_device(s.run.device)
    autocast(device, s.run.precision)
    s = with_batch_size(s, len(data))
    model = build_moco(s, len(data), s.optim.batch_size)
    record.update(start_encoder(replace(s, init=replace(s.init, freeze=False)), model))
    model = model.to(device)
    data = place_subset(data, device, s.run.data_on_device)
    log.info("pretrain %s: %d sequences (%s), queue %d, device %s", s.data.dataset, len(data),
             record["pretrain_data"], model.queue.shape[1], device)
    folder = folder_of(s)
    tracker.set_info("run_folder", str(folder))
    outcome = train_and_select(s, data, model, device, tracker, generator, folder, pretrain_objective(s, device),
                               knn_monitor(s, mon_train, mon_test, device), "knn_top1_monitor")
    history = outcome.history or []
    tracker.add_artifact(outcome.checkpoint)
    result = {
        "dataset": s.data.dataset, "split": str(s.data.split), "train_mode": "pretrain", "seed": s.run.seed,
        "tag": s.run.tag, "selection": "last", "epochs": len(history),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "knn_top1_monitor": history[-1].get("knn_top1_monitor") if history else None,
        "moco": {"dim": s.pretrain.dim, "queue": int(model.queue.shape[1]), "momentum": s.pretrain.momentum,
                 "temperature": s.pretrain.temperature, "mix": s.pretrain.mix,
                 "mix_views": s.pretrain.mix_views},
        "train_seconds": round(outcome.train_seconds, 1), "batch_size": s.optim.batch_size,
        "epoch_seconds_mean": round(sum(h["epoch_seconds"] for h in history) / len(history), 2) if history else None,
        "checkpoint": str(outcome.checkpoint), **record,
        "summary": f"pretrained {len(history)} epochs on {record['num_pretrain_sequences']} sequences; start "
                   f"another run from it with init_from=<this run's id or {outcome.checkpoint.parent}>",
    }
    log.info("%s", result["summary"])
    return result
