"""The Sacred experiment and its configuration.

Everything derives from ``train_mode``, ``dataset`` and ``split``: the unseen and
validation classes, the data paths, the graph layout, the text dimension and the
dataset's paper hyper-parameters (lr, support_factor), so that
``python main.py with dataset=ntu120 split=4`` switches all of them at once. Any
entry can still be overridden on the command line; unknown keys are refused.

Building the configuration is pure: it reads only small static data (the dataset
catalog, the split lists, a local text model's config file) and imports no framework.
The checks and the one step that reads a checkpoint (``train_mode="test"``) run when a
run starts (``experiments/experiment.py``), and what they apply is recorded in the run's config.
"""
from __future__ import annotations

from sacred import Ingredient
from sacred.host_info import host_info_gatherer
from sacred.settings import SETTINGS

from data.catalog import (TRACKS, dataset_splits, default_split, default_val_count, draw_val_classes, get_dataset,
                          split_spec)
from experiments.experiment import Experiment
from experiments.files import DATA_DIR
from experiments.runtime import applied_allocator
from experiments.suite.refine import refine_ingredient as refine  # the refine_texts command's entries
from experiments.tracking.output import clean_output, experiment_logger, plain, project_sources
from module.defaults import model_defaults
from text.models import text_dim as _text_dim

SETTINGS.CAPTURE_MODE = "sys"  # capture the run's output without a pseudo-terminal
SETTINGS.DISCOVER_SOURCES = "none"  # the project's sources are added below (Sacred's "dir" also takes a .venv)

# Inputs of the data commands (prepare, prepare_generic, make_split); see the README's
# "Preparing datasets". Ingredients keep them under their own prefix: raw.path=..., new_split.seeds=[...]
raw = Ingredient("raw")
new_split = Ingredient("new_split")


@raw.config
def raw_config():
    path = ""  # the raw input: a folder (or list of folders) of files, or pyskl's .pkl
    format = "auto"  # ntu60/ntu120: skeleton | pyskl | auto (by the path's suffix)
    labels = ""  # PKU-MMD: the label folder (Train_Label_PKU_final)
    split_file = ""  # PKU-MMD: cross-subject.txt
    protocol = ""  # train/test protocol; "" = the dataset's standard (xsub; NW-UCLA xview)
    splits = []  # split ids to write; [] = every zero-shot split of the dataset; "none" = the samples only
    workers = 1  # reader processes
    shard_size = 1000  # items per shard: the unit of memory use and of resuming
    name = ""  # prepare_generic: the new dataset's name
    layout = "ntu25"  # prepare_generic: graph layout of its skeletons (module/graph.py)
    persons = 1  # prepare_generic: actors per sample
    origin_joint = ""  # prepare_generic: joint put at the origin; "" = the layout's default
    train_subjects = []  # generic data without a split column: the training subjects


@new_split.config
def new_split_config():
    unseen = []  # explicit unseen class ids (then ids=[one name])
    val = []  # explicit validation class ids
    num_unseen = 5  # drawn splits: unseen classes per split
    num_val = None  # drawn splits: validation classes (None = as many as unseen, at most a quarter of the seen)
    seeds = [1, 2, 3]  # one drawn split per seed
    ids = []  # split ids; [] = the seeds


# Sweeps and the results table (README: Sweeps and the results table).
sweep = Ingredient("sweep")
report = Ingredient("report")
ablation = Ingredient("ablation")


@sweep.config
def sweep_config():
    datasets = ["demo"]  # datasets of the grid
    splits = []  # split ids; [] = every split of each dataset for the track (base.train_mode, default main)
    seeds = [0, 1, 2]
    variants = {}  # name -> config overrides, stored as each run's tag; {} = one variant named "default"
    base = {}  # overrides for every point (a variant's entries win), e.g. {"epoch_num": 20}
    dry_run = False  # list what would run, start nothing
    workers = 1  # points run at once on this machine; sweeps on other machines against one database share the grid
    devices = []  # CUDA_VISIBLE_DEVICES of the workers' runs, round-robin, e.g. [0, 1, 2, 3]; [] = inherited
    lease_s = 120.0  # a point's claim lapses this long after its worker's last heartbeat (a dead worker's point)
    wait = True  # when the points left run in other workers: wait for them (False: return at once)


