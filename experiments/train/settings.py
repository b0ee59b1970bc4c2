"""The run's configuration unpacked once, at the track boundary, into small typed settings.

``Settings.from_config(cfg)`` reads every entry the loop needs from the flat Sacred config
(``config.py`` holds every default, nowhere else does); the functions below the track
boundary take only the part they use. The full config stays available as
``Settings.config``: checkpoints and resume state carry it, so a checkpoint describes the
run that made it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSettings:
    dataset: str
    data_root: str
    split: str | int
    unseen_classes: tuple[int, ...]
    val_classes: tuple[int, ...]
    val_seed: int          # seeds the GZSL hold-out (and drew the validation classes)
    max_frame: int         # T the model sees
    gzsl: bool
    gzsl_holdout: float
    samples_per_class: int = 0  # limited scale: N training samples per class (0 = all), drawn with samples_seed
    samples_seed: int = 0
    aux_dataset: str = ""  # another prepared dataset's classes trained on beside the seen ones (data/auxiliary.py)
    aux_max_similarity: float = 0.5
    trainval: bool = False  # selection="snapshot": the validation classes are trained on as seen classes


@dataclass(frozen=True)
class ModelSettings:
    """The backbone's architecture entries (passed to its factory by name), the head and the temperature."""
    backbone: str
    modality: str          # the input stream the model converts joints into (module/head.py: InputStream)
    input_norm: str        # none | minmax: per-sequence normalisation inside the model, before the stream
    in_channels: int
    hidden_channels: int
    out_channels: int
    dropout: float
    graph_layout: str
    graph_strategy: str
    max_hop: int
    edge_importance: bool
    temporal_kernel: int
    num_person: int
    shift_impl: str
    shift_pos_grad: str
    formulation: str
    text_dim: int
    init_temperature: float
    learn_temperature: bool
    part_align: bool = False  # module/head.py: PartAwareModel
    part_weight: float = 1.0


@dataclass(frozen=True)
class TextSettings:
    kind: str
    model: str
    dim: int
    part_kind: str = "parts"  # the texts the body parts align with (part_align)


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    momentum: float
    weight_decay: float
    epoch_num: int
    batch_size: int | str  # "auto" until the track resolves it from the training-set size
    warmup_epochs: int
    lr_schedule: str
    lr_steps: tuple[int, ...]
    lr_gamma: float
    nesterov: bool
    train_repeat: int      # passes over the training set per epoch


@dataclass(frozen=True)
class AugmentSettings:
    """Training-batch augmentation (``data/augment.py``), on joints."""
    rotate: float
    scale: float
    shear: float
    crop: tuple[float, float]
    skelemix: float
    rotate_axes: str


@dataclass(frozen=True)
class FRSettings:
    """FR-Head's auxiliary loss (``module/frhead.py``)."""
    enabled: bool
    weight: float
    level_weights: tuple[float, ...]


@dataclass(frozen=True)
class SupervisedSettings:
    protocol: str
    label_smoothing: float
    val_fraction: float


@dataclass(frozen=True)
class AggregationSettings:
    """SkeletonX's cross-sample aggregation (``module/skeletonx.py``), in any training track."""
    enabled: bool = False
    weight: float = 0.1  # the aggregated features' loss weight (SkeletonX's w_xsample)


@dataclass(frozen=True)
class LossSettings:
    name: str
    alpha: float
    beta: float
    margin: float

    def kwargs(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "margin": self.margin}


@dataclass(frozen=True)
class ConseSettings:
    """ConSE at test time (``module/align.py: seen_mixture``)."""
    temperature: float = 0.1
    top_k: int = 0  # 0: every seen class

    @classmethod
    def from_config(cls, c: dict) -> "ConseSettings | None":
        """The run's ConSE (``conse``, ``conse_temperature``, ``conse_top_k``), or None when off."""
        return cls(float(c["conse_temperature"]), int(c["conse_top_k"])) if c["conse"] else None


@dataclass(frozen=True)
class AlignSettings:
    """PGFA's prototype alignment (``module/align.py``)."""
    support_factor: float
    min_support: int
    entropy_scale: float

    @classmethod
    def from_config(cls, c: dict) -> "AlignSettings | None":
        """The run's alignment (``support_factor``, ``min_support``, ``entropy_scale``), or None with ``DA=False``."""
        return cls(float(c["support_factor"]), int(c["min_support"]), float(c["entropy_scale"])) if c["DA"] else None


