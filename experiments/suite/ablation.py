"""Ablation studies on the sweep machinery: component on/off rows over datasets × splits × seeds.

A *component* is a named set of config overrides (``COMPONENTS``, or the study's own). An
ablation of components ``[a, b]`` with the combination ``[a, b]`` runs the variants
``baseline`` (the base config), ``+a``, ``+b`` and ``+a+b`` as one sweep: every point is one
recorded run, tagged with its variant, skipped when already COMPLETED. The summary then
pools, per dataset and variant, all splits and seeds: mean ± std of the inductive and aligned
unseen top-1, of the validation top-1 each run selected its checkpoint by, the change against
the baseline, and the mean per split.

A combination must be chosen without looking at the unseen classes: ``best_by_validation``
ranks variants by their mean validation top-1 only.
"""
from __future__ import annotations

import math

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from experiments.suite.report import mean_std

BASELINE = "baseline"
PAIRED_SES = 2.0  # the ablation table's rule: validation gain above two standard errors (round 8), paired (round 10)

# The components the zero-shot track offers (README: configuration keys), as overrides of the base.
COMPONENTS: dict[str, dict] = {
    "ema": {"weight_average": "ema"},  # weight averaging per optimiser step
    "swa": {"weight_average": "swa", "swa_start": 0.5},  # uniform average of the second half's epochs
    "aug": {"aug_rotate": 0.3, "aug_scale": 0.1},  # CTR-GCN's random rotation, pyskl's random scale
    "crop": {"aug_crop": [0.5, 1.0]},  # CTR-GCN's temporal crop, resized back
    "shear": {"aug_shear": 0.3},  # SkeleMixCLR's shear
    "skelemix": {"skelemix": 0.5},  # SkeleMix on half the batches, mixed text targets
    "minmax": {"input_norm": "minmax"},  # each sequence scaled per axis to [-1, 1]
    "bone": {"modality": "bone"},
    "motion": {"modality": "joint_motion"},
    "streams": {"streams": ["joint", "joint_motion"]},  # one training per stream, scored fused (a stream ensemble)
    "frhead": {"fr_head": True},
    "ctrgcn": {"backbone": "ctrgcn"},
    "ctrgcn16": {"backbone": "ctrgcn", "hidden_channels": 16},  # at ST-GCN's width (about 1.3x its CPU step)
    "labels": {"text_kind": "labels"},
    "parts": {"text_kind": "parts"},
    "texts": {"text_kind": "labels+des+parts"},  # text ensemble
    "part_align": {"part_align": True},  # part-aware alignment with the parts texts
    "minilm": {"text_model": "minilm"},
    "cos": {"lr_schedule": "cos"},
    "aggregation": {"aggregation": True},  # SkeletonX's decoupled features and cross-sample aggregation
    "aux_ntu": {"aux_dataset": "ntu120"},  # NTU's classes beside the seen ones, minus those near a held-out class
    "aux_ntu_ucla": {"aux_dataset": "ntu120+nw_ucla"},  # (for UTD-MHAD) NTU's and NW-UCLA's classes
    "aux_ntu_utd": {"aux_dataset": "ntu120+utd_mhad"},  # (for NW-UCLA) NTU's and UTD-MHAD's classes
    "folds": {"selection": "folds"},  # selection over 3 validation folds, then training on every seen class
    "snapshot": {"selection": "snapshot"},  # no epoch picked: the epochs' embeddings averaged from a quarter on
    "trainval": {"selection": "snapshot", "trainval": True},  # snapshot, trained on the validation classes too
    "conse": {"conse": True},  # ConSE: a sample scored as its mix of the seen classes' texts
    "original_protocol": {"selection": "test", "learn_temperature": False},  # the research code's (labelled)
}


def variant_name(components: list[str]) -> str:
    return "".join(f"+{c}" for c in components) or BASELINE


def ablation_variants(components: list[str], combos: list[list[str]] = (), extra: dict | None = None,
                      baseline: bool = True) -> dict[str, dict]:
    """``{"baseline": {}, "+a": {...}, "+a+b": {...}}``: one variant per component and per
    combination (its components' overrides merged in order; two components setting one key to
    different values is an error). ``extra``: the study's own components (name → overrides)."""
    known = {**COMPONENTS, **(extra or {})}
    unknown = sorted({c for c in [*components, *(c for combo in combos for c in combo)] if c not in known})
    if unknown:
        raise ValueError(f"unknown ablation components {unknown}; known: {sorted(known)} "
                         "(add your own with ablation.extra={'name': {config overrides}})")
    variants: dict[str, dict] = {BASELINE: {}} if baseline else {}
    for combo in [[c] for c in components] + [list(c) for c in combos]:
        merged: dict = {}
        for c in combo:
            clash = {k for k, v in known[c].items() if k in merged and merged[k] != v}
            if clash:
                raise ValueError(f"ablation combination {combo}: components set {sorted(clash)} differently")
            merged.update(known[c])
        variants[variant_name(combo)] = merged
    return variants


