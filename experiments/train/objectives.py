"""The loss of one training batch, per track: augmentation, the forward pass, the track's
loss, and FR-Head's auxiliary loss. ``train_epoch`` (``steps.py``) calls one of these for
every batch; the loop around it is the same for every track.

* ``zero_shot_objective``: the skeleton–text loss (``loss_type``) against the class texts;
  with SkeleMix, the symmetric KL towards mixed targets (a mixed sample belongs to its own
  class with weight ``lam`` and to its partner's with ``1 - lam``).
* ``supervised_objective``: cross-entropy over the dataset's classes (label smoothing
  option); with SkeleMix, the same ``lam``-weighted mixed target.
* ``aggregation_objective``: SkeletonX's cross-sample aggregation (``module/skeletonx.py``), any
  track: each sample with a same-action/other-performer and an other-action/same-performer
  partner from the training set, and their swapped performer/action features scored too.

In a torchrun launch (``distributed.py``) each batch is augmented whole on every rank, the
forward pass runs on the rank's shard and the outputs are gathered back, so the loss sees the
global batch; FR-Head's loss is each rank's own (a per-sample mean, averaged with the gradients).

FR-Head's loss needs class logits and labels: the classifier's logits in the supervised
track; in the zero-shot tracks the scaled cosine similarities to the texts of the training
classes (each training class's text is its prototype). A mixed sample counts for FR-Head
as the class that fills most of it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.augment import Augmentation
from experiments.train import distributed
from experiments.train.settings import Settings
from experiments.train.steps import Objective, autocast
from module.losses import cosine, get_loss, kl_soft_target, mixed_same_label

SKELEMIX_LOSSES = ("kl",)  # losses with a soft-target form for mixed samples


def augmentation(s: Settings) -> Augmentation:
    a = s.augment
    return Augmentation(rotate=a.rotate, scale=a.scale, shear=a.shear, crop=a.crop, skelemix=a.skelemix,
                        rotate_axes=a.rotate_axes)


def check_objective(s: Settings) -> None:
    """Refuse combinations the objectives cannot honour, before any work."""
    augmentation(s)  # validates the ranges
    if s.augment.skelemix > 0 and s.run.train_mode != "supervised" and s.loss.name not in SKELEMIX_LOSSES:
        raise ValueError(f"skelemix with loss_type={s.loss.name!r}: mixed targets are defined for "
                         f"{list(SKELEMIX_LOSSES)}; use loss_type='kl' or skelemix=0")
    if s.fr.enabled and len(s.fr.level_weights) != 4:
        raise ValueError(f"fr_level_weights needs 4 weights (low, mid, high, final), got {list(s.fr.level_weights)}")


def _views(aug: Augmentation, layout: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
    """The augmented batch, its partner labels and mixing weights (None, None without SkeleMix)."""
    if not aug.enabled:
        return x, None, None
    x, partner, lam = aug.apply(x, generator, layout)
    if partner is None:
        return x, None, None
    return x, y[partner.to(y.device)], lam.to(x.device, torch.float32)


def _forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str):
    """The model's output (float32) and, with an FR-Head, the captured stage features."""
    fr = getattr(model, "fr_head", None)
    if fr is None:
        with autocast(device, precision):
            return model(x).float(), None
    from module.frhead import capture_stages

    with capture_stages(model.backbone) as stages, autocast(device, precision):
        out = model(x).float()
    return out, [t.float() for t in stages]


def _major(y: torch.Tensor, y_partner: torch.Tensor | None, lam: torch.Tensor | None) -> torch.Tensor:
    return y if y_partner is None else torch.where(lam >= 0.5, y, y_partner)


def zero_shot_objective(s: Settings, text: torch.Tensor, train_classes: list[int], device: torch.device) -> Objective:
    """Skeleton–text loss of one batch (``text``: (num_classes, D) on ``device``)."""
    check_objective(s)
    loss_fn, kw = get_loss(s.loss.name), s.loss.kwargs()
    aug, layout, precision, fr = augmentation(s), s.model.graph_layout, s.run.precision, s.fr
    cls = torch.tensor(train_classes, device=device)
    index = torch.full((int(text.shape[0]),), -1, dtype=torch.long, device=device)
    index[cls] = torch.arange(len(train_classes), device=device)  # class id -> position among the training classes

    def objective(model, x, y, generator):
        x, y_partner, lam = _views(aug, layout, x, y, generator)
        local, stages = _forward(model, distributed.shard(x), device, precision)
        emb, scale = distributed.gather(local), model.scale()  # the loss sees the global batch
        if y_partner is None:
            loss = loss_fn(emb, text[y], y, scale, **kw)
        else:
            loss = kl_soft_target(emb, text[y], mixed_same_label(y, y_partner, lam), scale)
        if stages is not None:
            logits = scale * cosine(local, text[cls])  # (B, K_train): each training class's text as its prototype
            target = distributed.shard(index[_major(y, y_partner, lam)])
            loss = loss + fr.weight * model.fr_head(stages, x.shape[-1], logits, target)
        return loss

    return objective


