"""What every zero-shot track builds before its first training step: the model, the class texts,
the data on its device, the resolved batch size and the run folder (the per-epoch evaluation: ``epoch_eval.py``).
Shared by the tracks (``tracks.py``) and the fold selection (``folds.py``)."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from data.auxiliary import aux_names, load_auxiliary
from data.catalog import dataset_splits, get_dataset
from data.loading import Subset, ZeroShotData, limit_training, load_zero_shot
from experiments.train import distributed
from experiments.train.gzsl import pick_exemplars
from experiments.train.init import freeze_encoder, init_encoder
from experiments.train.loop import resolve_device
from experiments.train.objectives import check_objective
from experiments.train.settings import ModelSettings, Settings
from experiments.train.state import run_folder
from experiments.train.steps import FEW_STEPS, auto_batch_size, autocast, place_subset, steps_per_epoch
from module import backbone_keys, build_backbone
from module.head import InputStream, PartAwareModel, SkeletonTextModel
from module.losses import get_loss
from text import embeddings as text_embeddings

log = logging.getLogger("pgfa")
SELECTIONS = ("val", "test", "folds", "snapshot")


def build_model(m: ModelSettings, aggregation: bool = False) -> SkeletonTextModel:
    """The input stream, the backbone (its factory gets exactly its own entries, by name) and the text
    head (``aggregation``: SkeletonX's decoupled one, ``module/skeletonx.py``)."""
    backbone = build_backbone(m.backbone, **backbone_kwargs(m))
    kwargs = dict(init_temperature=m.init_temperature, learn_temperature=m.learn_temperature,
                  stream=InputStream(m.modality, m.graph_layout, m.input_norm))
    if aggregation:
        from module.skeletonx import DecoupleTextModel

        return DecoupleTextModel(backbone, m.text_dim, **kwargs)
    if m.part_align:
        from module.graph import get_layout
        from module.parts import body_parts

        return PartAwareModel(backbone, m.text_dim, body_parts(m.graph_layout), get_layout(m.graph_layout).num_joints,
                              part_weight=m.part_weight, **kwargs)
    return SkeletonTextModel(backbone, m.text_dim, **kwargs)


def class_texts(s: Settings, model: torch.nn.Module, num_classes: int,
                aux: list[tuple[str, int]] = ()) -> torch.Tensor:
    """The class-text matrix the run aligns with: ``text_kind``'s embeddings (a ``+`` ensemble
    averaged), fused with the ``part_text_kind`` texts for a part-aware model; the rows of each
    auxiliary ``(dataset, classes)`` follow the dataset's (``add_auxiliary``)."""
    d, t = s.data, s.text

    def load(kind: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([
            text_embeddings.load_text(d.data_root, name, kind, t.model, num_classes=k, dim=t.dim)
            for name, k in [(d.dataset, num_classes), *aux]]))

    text = load(t.kind)
    if isinstance(model, PartAwareModel):
        with torch.no_grad():
            text = model.text_targets(text, load(t.part_kind))
    return text


def attach_fr_head(model: torch.nn.Module, s: Settings, num_classes: int) -> torch.nn.Module:
    """With ``fr_head=True``: FR-Head over ``num_classes`` classes as ``model.fr_head`` (trained and
    saved with the model; used only by the training objective). Its level shapes are read from one
    forward pass of an input of the run's shape."""
    if s.fr.enabled:
        from module.frhead import FRHead
        from module.graph import get_layout

        m = s.model
        sample = torch.zeros(2, m.in_channels, s.data.max_frame, get_layout(m.graph_layout).num_joints, m.num_person)
        model.fr_head = FRHead.for_backbone(model.backbone, sample, num_classes, level_weights=s.fr.level_weights)
    return model


def backbone_kwargs(m: ModelSettings) -> dict:
    """The model settings a backbone's factory declares (``module.backbone_keys``), passed by name."""
    return {k: getattr(m, k) for k in backbone_keys(m.backbone)}


def place_data(data: ZeroShotData, device: torch.device, mode: str | bool) -> None:
    """Training samples and labels, and the inputs of every evaluated subset, resident on the
    device where they fit (``place_subset``); evaluation labels stay on the CPU with the metrics."""
    data.train = place_subset(data.train, device, mode)
    for name in ("val", "unseen", "seen_test", "val_seen"):
        sub = getattr(data, name)
        if sub is not None:
            setattr(data, name, Subset(place_subset(sub, device, mode).x, sub.y, sub.classes))


def check_val_seed(s: Settings) -> None:
    """``val_seed`` draws the validation classes only where the split records none (config.py); where it
    records them a non-zero value would change nothing, so it is refused. It also seeds the validation
    folds and GZSL's held-out seen samples: those runs may set it."""
    d = s.data
    if d.val_seed == 0 or s.eval.selection == "folds" or d.gzsl:
        return
    recorded = dataset_splits(d.dataset, d.data_root).get(str(d.split), {}).get("val")
    if recorded:
        raise ValueError(f"val_seed={d.val_seed} changes nothing: {d.dataset} split {d.split} records its validation "
                         f"classes {list(recorded)}; to validate on other seen classes give val_classes=[...] "
                         "(e.g. drawn by data.catalog.draw_val_classes)")


def prepare_run(s: Settings) -> tuple[ZeroShotData, torch.Tensor, SkeletonTextModel, torch.device]:
    """Everything that can fail on bad input, checked before the first training step."""
    d = s.data
    spec = get_dataset(d.dataset, d.data_root)
    if s.eval.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS} (zero-shot tracks), got {s.eval.selection!r}")
    get_loss(s.loss.name)
    check_objective(s)
    check_val_seed(s)
    if d.gzsl and (s.eval.selection == "snapshot" or s.eval.conse is not None):
        raise ValueError("gzsl=True calibrates one model's scores over seen and unseen classes: it does not combine "
                         f"with selection='snapshot' or conse=True (got selection={s.eval.selection!r}, "
                         f"conse={s.eval.conse is not None})")
    use_val = (s.eval.selection in ("val", "snapshot") and not d.trainval) or d.gzsl
    data = load_zero_shot(d.data_root, spec, d.split, list(d.unseen_classes), list(d.val_classes), d.max_frame,
                          use_val=use_val, holdout=d.gzsl_holdout if d.gzsl else 0.0, holdout_seed=d.val_seed)
    if d.gzsl and data.seen_test is None:
        raise ValueError(f"gzsl=True needs seen-class test samples: {d.dataset} split {d.split} has no "
                         "seen_test_data.npy / seen_test_label.npy")
    if s.run.train_mode == "one_shot":
        pick_exemplars(data.unseen.y, data.unseen.classes, s.eval.exemplar_seed)  # every class needs 2+ samples
    limited = limit_training(data, d.samples_per_class, d.samples_seed)
    model = build_model(s.model, s.aggregation.enabled)
    data.record.update(limited, **start_encoder(s, model))
    aux = add_auxiliary(s, data, spec.num_classes, held_out=[*d.unseen_classes, *(d.val_classes if use_val else [])])
    text = class_texts(s, model, spec.num_classes, aux)
    device = resolve_device(s.run.device)
    autocast(device, s.run.precision)  # validates the key before any work
    place_data(data, device, s.run.data_on_device)
    model = attach_fr_head(model, s, len(data.train.classes))
    return data, text, distributed.maybe_sync_batchnorm(model, s.run.sync_batchnorm).to(device), device