def runs_query(points: list) -> dict:
    """COMPLETED zero-shot runs of these grid points' settings (``Point.settings``: the study's base,
    the variant's own overrides on top, and the defaults the point's dataset resolved to), any split
    and seed (a row pools them); ``data_root`` aside: it says where a machine keeps its data, not what ran."""
    from experiments.suite.claims import point_identity

    per_variant = {}
    for p in points:
        settings = {k: v for k, v in point_identity(p.settings()).items() if k not in ("split", "seed")}
        per_variant.setdefault(repr(sorted(settings.items())), {f"config.{k}": v for k, v in settings.items()})
    return {"status": "COMPLETED", "result.unseen_top1": {"$exists": True}, "$or": list(per_variant.values())}


@dataclass
class AblationRow:
    dataset: str
    variant: str
    runs: list[tuple[str, int]] = field(default_factory=list)  # (split, seed)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    per_split: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def stat(self, key: str) -> tuple[float, float] | None:
        return mean_std(self.values.get(key) or [])


METRICS = (("unseen_top1", "inductive top-1"), ("unseen_top1_aligned", "aligned top-1"),
           ("unseen_top1_centred", "centred top-1"), ("best_val_top1", "val top-1 (selection)"),
           ("val_holdout_top1", "val top-1 (held-out pick)"))


def summarize(runs: list[dict], order: list[str] | None = None) -> list[AblationRow]:
    """Rows per (dataset, variant) pooling every split and seed (a later run of one point replaces
    an earlier one), in ``order`` of variants (others after, by name)."""
    latest: dict[tuple, dict] = {}
    for r in runs:
        c = r["config"]
        latest[(c["dataset"], c["tag"], str(c["split"]), int(c["seed"]))] = r
    rows: dict[tuple[str, str], AblationRow] = {}
    for (ds, variant, split, seed), r in latest.items():
        row = rows.setdefault((ds, variant), AblationRow(ds, variant))
        row.runs.append((split, seed))
        res = r["result"]
        for key, _ in METRICS:
            if res.get(key) is not None and math.isfinite(res[key]):  # trainval: no validation number
                row.values[key].append(float(res[key]))
        row.per_split[split].append(float(res["unseen_top1"]))
    rank = {v: i for i, v in enumerate(order or [])}
    return sorted(rows.values(), key=lambda r: (r.dataset, rank.get(r.variant, len(rank)), r.variant))


def validation_key(rows: list[AblationRow], dataset: str) -> str:
    """The validation number variants of ``dataset`` are compared by: the held-out-pick estimate
    (``experiments/train/epoch_eval.py: holdout_top1``) where every row records it, as it alone is
    comparable across selection rules; else the selected epoch's validation top-1. Rows with no
    validation number (``trainval``: the validation classes were trained on) are not compared."""
    mine = [r for r in rows if r.dataset == dataset and (r.stat("best_val_top1") or r.stat("val_holdout_top1"))]
    return "val_holdout_top1" if mine and all(r.stat("val_holdout_top1") for r in mine) else "best_val_top1"


def best_by_validation(rows: list[AblationRow], dataset: str) -> str | None:
    """The variant of ``dataset`` with the highest mean validation number (never the unseen classes)."""
    key = validation_key(rows, dataset)
    cands = [(r.stat(key)[0], r.variant) for r in rows if r.dataset == dataset and r.stat(key)]
    return max(cands)[1] if cands else None


def clear_gain(row: AblationRow, baseline: AblationRow, key: str = "best_val_top1", ses: float = 1.0) -> bool:
    """Whether ``row``'s mean of ``key`` (by default the validation top-1, never an unseen number)
    exceeds the baseline's by more than ``ses`` standard errors of the difference of the two means:
    the rule by which a component may become a dataset's default (one SE through round 7; two from
    round 8, once twenty variants per dataset had been tried: docs/zeroshot_small.md)."""
    return beyond(*difference(row.values.get(key) or [], baseline.values.get(key) or []), ses)


def beyond(diff: float, se: float, ses: float) -> bool:
    """The rule itself: a difference above ``ses`` of its standard errors (NaN, from too few runs: no)."""
    if ses <= 0:
        raise ValueError(f"clear_gain: ses must be positive (standard errors of the difference), got {ses}")
    return bool(diff > ses * se)


def _by_run(row: AblationRow, key: str) -> dict[tuple[str, int], float]:
    vals = row.values.get(key) or []
    return dict(zip(row.runs, vals)) if len(vals) == len(row.runs) else {}  # a run without the number: none


def paired_stats(row: AblationRow, baseline: AblationRow, key: str) -> tuple[float, float, int]:
    """``row``'s ``key`` minus the baseline's over the runs both have (paired by split and seed), the
    standard error of that mean difference and the number of pairs (``paired_difference``)."""
    mine, theirs = _by_run(row, key), _by_run(baseline, key)
    common = [k for k in mine if k in theirs]
    diff, se = paired_difference({k: mine[k] for k in common}, {k: theirs[k] for k in common})
    return diff, se, len(common)


def difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and the standard error of that difference (unpaired); NaN below 2 runs a side."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    return float(np.mean(a) - np.mean(b)), float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))


def paired_difference(a: dict, b: dict) -> tuple[float, float]:
    """The mean of ``a[k] - b[k]`` over runs paired by key (split, seed, validation draw: ``rescore --paired``)
    and its standard error (the differences' sample std over the square root of their number); NaN below
    2 pairs. Both sides must hold the same keys: a run without its partner is refused, naming it."""
    if set(a) != set(b):
        raise ValueError(f"paired comparison: runs without a partner on the other side: "
                         f"{sorted(set(a) - set(b), key=str)} (variant) / {sorted(set(b) - set(a), key=str)} (against)")
    d = np.array([a[k] - b[k] for k in a], dtype=float)
    if len(d) < 2:
        return float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _fmt(stat: tuple[float, float] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def to_markdown(rows: list[AblationRow]) -> str:
    head = ["dataset", "variant", "runs", *[label for _, label in METRICS], "Δ inductive", "Δ aligned",
            "inductive per split"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {r.dataset: r for r in rows if r.variant == BASELINE}
    for r in rows:
        deltas = []
        for key in ("unseen_top1", "unseen_top1_aligned"):
            b, s = base.get(r.dataset), r.stat(key)
            deltas.append("–" if b is None or b.stat(key) is None or s is None or r.variant == BASELINE
                          else f"{s[0] - b.stat(key)[0]:+.2f}")
        splits = " / ".join(f"{k}: {np.mean(v):.1f}" for k, v in sorted(r.per_split.items()))
        lines.append("| " + " | ".join([r.dataset, r.variant, str(len(r.runs)), *[_fmt(r.stat(k)) for k, _ in METRICS],
                                        *deltas, splits]) + " |")
    best = {ds: best_by_validation(rows, ds) for ds in dict.fromkeys(r.dataset for r in rows)}
    keys = {ds: validation_key(rows, ds) for ds in best}
    clear = {ds: [] for ds in best}
    for r in rows:
        if r.variant != BASELINE and r.dataset in base:
            diff, se, n = paired_stats(r, base[r.dataset], keys[r.dataset])
            if beyond(diff, se, PAIRED_SES):
                clear[r.dataset].append(f"{r.variant} ({diff:+.2f}, SE {se:.2f}, {n} pairs)")
    note = ("\nMean ± sample std over every split and seed of a row; accuracies in %. Each run selected its "
            "checkpoint on its validation classes (held out of the seen classes); *val top-1 (selection)* is "
            "that selection's accuracy, inflated by the pick; *held-out pick* picks on half the validation "
            "classes and scores the other half (a snapshot ensemble picks nothing). Only validation numbers "
            "may choose a combination: the held-out pick where every row has it. Δ: against the "
            "baseline row of the dataset. Best by validation: "
            + ", ".join(f"{ds}: {v} ({keys[ds]})" for ds, v in best.items())
            + ". Validation above the baseline's (runs paired by split and seed; the rule a default changes by, "
            f"docs/zeroshot_small.md) by more than {PAIRED_SES:g} standard errors of the paired difference: "
            + ", ".join(f"{ds}: {', '.join(v) or 'none'}" for ds, v in clear.items()) + ".")
    return "\n".join(lines) + "\n" + note + "\n"


def run_ablation(db, sweep: dict, opts: dict, data_root: str, run_options: dict, mongo_url: str = "",
                 log=print, resolve=None) -> list[AblationRow]:
    """The ``ablation`` command: the variants of ``opts`` (components, combos, extra) over the sweep's
    datasets × splits × seeds, run as one sweep when ``opts["run"]`` (COMPLETED points skipped), then
    the rows of every COMPLETED run of them in ``db``.

    Args:
        sweep: the sweep settings (``config.sweep_settings()``); its ``base`` applies to every variant.
        opts: the ``ablation`` config entry.
        run_options: ``run_sweep``'s options (``config.sweep_options``).
        resolve: a point's updates → the run's config (``Experiment.resolved_config``): a run counts
            only if it had the dataset defaults the point resolves to now (``grid.with_run_defaults``).
    """
    from experiments.suite.grid import grid, summarize_points, with_run_defaults
    from experiments.suite.sweep import run_sweep

    variants = ablation_variants(list(opts["components"]), [list(c) for c in opts["combos"]], dict(opts["extra"]))
    points = grid(sweep["datasets"], sweep["splits"], sweep["seeds"], variants,
                  {"data_root": data_root, **sweep["base"]}, data_root)  # the runs read the sweep's data
    if not points:
        raise ValueError("ablation: sweep.datasets names no dataset, e.g. \"sweep.datasets=['utd_mhad']\"")
    if resolve is not None:
        points = with_run_defaults(points, resolve)
    if opts["run"]:
        log(f"ablation: {len(variants)} variants, {summarize_points(points)}")
        run_sweep(points, db, mongo_url=mongo_url, **run_options)
    runs = db.runs.find(runs_query(points), {"config": 1, "result": 1})
    return summarize(list(runs), list(variants))