def supervised_objective(s: Settings, device: torch.device) -> Objective:
    """Cross-entropy of one batch over the dataset's classes."""
    check_objective(s)
    aug, layout, precision, fr = augmentation(s), s.model.graph_layout, s.run.precision, s.fr
    smoothing = s.supervised.label_smoothing

    def objective(model, x, y, generator):
        x, y_partner, lam = _views(aug, layout, x, y, generator)
        local, stages = _forward(model, distributed.shard(x), device, precision)
        logits = distributed.gather(local)
        if y_partner is None:
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        else:  # cross-entropy is linear in its target: the lam-mixed target's loss
            own = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
            other = F.cross_entropy(logits, y_partner, label_smoothing=smoothing, reduction="none")
            loss = (lam * own + (1 - lam) * other).mean()
        if stages is not None:
            target = distributed.shard(_major(y, y_partner, lam))
            loss = loss + fr.weight * model.fr_head(stages, x.shape[-1], local, target)
        return loss

    return objective




def aggregation_objective(s: Settings, device: torch.device, train_y: torch.Tensor, performers,
                          criterion) -> Objective:
    """SkeletonX's loss of one batch (``idx``: the batch's indices into the training set, whose labels
    and performers are ``train_y`` and ``performers``): the track's ``criterion(model, output, labels)``
    of the sample and of both partners, plus ``aggregation_weight`` times that of the four
    aggregated features (``model.from_parts(performer, action)``, labelled with the action)."""
    import numpy as np

    from module.skeletonx import pair_partners

    aug, layout, precision, w = augmentation(s), s.model.graph_layout, s.run.precision, s.aggregation.weight
    y_all = train_y.cpu()
    labels, perf = y_all.numpy(), np.asarray(performers)
    fallbacks = {"sadp_same_performer": 0, "dasp_same_action": 0}

    def objective(model, x, y, generator, idx, data_x):
        sadp, dasp, fell = pair_partners(labels, perf, idx.cpu().numpy())
        for k, v in fell.items():
            fallbacks[k] += v
        views = [aug.apply(v, generator, layout)[0] for v in
                 (x, data_x[torch.from_numpy(sadp).to(data_x.device)].to(device),
                  data_x[torch.from_numpy(dasp).to(data_x.device)].to(device))]
        y_s, y_d = y_all[torch.from_numpy(sadp)].to(device), y_all[torch.from_numpy(dasp)].to(device)
        with autocast(device, precision):
            (s_a, a_a), (s_s, a_s), (s_d, a_d) = (model.decouple(v) for v in views)
            own = [criterion(model, model.from_parts(sub, act).float(), target)
                   for sub, act, target in ((s_a, a_a, y), (s_s, a_s, y_s), (s_d, a_d, y_d))]
            cross = [criterion(model, model.from_parts(sub, act).float(), target)
                     for sub, act, target in ((s_d, a_a, y), (s_a, a_d, y_d), (s_s, a_a, y), (s_a, a_s, y_s))]
        return sum(own) + w * sum(cross)

    objective.wants_index = True
    objective.fallbacks = fallbacks
    return objective


def check_aggregation(s: Settings, performers) -> None:
    """``aggregation=True`` needs every training sample's performer and is its own loss."""
    if performers is None:
        raise ValueError(f"aggregation=True pairs samples by performer, and {s.data.dataset}'s prepared data does not "
                         "name every training sample's performer (subject); prepare it again with this version "
                         "(split folders then hold seen_train_performer.npy)")
    if s.fr.enabled or s.augment.skelemix or s.model.part_align:
        raise ValueError("aggregation=True is its own model and loss: set fr_head=False, skelemix=0, part_align=False")


def zero_shot_training(s: Settings, data, text: torch.Tensor, device: torch.device) -> Objective:
    """The zero-shot tracks' objective for ``data`` (``ZeroShotData``): ``zero_shot_objective``, or with
    ``aggregation=True`` SkeletonX's aggregation scored by the skeleton–text loss."""
    if not s.aggregation.enabled:
        return zero_shot_objective(s, text, data.train.classes, device)
    check_aggregation(s, data.train_performer)
    loss_fn, kw = get_loss(s.loss.name), s.loss.kwargs()
    return aggregation_objective(s, device, data.train.y, data.train_performer,
                                 lambda model, emb, target: loss_fn(emb, text[target], target, model.scale(), **kw))


def aggregation_record(s: Settings, objective: Objective) -> dict:
    """What a run's result records of its aggregation (nothing without it)."""
    if not s.aggregation.enabled:
        return {}
    return {"aggregation": True, "aggregation_weight": s.aggregation.weight,
            "pair_fallbacks": dict(objective.fallbacks)}
