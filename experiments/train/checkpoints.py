"""Finding a stored checkpoint and the config it was trained with.

A checkpoint reference (``checkpoint=`` in the config) is one of

* the path of a ``best.pt``,
* a run folder holding ``best.pt`` (``runs/<time>-...``, or a run's ``out_dir``),
* the id of a run recorded in MongoDB: its ``best.pt`` artifact is fetched into
  ``runs/fetched/run-<id>/best.pt``.

For ``train_mode="test"``, ``checkpoint_updates`` is the one explicit step that applies the
checkpoint's model entries (``MODEL_KEYS``), and its dataset and split where the user gave
none, as config updates of the evaluation run when it starts (``config.Experiment.run``),
so they are recorded in its config. Building a configuration never reads a checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import gridfs
import torch

from experiments.files import BEST_FILE, RUNS_DIR, STREAMS_FILE, write_bytes_atomic
from experiments.tracking.database import connect, resolve_target

FETCH_DIR = RUNS_DIR / "fetched"

# Config entries that define the trained model and what it expects as input.
MODEL_KEYS = (
    "backbone", "modality", "input_norm", "in_channels", "hidden_channels", "out_channels", "dropout", "graph_layout", "graph_strategy",
    "max_hop", "edge_importance", "temporal_kernel", "num_person", "text_kind", "text_model", "text_dim",
    "init_temperature", "learn_temperature", "max_frame", "part_align", "part_weight", "part_text_kind", "aggregation",
)


class CheckpointError(ValueError):
    """A checkpoint reference that does not lead to a usable checkpoint."""


def resolve_checkpoint(ref: str, mongo_url: str = "") -> Path:
    """The local ``best.pt`` a reference points at (fetching it from MongoDB for a run id)."""
    if not ref:
        raise CheckpointError("train_mode='test' needs checkpoint=<path of a best.pt, a run folder, or a run id>")
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        path = path / BEST_FILE if (path / BEST_FILE).is_file() or not (path / STREAMS_FILE).is_file() \
            else path / STREAMS_FILE
    recorded = not path.is_file() and str(ref).isdigit()
    if recorded:
        path = fetch_from_mongo(int(ref), mongo_url)
    elif not path.is_file():
        raise CheckpointError(f"checkpoint {ref!r}: no such file or run folder (expected a best.pt, a folder "
                              f"holding one, or the id of a run recorded in MongoDB)")
    if path.name == STREAMS_FILE:  # one model per stream: in its folder, or recorded as <stream>_best.pt
        manifest = json.loads(path.read_text())
        where = f"its artifacts {', '.join(f'{m}_{BEST_FILE}' for m in manifest['streams'])} (pass the file's " \
            "path)" if recorded else ", ".join(manifest["checkpoints"])
        raise CheckpointError(f"checkpoint {ref}: a stream ensemble run (one model per stream); evaluate one of "
                              f"its streams' checkpoints: {where}")
    return path


def fetch_from_mongo(run_id: int, mongo_url: str = "") -> Path:
    """Download run ``run_id``'s ``best.pt`` artifact (a streams run's ``streams.json``) into
    ``runs/fetched/run-<id>/`` (every time: run ids repeat across databases, so a copy kept by id could be
    another database's checkpoint)."""
    return fetch_artifact(run_id, (BEST_FILE, STREAMS_FILE), FETCH_DIR / f"run-{run_id}", mongo_url,
                          what="checkpoint")


def fetch_artifact(run_id: int, names: tuple[str, ...], folder: Path, mongo_url: str = "",
                   what: str = "run") -> Path:
    """The first of ``names`` among run ``run_id``'s artifacts, written to ``folder/<name>``.

    Raises ``CheckpointError`` (``what`` names the reference) for an unknown run or a missing artifact."""
    db = connect(resolve_target(mongo_url))
    run = db.runs.find_one({"_id": run_id}, {"artifacts": 1, "status": 1})
    if run is None:
        raise CheckpointError(f"{what} {run_id}: no run with that id in the database")
    art = next((a for a in run.get("artifacts", []) if a.get("name") in names), None)
    if art is None:
        raise CheckpointError(f"run {run_id} ({run.get('status')}) has no {' / '.join(names)} artifact")
    target = folder / art["name"]
    write_bytes_atomic(target, gridfs.GridFS(db).get(art["file_id"]).read())
    return target


def load_checkpoint(path: str | Path) -> dict:
    """``{"model", "config", "epoch", "metrics"}`` of a checkpoint (``weights_only`` load)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model weights and config)")
    return ckpt


def model_entries(cfg: dict) -> dict:
    """The ``MODEL_KEYS`` entries of a (checkpoint's) config."""
    return {k: cfg[k] for k in MODEL_KEYS if k in cfg}


def checkpoint_updates(ref: str, mongo_url: str, given: dict, dataset: str) -> dict:
    """Config updates of a ``train_mode="test"`` run: the checkpoint's model entries, and its
    dataset and split unless ``given`` (the user's own updates) names them; the split only
    when the evaluated dataset is the checkpoint's own. The user's updates win.

    Args:
        ref: the ``checkpoint`` entry; mongo_url: where a run id is looked up.
        given: the config updates the user gave.
        dataset: the dataset the configuration resolved to without these updates.
    """
    trained = load_checkpoint(resolve_checkpoint(ref, mongo_url))["config"]
    updates = {k: v for k, v in model_entries(trained).items() if k not in given}
    if "dataset" not in given and "dataset" in trained:
        updates["dataset"] = trained["dataset"]
        dataset = trained["dataset"]
    if "split" not in given and trained.get("dataset") == dataset and "split" in trained:
        updates["split"] = trained["split"]
    return updates