@sweep.capture
def sweep_settings(datasets, splits, seeds, variants, base, dry_run, workers, devices, lease_s, wait) -> dict:
    """The sweep's entries. Captured by the ingredient, so the free-form dicts ``variants`` and
    ``base`` may hold any config overrides (Sacred notes each added key with a warning)."""
    if isinstance(datasets, str) or isinstance(splits, str) or isinstance(devices, str):
        raise ValueError("sweep.datasets / sweep.splits / sweep.devices must be lists; quote them on the command "
                         "line: \"sweep.datasets=['demo']\" sweep.splits=[1,2] sweep.devices=[0,1]")
    if int(workers) < 1 or float(lease_s) <= 0:
        raise ValueError(f"sweep.workers must be at least 1 and sweep.lease_s positive (got {workers}, {lease_s})")
    return {"datasets": list(datasets), "splits": list(splits), "seeds": list(seeds),
            "variants": plain(variants) or {"default": {}}, "base": plain(base), "dry_run": bool(dry_run),
            "workers": int(workers), "devices": [str(d) for d in devices], "lease_s": float(lease_s),
            "wait": bool(wait)}


def sweep_options(settings: dict) -> dict:
    """The keyword arguments of ``run_sweep`` among ``sweep_settings()``."""
    return {k: settings[k] for k in ("dry_run", "workers", "devices", "lease_s", "wait")}


@ablation.config
def ablation_config():
    components = []  # names in experiments/suite/ablation.py: COMPONENTS (or ablation.extra): one "+name" row each
    combos = []  # combinations, e.g. [["ema", "aug"]]: one "+ema+aug" row each
    extra = {}  # the study's own components: name -> config overrides
    run = True  # False: only the table, from the runs already recorded
    out = ""  # also write the table to this Markdown file


@ablation.capture
def ablation_settings(components, combos, extra, run, out) -> dict:
    """Captured by the ingredient, so the free-form ``extra`` may hold any overrides (Sacred notes each added key)."""
    return {"components": list(components), "combos": [list(c) for c in combos], "extra": plain(extra),
            "run": bool(run), "out": str(out)}

@report.config
def report_config():
    datasets = []  # [] = all
    tags = []  # [] = all variants
    out = "results"  # folder for results.md, results.csv, results.png


@host_info_gatherer("allocator")
def _allocator() -> str:
    """The memory allocator the entry point applied (experiments/runtime.py); '' for none."""
    return applied_allocator()


ex = Experiment("pgfa", ingredients=[raw, new_split, sweep, report, ablation, refine], save_git_info=False,
                additional_host_info=[_allocator])
ex.logger = experiment_logger()  # its lines land in the captured output too
ex.captured_out_filter = clean_output  # progress-bar redraws resolved, output capped (experiments/tracking/output.py)
for _source in project_sources():
    ex.add_source_file(str(_source))

# Hyper-parameters that differ by track (the dataset's own defaults override these).
# Setting 2 ("sota"): Shift-GCN, 50 frames stretched to 64. One-shot: 100 epochs, as the original (not the demo).
# Supervised (FR-Head/CTR-GCN tables): classification over every class of the dataset's protocol.
TRACK_DEFAULTS: dict[str, dict] = {"main": {}, "sota": {"backbone": "shiftgcn", "max_frame": 64},
                                   "test": {}, "one_shot": {"epoch_num": 100}, "supervised": {},
                                   "ensemble": {},
                                   # SkeletonCLR / SkeleMixCLR's pretraining and linear evaluation schedules
                                   "pretrain": {"selection": "last", "aug_shear": 0.5, "aug_crop": [0.5, 1.0],
                                                "lr": 0.1, "weight_decay": 1e-4, "epoch_num": 300,
                                                "lr_steps": [], "warmup_epochs": 0},
                                   "linear_eval": {"freeze_backbone": True, "lr": 3.0, "weight_decay": 0.0,
                                                   "epoch_num": 150, "lr_steps": [80], "warmup_epochs": 0}}


