"""Checks of a run's inputs that need no framework, made before the run is created and
recorded (``experiments.experiment.Experiment.run``): the prepared split files and the
class texts. Each failure names the file or entry and the command that fixes it."""
from __future__ import annotations

from pathlib import Path

from data.arrays import part_paths
from data.catalog import get_dataset, split_dir
from data.samples import samples_dir
from descriptions import load_class_texts
from experiments.files import STATE_FILE
from text.embeddings import kinds_of


def preflight(cfg: dict) -> None:
    """Raise ``FileNotFoundError`` / ``TextError`` / ``ValueError`` for inputs a run cannot use."""
    from experiments.train.distributed import check_launch

    check_launch(cfg)  # a torchrun launch of what it cannot run: refused before anything is recorded
    spec = get_dataset(cfg["dataset"], cfg["data_root"])
    mode = cfg["train_mode"]
    on_samples = mode in ("supervised", "linear_eval") or (mode == "pretrain" and cfg.get("pretrain_on") == "protocol")
    if on_samples:  # every class, from the prepared samples; no class texts
        d = samples_dir(cfg["data_root"], cfg["dataset"], spec.frames)
        if cfg["dataset"] != "demo" and not (d / "manifest.json").is_file():
            raise FileNotFoundError(f"train_mode={mode!r} reads the prepared samples of {cfg['dataset']} ({d} has "
                                    f"none); prepare them with: {spec.prepare}")
    elif cfg["dataset"] != "demo":  # the demo is generated on first use
        d = split_dir(cfg["data_root"], cfg["dataset"], cfg["split"])
        missing = [p for part in ("seen_train", "unseen") for p in part_paths(d, part) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"missing data file {missing[0]} ({cfg['dataset']} split {cfg['split']}); "
                                    f"prepare it with: {spec.prepare}")
    part_kinds = kinds_of(cfg["part_text_kind"]) if cfg.get("part_align") else []
    kinds = list(dict.fromkeys(kinds_of(cfg["text_kind"]) + part_kinds))  # the class texts a run aligns with
    if mode not in ("supervised", "linear_eval", "pretrain"):  # the tracks that align with class texts
        for kind in kinds:
            load_class_texts(cfg["dataset"], kind, spec.num_classes, data_root=cfg["data_root"])
    if cfg.get("aux_dataset"):
        check_auxiliary(cfg, mode, kinds)
    init = str(cfg.get("init_from") or "")
    if init and not init.isdigit() and not Path(init).expanduser().exists():
        raise FileNotFoundError(f"init_from={init!r}: no such checkpoint or run folder (give a best.pt, a folder "
                                "holding one, or the id of a recorded run)")
    if cfg["resume"] and not (Path(cfg["resume"]) / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume={cfg['resume']!r}: no {STATE_FILE} there (a run writes it after each epoch)")


def check_auxiliary(cfg: dict, mode: str, kinds: list[str]) -> None:
    """``aux_dataset``: a zero-shot track, and each auxiliary dataset's prepared samples and class texts
    (``kinds``, and the ``labels`` its classes are filtered by)."""
    from data.auxiliary import aux_names, prepared_samples

    if mode not in ("main", "sota", "one_shot", "test"):
        raise ValueError(f"aux_dataset={cfg['aux_dataset']!r}: auxiliary classes are for the zero-shot tracks (main, "
                         f"sota, one_shot), not train_mode={mode!r}")
    for name in aux_names(cfg["aux_dataset"], cfg["dataset"]):
        prepared_samples(cfg["data_root"], name)
        for kind in dict.fromkeys(["labels", *kinds]):
            load_class_texts(name, kind, get_dataset(name, cfg["data_root"]).num_classes, data_root=cfg["data_root"])