@dataclass(frozen=True)
class EvalSettings:
    selection: str                 # "val" | "test" | "folds" | "snapshot" | "last" (supervised)
    monitor_unseen: bool
    batch_size: int
    align: AlignSettings | None    # None: no alignment (DA=False)
    exemplar_seed: int             # one_shot
    one_shot_text_weight: float
    folds: int = 3                 # selection="folds": validation folds of the seen classes
    snapshot_start: float = 0.25   # selection="snapshot": averaged from this fraction of the epochs on
    conse: ConseSettings | None = None  # None: nearest text
    save_embeddings: bool = False  # every epoch's validation and unseen embeddings into the run folder

    @property
    def by_test(self) -> bool:
        return self.selection == "test"


@dataclass(frozen=True)
class AverageSettings:
    """Weight averaging (``experiments/train/averaging.py``): which weights are evaluated, selected and kept."""
    kind: str = "none"       # "none" | "ema" | "swa"
    ema_decay: float = 0.999  # ema: decay per optimiser step (the cap of its warm-up)
    swa_start: float = 0.75   # swa: average from this fraction of epoch_num on

    def record(self) -> dict:
        """The entries a result records, so a results table can tell the variants apart."""
        extra = {"ema": {"ema_decay": self.ema_decay}, "swa": {"swa_start": self.swa_start}}.get(self.kind, {})
        return {"weight_average": self.kind, **extra}


WEIGHT_AVERAGES = ("none", "ema", "swa")


def average_settings(c: dict) -> AverageSettings:
    """The averaging entries, checked: a bad value is a ``ValueError`` naming its key."""
    kind = c["weight_average"]
    if kind not in WEIGHT_AVERAGES:
        raise ValueError(f"weight_average must be one of {WEIGHT_AVERAGES}, got {kind!r}")
    decay, start = float(c["ema_decay"]), float(c["swa_start"])
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (a decay per optimiser step, e.g. 0.999), got {decay!r}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"swa_start must be in [0, 1) (a fraction of epoch_num), got {start!r}")
    return AverageSettings(kind, decay, start)


@dataclass(frozen=True)
class RunSettings:
    train_mode: str
    seed: int
    device: str
    precision: str
    data_on_device: str | bool
    out_dir: str
    resume: str
    checkpoint: str
    mongo_url: str
    tag: str
    sync_batchnorm: bool = False  # torchrun on CUDA (experiments/train/distributed.py)


@dataclass(frozen=True)
class InitSettings:
    """Where the encoder's starting weights come from (``experiments/train/init.py``)."""
    source: str = ""        # init_from: a run id, a run folder or a checkpoint ("" = random initialisation)
    freeze: bool = False    # freeze_backbone: the encoder is not trained (linear evaluation)


@dataclass(frozen=True)
class PretrainSettings:
    """Self-supervised pretraining (``experiments/train/pretrain.py``, ``module/moco.py``)."""
    on: str = "split"          # pretrain_on: split | protocol
    transductive: bool = False  # also the unlabelled test sequences
    dim: int = 128
    queue: int | str = "auto"
    momentum: float = 0.999
    temperature: float = 0.2
    mix: float = 1.0           # weight of the SkeleMix queries' loss (0: plain SkeletonCLR)
    mix_views: int = 1         # SkeleMixed views per batch (SkeleMixCLR+: 3)