def check_track_split(train_mode: str, dataset: str, split: str | int, data_root: str | None = None) -> None:
    """Setting-2 numbers are only comparable on SynSE's splits: where a dataset publishes
    splits for the sota track, ``train_mode="sota"`` must use one of them. (The demo dataset
    has none, so its splits stand in for a tiny Setting-2 run.)"""
    if train_mode != "sota":
        return
    published = [k for k, spec in dataset_splits(dataset, data_root).items() if spec["track"] == "sota"]
    if published and str(split) not in published:
        raise ValueError(f"train_mode='sota' (Setting 2) uses the SynSE splits of {dataset}: {published}; "
                         f"got split={split!r}. For Shift-GCN on another split use train_mode='main' "
                         f"backbone='shiftgcn' max_frame=64")


@ex.config
def config():
    train_mode = "main"  # main (Setting 1) | sota (Setting 2) | test | one_shot | supervised | ensemble | pretrain | linear_eval
    if train_mode not in TRACKS:
        raise ValueError(f"unknown train_mode {train_mode!r}; choose one of {list(TRACKS)}")
    # Where the run is recorded (experiments/tracking/observer.py). Credentials never reach the stored config.
    mongo_url = ""  # "" = $PGFA_MONGO_URL if set, else the embedded server; or mongodb://user:pass@host:port/db
    offline = False  # True: record locally only; `python main.py sync` uploads to MongoDB later
    checkpoint = ""  # train_mode="test": a best.pt, a run folder or a MongoDB run id (its model, dataset, split apply)
    ensemble_members = []  # train_mode="ensemble": run ids, run folders or scores files (experiments/suite/ensemble.py)
    ensemble_weights = []  # [] = FR-Head's stream weights where they apply, else equal (recorded in the result)

    dataset = "demo"  # demo | ntu60 | ntu120 | pku | utd_mhad | nw_ucla | a generic dataset
    data_root = str(DATA_DIR)  # arrays in <data_root>/zeroshot/<dataset>/split_<k>, texts in <data_root>/language
    split = default_split(dataset, train_mode, data_root)
    seed = 0
    device = "auto"  # auto = cuda if available, else cpu (torchrun: cuda:LOCAL_RANK)
    sync_batchnorm = False  # torchrun on CUDA: BatchNorm statistics over the global batch (experiments/train/distributed.py)
    dist_timeout = 600  # torchrun: seconds a collective waits for the other processes before the run fails
    tag = ""  # a label for this run's variant (sweeps set it; the results table groups by it)

    _spec = get_dataset(dataset, data_root)
    _split = split_spec(dataset, split, data_root)
    check_track_split(train_mode, dataset, split, data_root)
    _d = {**TRACK_DEFAULTS[train_mode], **_spec.defaults}

    # T the model sees (other lengths are resampled); a track's own (Setting 2: 64) wins over a dataset's
    max_frame = TRACK_DEFAULTS[train_mode].get("max_frame", _d.get("max_frame", _spec.frames))
    val_seed = 0  # draws the validation classes where the split publishes none (supervised: the validation part)
    if train_mode in ("supervised", "linear_eval", "ensemble"):  # every class is trained and tested: no class split
        unseen_classes, val_classes = [], []
    else:
        unseen_classes = list(_split["unseen"])
        # where the split publishes none: drawn from the seen classes (data/catalog.py: default_val_count)
        val_classes = list(_split["val"]) if _split["val"] else draw_val_classes(
            _spec.num_classes, unseen_classes, default_val_count(_spec.num_classes, len(unseen_classes)), val_seed)
    out_dir = ""  # checkpoints and resumable state; "" = runs/<time>-<dataset>-split<k>-<mode>-seed<s>
    resume = ""  # a run folder holding last.pt: continue that run where it stopped (same config)

    backbone = _d.get("backbone", "stgcn")  # stgcn | shiftgcn | ctrgcn (module/registry.py)
    modality = _d.get("modality", "joint")  # input stream: joint | bone | joint_motion | bone_motion (data/streams.py)
    streams = _d.get("streams", [])  # >= 2 modalities: one training each, scored fused (experiments/train/streams.py)
    input_norm = "none"  # none | minmax: each sequence scaled per axis to [-1, 1] in the model (FR-Head's NW-UCLA feeder)
    _m = {**model_defaults(backbone), "graph_layout": _spec.layout, "num_person": _spec.num_person, **_d}
    in_channels = _m["in_channels"]
    hidden_channels = _m["hidden_channels"]  # module/defaults.py: ST-GCN 16, Shift-GCN 64
    out_channels = _m["out_channels"]  # skeleton embedding size before the projection head
    dropout = _m["dropout"]
    graph_layout = _m["graph_layout"]
    graph_strategy = _m["graph_strategy"]
    max_hop = _m["max_hop"]
    edge_importance = _m["edge_importance"]
    temporal_kernel = _m["temporal_kernel"]
    num_person = _m["num_person"]  # M the model is built for (Shift-GCN's input BatchNorm)
    shift_impl = _m["shift_impl"]  # Shift-GCN temporal shift: auto (CUDA kernel for CUDA tensors, else dwconv) | cuda | dwconv | ref
    shift_pos_grad = _m["shift_pos_grad"]  # constrained (the original's sign steps) | exact (the true derivative)
    formulation = _m["formulation"]  # fast | plain: the same backbone math, straightforwardly formulated (same parameters)
    precision = "fp32"  # fp32 | bf16 (forward under bfloat16 autocast, on CPU or CUDA; float32 weights and loss)
    data_on_device = "auto"  # auto (keep the arrays on the GPU when they fit) | True | False

    text_kind = _d.get("text_kind", "des")  # labels | des | parts | a text ensemble, e.g. "labels+des+parts" (mean of unit rows)
    text_model = _d.get("text_model", "mpnet")  # mpnet (768-d, the paper's) | minilm (384-d) | a local model path
    text_dim = _text_dim(text_model)
    init_temperature = _d.get("init_temperature", 0.07)
    learn_temperature = _d.get("learn_temperature", True)  # False reproduces the original's fixed temperature
    # part-aware alignment (module/head.py): cos(global, text) + part_weight * mean cosine of the parts with their texts
    part_align = _d.get("part_align", False)
    part_weight = _d.get("part_weight", 1.0)
    part_text_kind = _d.get("part_text_kind", "parts")

    lr = _d.get("lr", 0.05)
    momentum = 0.9
    nesterov = _d.get("nesterov", False)  # Nesterov momentum (CTR-GCN/FR-Head use it)
    weight_decay = _d.get("weight_decay", 5e-4)
    epoch_num = _d.get("epoch_num", 50)
    batch_size = _d.get("batch_size", "auto")  # auto: from the training-set size (several steps per epoch)
    train_repeat = _d.get("train_repeat", 1)  # passes over the training set per epoch (FR-Head's NW-UCLA feeder: 5)
    eval_batch_size = 256
    warmup_epochs = _d.get("warmup_epochs", 5)
    lr_schedule = "step"  # step | cos
    lr_steps = _d.get("lr_steps", [50, 80])
    lr_gamma = 0.1
    loss_type = "kl"  # kl | klv2 | mse | kl+mse | kl+kd | kl+cosface | kl+sphereface | kl+margin
    loss_alpha = 1.0
    loss_beta = 1.0
    loss_margin = 1.0  # m of the margin variants

    # Augmentation of the training batches (data/augment.py), on joints, before the input stream
    aug_rotate = _d.get("aug_rotate", 0.0)  # max rotation per sequence about each axis, radians (CTR-GCN: 0.3)
    aug_rotate_axes = "xyz"  # the axes rotated about (FR-Head's NW-UCLA feeder: "xy", up to 60 degrees)
    aug_scale = _d.get("aug_scale", 0.0)  # per-axis scale 1 ± this (pyskl RandomScale: 0.1)
    aug_shear = _d.get("aug_shear", 0.0)  # shear coefficients within ± this
    aug_crop = _d.get("aug_crop", [1.0, 1.0])  # temporal crop of this fraction range, resized back (CTR-GCN: [0.5, 1])
    skelemix = _d.get("skelemix", 0.0)  # probability per batch of SkeleMix (body parts x a time span), mixed targets
    # FR-Head (module/frhead.py): multi-level contrastive feature refinement, an auxiliary loss in every track
    fr_head = _d.get("fr_head", False)
    fr_weight = 0.1  # weight of the FR-Head loss beside the track's loss (FR-Head's w_cl_loss)
    fr_level_weights = [0.1, 0.2, 0.5, 1.0]  # low, mid, high, final levels (ST-Multi-Level, FR-Head's README)

    # supervised track: classification over the dataset's classes under its standard protocol
    protocol = ""  # "" = the dataset's standard (NW-UCLA xview, UTD-MHAD xsub, NTU xsub); or xview / xset
    label_smoothing = 0.0  # cross-entropy label smoothing
    val_fraction = 0.1  # share of each class's training samples held out (seeded by val_seed) for selection

    # val: the epoch best on validation data (zero-shot: held-out seen classes; supervised: its validation part)
    # test: best on test accuracy (the original's / the published tables' pick; labelled in the result)
    # last: the last epoch (supervised; labelled). folds: the epoch best over val_folds folds, then every seen class
    # snapshot (zero-shot): no pick; every epoch's embeddings from snapshot_start · epoch_num on averaged
    selection = _d.get("selection", "val") if train_mode in ("main", "sota", "one_shot", "test") else \
        TRACK_DEFAULTS[train_mode].get("selection", "val")  # a dataset's default is a zero-shot one (pretrain: last)
    val_folds = 3
    snapshot_start = 0.25
    trainval = _d.get("trainval", False) and selection == "snapshot"  # the validation classes trained on too
    conse = _d.get("conse", False)  # ConSE at test time (module/align.py: seen_mixture): a sample = its seen-text mix
    conse_temperature = 0.1  # the softmax temperature over the cosines to the seen classes' texts
    conse_top_k = 0  # mix only the k most similar seen classes (0: all)
    monitor_unseen = True  # log unseen top-1 per epoch (monitoring only, never used for selection)
    save_embeddings = False  # each epoch's val/unseen embeddings kept, to rescore (experiments/train/rescore.py)
    # Weight averaging (experiments/train/averaging.py): the averaged weights are evaluated, selected and kept
    weight_average = "none"  # none | ema (exponential moving average per optimiser step) | swa (uniform, per epoch)
    ema_decay = 0.999  # ema: decay per optimiser step (capped by a warm-up, (1 + n) / (10 + n) after n updates)
    swa_start = 0.75  # swa: average the weights at the end of every epoch from this fraction of epoch_num on

    DA = True  # apply PGFA's prototype-guided text feature alignment at test time
    support_factor = _d.get("support_factor", 0.9)  # the fraction of each predicted class a prototype averages
    min_support = 1
    entropy_scale = 1.0

    # Limited scale (SkeletonX's protocol): N training samples per class, drawn seeded (0 = all); recorded
    samples_per_class = 0
    samples_seed = 0  # the draw's seed (fixed across training seeds: the seeds then vary the training only)
    # Auxiliary training classes (data/auxiliary.py): other prepared datasets' samples and texts ("ntu120+nw_ucla")
    aux_dataset = _d.get("aux_dataset", "")  # "" = none
    aux_max_similarity = 0.5  # their classes whose label text is this close (cosine) to a held-out class: left out
    # SkeletonX (module/skeletonx.py), any training track: decoupled performer/action features, cross-sample swaps
    aggregation = False
    aggregation_weight = 0.1  # the aggregated features' loss weight (SkeletonX's w_xsample)
    # Encoder initialisation (experiments/train/init.py): a run id, run folder or checkpoint whose encoder
    # weights (backbone.*) start this run, e.g. a train_mode="pretrain" run; freeze_backbone: train the heads only
    init_from = ""
    freeze_backbone = _d.get("freeze_backbone", False)  # (linear_eval: True)
    # train_mode="pretrain" (experiments/train/pretrain.py): MoCo with SkeleMix queries, no labels read
    pretrain_on = "split"  # split: the zero-shot split's training classes | protocol: the supervised protocol's train part
    transductive = False  # also pretrain on the unlabelled validation + unseen (split) or test (protocol) sequences
    moco_dim = 128
    moco_queue = "auto"  # negatives kept; auto: the pretraining set's size less one batch
    moco_momentum = 0.999
    moco_temperature = 0.2  # SkeleMixCLR's published config (SkeletonCLR's code default: 0.07)
    moco_mix = 1.0  # weight of the SkeleMix queries' loss (0: plain SkeletonCLR)
    moco_mix_views = 1  # SkeleMixed views per batch (SkeleMixCLR+: 3)

    gzsl = False  # also evaluate generalized zero-shot (seen test + unseen samples; needs seen_test arrays)
    gzsl_holdout = 0.1  # gzsl: fraction of each training class held out of training to calibrate gamma
    exemplar_seed = 0  # one_shot: draws the one labelled exemplar of each novel class (recorded in the result)
    one_shot_text_weight = 0.5  # one_shot "combined": prototype = (1 - w) exemplar + w text (unit vectors)
    del _spec, _split, _d, _m


