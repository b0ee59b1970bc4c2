"""Starting a model from another run's encoder (``init_from``) and freezing it (``freeze_backbone``).

``init_from`` names a checkpoint the way ``checkpoint`` does (``checkpoints.resolve_checkpoint``):
a ``best.pt``, a run folder, or the id of a recorded run. Only the encoder is taken: the
checkpoint's ``backbone.*`` entries whose name and shape match the model's. A self-supervised
run's checkpoint (``train_mode="pretrain"``) stores its query encoder under that name; its
projector, momentum encoder and queue are not encoders of the new model and are skipped. Heads
(text projection, classifier, part heads) always start fresh. What was loaded and skipped is
logged and returned for the run's result, with the source (path, run id, its track and dataset).
"""
from __future__ import annotations

import logging

import torch

from experiments.train.checkpoints import CheckpointError, load_checkpoint, resolve_checkpoint

log = logging.getLogger("pgfa")
ENCODER_PREFIX = "backbone."


def init_encoder(model: torch.nn.Module, source: str, mongo_url: str = "") -> dict:
    """Copy the encoder weights of checkpoint ``source`` into ``model`` (module docstring).

    Returns:
        The record: ``source``, ``path``, the source run's ``train_mode`` / ``dataset`` / ``run``,
        ``loaded`` (count), ``loaded_fraction`` (of the model's encoder weights, by element),
        ``skipped_shape`` (names whose shapes differ), ``skipped_source`` (count of the source's
        other entries), ``not_loaded`` (the model's encoder entries left as built).

    Raises:
        CheckpointError: no usable checkpoint, or not one encoder entry fits the model.
    """
    path = resolve_checkpoint(source, mongo_url)
    ckpt = load_checkpoint(path)
    theirs = ckpt["model"]
    mine = model.state_dict()
    loaded, wrong_shape = {}, []
    for name, value in theirs.items():
        if not name.startswith(ENCODER_PREFIX) or name not in mine:
            continue
        if tuple(value.shape) != tuple(mine[name].shape):
            wrong_shape.append(f"{name} {tuple(value.shape)} vs {tuple(mine[name].shape)}")
            continue
        loaded[name] = value
    if not loaded:
        raise CheckpointError(f"init_from={source!r} ({path}): none of its {len(theirs)} entries is an encoder "
                              f"weight ({ENCODER_PREFIX}*) of this model's shape"
                              + (f"; shapes differ: {wrong_shape[:3]}" if wrong_shape else ""))
    model.load_state_dict(loaded, strict=False)
    not_loaded = sorted(k for k in mine if k.startswith(ENCODER_PREFIX) and k not in loaded)
    encoder = {k: v.numel() for k, v in mine.items() if k.startswith(ENCODER_PREFIX) and v.is_floating_point()}
    fraction = sum(encoder[k] for k in loaded if k in encoder) / max(1, sum(encoder.values()))
    if fraction < 0.5:
        log.warning("init_from %s: only %.0f%% of this model's encoder weights fit the checkpoint (%d tensors of "
                    "another shape): is it the same backbone and size?", source, 100 * fraction, len(wrong_shape))
    trained = ckpt.get("config", {})
    record = {"source": str(source), "path": str(path), "train_mode": trained.get("train_mode"),
              "dataset": trained.get("dataset"), "split": trained.get("split"), "seed": trained.get("seed"),
              "epoch": int(ckpt.get("epoch", -1)), "loaded": len(loaded), "loaded_fraction": round(fraction, 4),
              "skipped_shape": wrong_shape,
              "skipped_source": len(theirs) - len(loaded) - len(wrong_shape), "not_loaded": not_loaded}
    if str(source).isdigit():
        record["run"] = int(source)
    log.info("init_from %s: loaded %d encoder tensors from %s (%s run, epoch %d); skipped %d other entries%s%s",
             source, len(loaded), path, record["train_mode"], record["epoch"] + 1, record["skipped_source"],
             f", {len(wrong_shape)} of another shape ({wrong_shape[0]}, ...)" if wrong_shape else "",
             f"; {len(not_loaded)} encoder tensors of this model not in it ({not_loaded[0]}, ...)" if not_loaded
             else "")
    return record


def freeze_encoder(model: torch.nn.Module) -> int:
    """Stop training ``model.backbone``: no gradients, and it stays in eval mode (BatchNorm statistics
    fixed) when the model is put in training mode (``module.head``: ``frozen_backbone``). Returns the
    number of frozen parameters."""
    if not hasattr(model, "frozen_backbone"):
        raise ValueError(f"freeze_backbone: {type(model).__name__} has no encoder to freeze")
    n = 0
    for p in model.backbone.parameters():
        p.requires_grad_(False)
        n += p.numel()
    model.frozen_backbone = True
    model.train(model.training)
    log.info("freeze_backbone: %d encoder parameters frozen (eval mode); training the heads only", n)
    return n