def add_auxiliary(s: Settings, data: ZeroShotData, num_classes: int, held_out: list[int]) -> list[tuple[str, int]]:
    """``aux_dataset``: each one's samples appended to ``data.train`` as classes after the dataset's
    (``num_classes + c`` for the first), minus its classes near a held-out one (``data/auxiliary.py``);
    returns each auxiliary dataset with its class count (none without ``aux_dataset``)."""
    d = s.data
    if not d.aux_dataset:
        return []
    if s.aggregation.enabled:
        raise ValueError("aux_dataset does not combine with aggregation=True: cross-sample aggregation pairs samples "
                         "by performer, and the auxiliary samples' performers are not the dataset's")

    def labels_of(dataset: str, k: int) -> np.ndarray:
        return text_embeddings.load_text(d.data_root, dataset, "labels", s.text.model, num_classes=k, dim=s.text.dim)

    t, offset, sizes, records = data.train, num_classes, [], {}
    xs, ys, classes = [t.x], [t.y], list(t.classes)
    for name in aux_names(d.aux_dataset, d.dataset):
        aux = load_auxiliary(d.data_root, name, d.dataset, held_out, d.max_frame, labels_of, d.aux_max_similarity)
        xs.append(torch.from_numpy(aux.x))
        ys.append(torch.from_numpy(aux.y + offset))
        classes += [offset + c for c in aux.kept]
        records[name] = aux.record()
        sizes.append((name, get_dataset(name, d.data_root).num_classes))
        offset += sizes[-1][1]
    data.train = Subset(torch.cat(xs), torch.cat(ys), classes)
    data.train_performer = None
    data.record.update(aux_dataset=d.aux_dataset, aux_max_similarity=d.aux_max_similarity,
                       aux_samples=sum(r["samples"] for r in records.values()),
                       aux_classes=sum(r["classes"] for r in records.values()), aux=records)
    return sizes


def start_encoder(s: Settings, model: torch.nn.Module) -> dict:
    """``init_from`` and ``freeze_backbone`` applied to a freshly built model; what the result records."""
    record = {}
    if s.init.source:
        record["init_from"] = init_encoder(model, s.init.source, s.run.mongo_url)
    if s.init.freeze:
        if not s.init.source:
            log.warning("freeze_backbone without init_from: the randomly initialised encoder is frozen "
                        "(the random-encoder baseline of a linear evaluation)")
        freeze_encoder(model)
        record["freeze_backbone"] = True
    return record


def with_batch_size(s: Settings, n_train: int) -> Settings:
    """``batch_size="auto"`` resolved from the training-set size (logged); a warning when an
    epoch has only a few optimiser steps (a small dataset with a large batch barely learns)."""
    bs = s.optim.batch_size
    if bs == "auto":
        bs = auto_batch_size(n_train)
        log.info("batch_size auto: %d for %d training samples (%d steps per epoch)", bs, n_train,
                 steps_per_epoch(n_train, bs))
        s = replace(s, optim=replace(s.optim, batch_size=bs))
    procs = distributed.world().size
    if bs % procs:
        raise ValueError(f"batch_size={bs} is the global batch of a launch of {procs} processes and must divide by "
                         f"{procs}; set batch_size to a multiple of {procs}")
    steps = steps_per_epoch(n_train, bs)
    if steps < FEW_STEPS:
        log.warning("only %d optimiser step%s per epoch (%d training samples, batch_size=%d): the model will "
                    "barely learn; use batch_size=\"auto\" (%d here) or a smaller batch_size", steps,
                    "" if steps == 1 else "s", n_train, bs, auto_batch_size(n_train))
    return s


def folder_of(s: Settings):
    """The run's folder (in a torchrun launch rank 0's, whose name holds its start time)."""
    return distributed.broadcast_object(run_folder(
        resume=s.run.resume, out_dir=s.run.out_dir, dataset=s.data.dataset, split=s.data.split,
        train_mode=s.run.train_mode, seed=s.run.seed))