@dataclass(frozen=True)
class Settings:
    data: DataSettings
    model: ModelSettings
    text: TextSettings
    optim: OptimSettings
    loss: LossSettings
    eval: EvalSettings
    run: RunSettings
    augment: AugmentSettings
    fr: FRSettings
    supervised: SupervisedSettings
    config: dict  # the full (plain, redacted) config, stored with checkpoints
    average: AverageSettings = AverageSettings()
    init: InitSettings = InitSettings()
    pretrain: PretrainSettings = PretrainSettings()
    aggregation: AggregationSettings = AggregationSettings()

    @classmethod
    def from_config(cls, cfg: dict) -> "Settings":
        """Unpack a run config (``config.py``'s keys); a missing entry is a ``KeyError`` naming it."""
        c = cfg
        align, conse = AlignSettings.from_config(c), ConseSettings.from_config(c)
        s = cls(
            data=DataSettings(c["dataset"], str(c["data_root"]), c["split"], tuple(c["unseen_classes"]),
                              tuple(c["val_classes"]), int(c["val_seed"]), int(c["max_frame"]), bool(c["gzsl"]),
                              float(c["gzsl_holdout"]), int(c["samples_per_class"]), int(c["samples_seed"]),
                              str(c["aux_dataset"]), float(c["aux_max_similarity"]), bool(c["trainval"])),
            model=ModelSettings(c["backbone"], c["modality"], c["input_norm"], c["in_channels"], c["hidden_channels"], c["out_channels"], c["dropout"],
                                c["graph_layout"], c["graph_strategy"], c["max_hop"], c["edge_importance"],
                                c["temporal_kernel"], c["num_person"], c["shift_impl"], c["shift_pos_grad"],
                                c["formulation"], int(c["text_dim"]), float(c["init_temperature"]),
                                bool(c["learn_temperature"]), bool(c["part_align"]), float(c["part_weight"])),
            text=TextSettings(c["text_kind"], c["text_model"], int(c["text_dim"]), str(c["part_text_kind"])),
            optim=OptimSettings(float(c["lr"]), float(c["momentum"]), float(c["weight_decay"]), int(c["epoch_num"]),
                                c["batch_size"] if c["batch_size"] == "auto" else int(c["batch_size"]),
                                int(c["warmup_epochs"]), c["lr_schedule"], tuple(c["lr_steps"]), float(c["lr_gamma"]),
                                bool(c["nesterov"]), int(c["train_repeat"])),
            loss=LossSettings(c["loss_type"], float(c["loss_alpha"]), float(c["loss_beta"]), float(c["loss_margin"])),
            eval=EvalSettings(c["selection"], bool(c["monitor_unseen"]), int(c["eval_batch_size"]), align,
                              int(c["exemplar_seed"]), float(c["one_shot_text_weight"]), int(c["val_folds"]),
                              float(c["snapshot_start"]), conse, bool(c["save_embeddings"])),
            run=RunSettings(c["train_mode"], int(c["seed"]), c["device"], c["precision"], c["data_on_device"],
                            c["out_dir"], c["resume"], str(c["checkpoint"]), c["mongo_url"], c["tag"],
                            bool(c["sync_batchnorm"])),
            augment=AugmentSettings(float(c["aug_rotate"]), float(c["aug_scale"]), float(c["aug_shear"]),
                                    _pair(c["aug_crop"], "aug_crop"), float(c["skelemix"]), str(c["aug_rotate_axes"])),
            fr=FRSettings(bool(c["fr_head"]), float(c["fr_weight"]), tuple(float(w) for w in c["fr_level_weights"])),
            supervised=SupervisedSettings(str(c["protocol"]), float(c["label_smoothing"]), float(c["val_fraction"])),
            config=dict(cfg),
            average=average_settings(c),
            init=InitSettings(str(c["init_from"]), bool(c["freeze_backbone"])),
            pretrain=PretrainSettings(str(c["pretrain_on"]), bool(c["transductive"]), int(c["moco_dim"]),
                                      c["moco_queue"] if c["moco_queue"] == "auto" else int(c["moco_queue"]),
                                      float(c["moco_momentum"]), float(c["moco_temperature"]), float(c["moco_mix"]),
                                      int(c["moco_mix_views"])),
            aggregation=AggregationSettings(bool(c["aggregation"]), float(c["aggregation_weight"])),
        )
        check_selection(s)
        return s


def check_selection(s: Settings) -> None:
    """What only some selection rules allow, checked when a config is unpacked: before any training
    (a folds run's stages, which select by "val", included)."""
    if s.data.trainval and s.eval.selection != "snapshot":
        raise ValueError("trainval=True trains on the validation classes, so nothing is left to select an epoch on: "
                         f"it needs selection='snapshot' (got selection={s.eval.selection!r})")
    if s.eval.save_embeddings and s.eval.selection not in ("val", "snapshot"):
        raise ValueError("save_embeddings=True keeps the embeddings of a run selected on validation classes or by the "
                         f"snapshot ensemble, which rescoring can repeat; got selection={s.eval.selection!r}")


def _pair(value, key: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be two numbers [low, high], got {value!r}") from None
    return lo, hi
