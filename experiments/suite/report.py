"""The results table, from the runs recorded in MongoDB.

COMPLETED runs are grouped by dataset, split, track and variant; each row gives mean ± std
over the group's seeds of the unseen top-1 (inductive), the aligned top-1, the per-class
mean and the GZSL harmonic mean, with columns saying how the checkpoint was selected
(validation / test) and that the alignment is transductive. A variant is the run's ``tag``
when it has one; untagged runs are told apart by the config entries in which they differ.
Published numbers can be shown beside ours, marked as quoted.

Outputs: Markdown (printed and written), CSV, and a bar chart PNG.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRICS = (("unseen_top1", "unseen top-1"), ("unseen_top1_aligned", "aligned top-1"),
           ("unseen_per_class_mean", "per-class mean"), ("H", "GZSL H"))
# Entries that differ between runs of one variant (or only say where a run was kept).
NOT_A_VARIANT = {"seed", "out_dir", "resume", "checkpoint", "mongo_url", "offline", "device", "data_root", "raw",
                 "new_split", "sweep", "report", "tag", "shift_impl", "eval_batch_size", "split", "dataset",
                 "unseen_classes", "val_classes", "train_mode", "save_embeddings"}

# Published unseen top-1 (%), selected on the unseen test set by their authors (../shared/docs/SPLITS.md).
QUOTED: dict[tuple[str, str, str], dict[str, float]] = {
    ("ntu60", "5", "sota"): {"PGFA": 80.26, "SMIE": 77.98},
    ("ntu120", "24", "sota"): {"PGFA": 59.42, "SMIE": 45.30},
    ("ntu120", "10", "sota"): {"SMIE": 65.74},
    ("ntu120", "setting 1 (mean of splits 4-6)", "main"): {"PGFA": 71.38},
}


def mean_std(vals: list[float]) -> tuple[float, float] | None:
    """Mean and sample std (0 for one value); None for no values."""
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


@dataclass
class Row:
    dataset: str
    split: str
    track: str
    variant: str
    selection: str
    transductive: bool
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def stat(self, key: str) -> tuple[float, float] | None:
        return mean_std(self.values.get(key) or [])


def fetch_runs(db, datasets: list[str] | None = None, tags: list[str] | None = None) -> list[dict]:
    """COMPLETED runs with a result, newest last (config and result only)."""
    query: dict = {"status": "COMPLETED", "result.unseen_top1": {"$exists": True}}
    if datasets:
        query["config.dataset"] = {"$in": list(datasets)}
    if tags:
        query["config.tag"] = {"$in": list(tags)}
    return list(db.runs.find(query, {"config": 1, "result": 1, "_id": 1}).sort("_id", 1))


def _variant_names(runs: list[dict]) -> dict[int, str]:
    """``tag`` if set, else the entries in which an untagged run's config differs from the other
    untagged runs of its dataset/split/track (``default`` when nothing differs)."""
    names: dict[int, str] = {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        c = r["config"]
        if c.get("tag"):
            names[r["_id"]] = c["tag"]
        else:
            groups[(c["dataset"], str(c["split"]), c["train_mode"])].append(r)
    for members in groups.values():
        keys = sorted({k for r in members for k in r["config"] if k not in NOT_A_VARIANT})
        varying = [k for k in keys if len({repr(r["config"].get(k)) for r in members}) > 1]
        for r in members:
            names[r["_id"]] = ", ".join(f"{k}={r['config'].get(k)!r}" for k in varying) or "default"
    return names


def aggregate(runs: list[dict]) -> list[Row]:
    """Rows of mean ± std over seeds; later runs of the same point (dataset/split/variant/seed) replace earlier."""
    names = _variant_names(runs)
    latest: dict[tuple, dict] = {}
    for r in runs:
        c = r["config"]
        latest[(c["dataset"], str(c["split"]), c["train_mode"], names[r["_id"]], c["seed"])] = r
    rows: dict[tuple, Row] = {}
    for (ds, split, track, variant, seed), r in sorted(latest.items(), key=lambda kv: tuple(map(str, kv[0]))):
        res = r["result"]
        key = (ds, split, track, variant)
        row = rows.setdefault(key, Row(ds, split, track, variant, res.get("selection", "val"),
                                       "unseen_top1_aligned" in res))
        row.seeds.append(seed)
        for metric, _ in METRICS:
            if res.get(metric) is not None:
                row.values[metric].append(float(res[metric]))
        if res.get("selection", "val") != row.selection:
            row.selection = "mixed"
    return list(rows.values())


def _fmt(stat: tuple[float, float] | None) -> str:
    return "–" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def quoted_for(row: Row) -> str:
    q = QUOTED.get((row.dataset, row.split, row.track), {})
    return ", ".join(f"{k} {v:.2f}" for k, v in q.items())


HEADER = ["dataset", "split", "track", "variant", "seeds", *[label for _, label in METRICS],
          "selection", "alignment", "quoted (published, test-selected)"]


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([r.dataset, r.split, r.track, r.variant, str(len(r.seeds)),
                    *[_fmt(r.stat(m)) for m, _ in METRICS], r.selection,
                    "transductive" if r.transductive else "none", quoted_for(r)])
    return out


def to_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    extra = [f"| {ds} | {split} | {track} | *quoted* | – | {', '.join(f'{k} {v:.2f}' for k, v in q.items())} "
             f"| – | – | – | test | – | published |"
             for (ds, split, track), q in QUOTED.items()
             if any(r.dataset == ds and r.track == track for r in rows) and not any(
                 r.dataset == ds and r.split == split and r.track == track for r in rows)]
    note = ("\nMean ± sample std over seeds; accuracies in %. *selection*: how each run chose its checkpoint "
            "(val = on validation classes, test = on unseen test accuracy, as the published numbers did). "
            "*alignment*: PGFA's prototype alignment uses the whole unseen test set (transductive). "
            "Quoted numbers are copied from the papers, not reproduced here.")
    return "\n".join(lines + extra) + "\n" + note + "\n"


def to_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "split", "track", "variant", "seeds", *[f"{m}_{s}" for m, _ in METRICS
                    for s in ("mean", "std")], "selection", "alignment", "quoted"])
        for r in rows:
            stats = []
            for m, _ in METRICS:
                st = r.stat(m)
                stats += ["" if st is None else f"{st[0]:.4f}", "" if st is None else f"{st[1]:.4f}"]
            w.writerow([r.dataset, r.split, r.track, r.variant, " ".join(map(str, r.seeds)), *stats, r.selection,
                        "transductive" if r.transductive else "none", quoted_for(r)])


def bar_chart(rows: list[Row], path: Path) -> None:
    """Grouped bars (inductive / aligned) per row with std error bars; quoted numbers as marked lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.dataset} {r.split}\n{r.variant}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    for i, (metric, label) in enumerate(METRICS[:2]):
        stats = [r.stat(metric) for r in rows]
        means = [s[0] if s else math.nan for s in stats]
        stds = [s[1] if s else 0.0 for s in stats]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=label)
    for xi, r in zip(x, rows):
        for name, value in QUOTED.get((r.dataset, r.split, r.track), {}).items():
            ax.hlines(value, xi - 0.4, xi + 0.4, colors="black", linestyles="dashed")
            ax.annotate(f"{name} (quoted)", (xi, value), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("unseen top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Zero-shot results (mean ± std over seeds)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[Row], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "chart": out / "results.png"}
    paths["markdown"].write_text(to_markdown(rows))
    to_csv(rows, paths["csv"])
    bar_chart(rows, paths["chart"])
    return paths