@ex.named_config
def ntu60():
    """NTU RGB+D 60, Setting 1 (its paper settings: data/catalog.py)."""
    dataset = "ntu60"


@ex.named_config
def ntu120():
    """NTU RGB+D 120, Setting 1 (its paper settings: data/catalog.py)."""
    dataset = "ntu120"


@ex.named_config
def pku():
    """PKU-MMD I, Setting 1 (its paper settings: data/catalog.py)."""
    dataset = "pku"


@ex.named_config
def utd_mhad():
    """UTD-MHAD (Kinect v1, 27 classes), cross-subject, seeded splits 1-3 of 5 unseen classes."""
    dataset = "utd_mhad"


@ex.named_config
def nw_ucla():
    """NW-UCLA (Kinect v1, 10 classes), cross-view, seeded splits 1-3 of 3 unseen classes."""
    dataset = "nw_ucla"


@ex.named_config
def sota():
    """Setting 2: Shift-GCN, 64 frames, SynSE's splits (the dataset's first; split=... picks another)."""
    train_mode = "sota"


@ex.named_config
def demo():
    """The built-in synthetic demo dataset (a few minutes on a CPU)."""
    dataset = "demo"


@ex.named_config
def frhead_ucla():
    """NW-UCLA supervised as FR-Head's published run (config/ucla/default.yaml): CTR-GCN, 52 frames,
    SGD with Nesterov, lr 0.1 (step at 50, 5 warm-up epochs), weight decay 1e-4, batch 16, 65 epochs
    of 5 passes each, FR-Head ST-Multi-Level (0.1, 0.2, 0.5, 1; weight 0.1), and its feeder's data
    treatment: a random view (rotation about x and y up to 60 degrees; its random scale is undone by
    the normalisation) and each sequence scaled per axis to [-1, 1]. Its feeder picks 52 frames at
    random from each sequence: here a temporal crop of 50-100% resized back stands in for it."""
    dataset = "nw_ucla"
    train_mode = "supervised"
    backbone = "ctrgcn"
    max_frame = 52
    lr = 0.1
    nesterov = True
    weight_decay = 1e-4
    batch_size = 16
    epoch_num = 65
    train_repeat = 5
    warmup_epochs = 5
    lr_steps = [50]
    fr_head = True
    aug_crop = [0.5, 1.0]
    aug_rotate = 1.0471975511965976  # 60 degrees
    aug_rotate_axes = "xy"
    input_norm = "minmax"


@ex.named_config
def original_protocol():
    """The research code's behaviour: epoch chosen on unseen test accuracy, fixed temperature.
    Labelled in every result as selection='test'."""
    selection = "test"
    learn_temperature = False
