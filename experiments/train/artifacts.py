"""The files a run leaves about its unseen-class evaluation: a confusion-matrix PNG, a
per-class accuracy CSV and a 2-D plot of the embedding space; and its training curves.

Plain functions (numbers in, files out); matplotlib's object API draws without a GUI
backend or global state.
"""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from descriptions import TextError, load_class_texts
from experiments.train.metrics import confusion_matrix, per_class_accuracy

MAX_PLOTTED_SAMPLES = 3000
TEST_SCORES_FILE = "test_scores.npz"      # supervised: class scores of the test samples
UNSEEN_SCORES_FILE = "unseen_scores.npz"  # zero-shot: cosine scores of the unseen test samples  # the embedding plot draws a seeded subset of larger test sets


def class_names(dataset: str, classes: list[int], data_root: str | Path | None = None) -> dict[int, str]:
    """Label names of ``classes``; ids where the dataset has no class texts."""
    try:
        labels = load_class_texts(dataset, "labels", data_root=data_root)
    except TextError:
        return {c: f"class {c}" for c in classes}
    return {c: labels[c] for c in classes}


def write_unseen_report(out_dir: Path, labels: torch.Tensor, classes: list[int], names: dict[int, str],
                        pred: torch.Tensor, pred_aligned: torch.Tensor | None, feats: torch.Tensor,
                        text: torch.Tensor, prototypes: torch.Tensor | None) -> list[Path]:
    """Write the three report files into ``out_dir``; returns their paths.

    Args:
        labels: (N,) true class ids of the unseen test samples.
        classes: the unseen classes, in plotting order.
        names: class id -> label name.
        pred, pred_aligned: (N,) predictions before / after prototype alignment (None: no alignment).
        feats: (N, D) skeleton embeddings; text: (num_classes, D) class-text embeddings;
        prototypes: (K, D) aligned prototypes of ``classes`` (None: no alignment).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "unseen_confusion.png", out_dir / "unseen_per_class.csv", out_dir / "embedding_2d.png"]
    plot_confusion(paths[0], labels, classes, names, pred, pred_aligned)
    write_per_class_csv(paths[1], labels, classes, names, pred, pred_aligned)
    plot_embedding(paths[2], labels, classes, names, feats, text[torch.tensor(classes)], prototypes)
    return paths


def write_per_class_csv(path: Path, labels: torch.Tensor, classes: list[int], names: dict[int, str],
                        pred: torch.Tensor, pred_aligned: torch.Tensor | None) -> None:
    acc = per_class_accuracy(pred, labels, classes)
    acc_a = per_class_accuracy(pred_aligned, labels, classes) if pred_aligned is not None else {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class_name", "samples", "top1_inductive", "top1_aligned"])
        for c in classes:
            n = int((labels == c).sum())
            w.writerow([c, names[c], n, f"{acc[c]:.2f}" if c in acc else "",
                        f"{acc_a[c]:.2f}" if c in acc_a else ""])


def _tick_labels(classes: list[int], names: dict[int, str]) -> list[str]:
    if len(classes) > 30:
        return [str(c) for c in classes]
    return [f"{c}: {names[c][:28]}" for c in classes]


def plot_confusion(path: Path, labels: torch.Tensor, classes: list[int], names: dict[int, str],
                   pred: torch.Tensor, pred_aligned: torch.Tensor | None, title: str = "inductive (nearest text)") -> None:
    """Row-normalised confusion matrices (rows: true class), inductive and, if given, aligned."""
    panels = [(title, pred)]
    if pred_aligned is not None:
        panels.append(("aligned (PGFA prototypes, transductive)", pred_aligned))
    k = len(classes)
    side = min(max(4.0, 0.45 * k + 2.5), 20.0)
    fig = Figure(figsize=(side * len(panels) + 1.0, side), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ticks = _tick_labels(classes, names)
    for ax, (title, p) in zip(axes, panels):
        cm = confusion_matrix(p, labels, classes)
        rows = cm.sum(1, keepdims=True)
        pct = np.divide(100.0 * cm, rows, out=np.zeros(cm.shape), where=rows > 0)
        im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
        if k <= 20:  # counts readable in the cells
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if pct[i, j] > 60 else "black")
        top1 = 100.0 * np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{title}\ntop-1 {top1:.1f}% of {int(cm.sum())} samples", fontsize=10)
        ax.set_xticks(range(k), ticks, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), ticks, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8, label="% of the true class")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().cpu().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plot_embedding(path: Path, labels: torch.Tensor, classes: list[int], names: dict[int, str],
                   feats: torch.Tensor, class_text: torch.Tensor, prototypes: torch.Tensor | None) -> None:
    """Skeleton features, class-text embeddings and prototypes in one 2-D PCA of unit vectors
    (classification compares directions, so the plot does too)."""
    y = labels.cpu().numpy()
    idx = np.arange(len(y))
    if len(idx) > MAX_PLOTTED_SAMPLES:
        idx = np.sort(np.random.default_rng(0).choice(idx, MAX_PLOTTED_SAMPLES, replace=False))
    parts = [_unit(feats[idx]), _unit(class_text)] + ([_unit(prototypes)] if prototypes is not None else [])
    pca = PCA(n_components=2, svd_solver="full").fit(np.concatenate(parts))
    xy = [pca.transform(p) for p in parts]  # (n, 2) each

    k = len(classes)
    colors = matplotlib.colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "hsv"]
    color = {c: colors(i / max(k - 1, 1)) if k > 20 else colors(i) for i, c in enumerate(classes)}
    fig = Figure(figsize=(10.5, 7), layout="constrained")
    ax = fig.subplots()
    ax.scatter(xy[0][:, 0], xy[0][:, 1], s=9, alpha=0.45, c=[color[c] for c in y[idx]], linewidths=0)
    for i, c in enumerate(classes):
        ax.scatter(*xy[1][i], marker="*", s=320, color=color[c], edgecolors="black", linewidths=1.0, zorder=3)
        if prototypes is not None:
            ax.scatter(*xy[2][i], marker="X", s=150, color=color[c], edgecolors="black", linewidths=1.0, zorder=3)
    markers = [ax.scatter([], [], s=20, color="grey", label=f"skeleton features ({len(idx)} unseen test samples)"),
               ax.scatter([], [], marker="*", s=150, color="grey", edgecolors="black", label="class text embeddings")]
    if prototypes is not None:
        markers.append(ax.scatter([], [], marker="X", s=90, color="grey", edgecolors="black",
                                  label="aligned prototypes"))
    ax.add_artist(ax.legend(handles=markers, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8))
    if k <= 30:  # a colour key beside the plot: labels on the points would overlap
        keys = [ax.scatter([], [], s=40, color=color[c], label=f"{c}: {names[c]}") for c in classes]
        ax.legend(handles=keys, loc="upper left", bbox_to_anchor=(1.01, 0.8), fontsize=8, title="true class",
                  title_fontsize=8)
    ax.set_title(f"unseen classes in the joint embedding space (PCA of unit vectors; colour = true class)", fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.savefig(path, dpi=110, bbox_inches="tight")


# (panel title, metrics drawn in it, y-axis label): quantities of one unit share a panel
CURVE_PANELS = (("accuracies", ("val_top1", "unseen_top1_monitor", "unseen_top1_aligned_monitor", "test_top1_monitor"),
                 "top-1 (%)"),
                ("training loss", ("train_loss",), "loss"),
                ("learning rate and temperature", ("lr", "temperature"), "value"))


def plot_curves(path: Path, history: list[dict], best_epoch: int) -> Path:
    """``curves.png``: one panel per unit (accuracies; loss; lr and temperature), epochs from 1,
    the selected epoch marked."""
    epochs = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    for ax, (title, names, ylabel) in zip(fig.subplots(1, len(CURVE_PANELS)), CURVE_PANELS):
        for name in names:
            values = [h.get(name, np.nan) for h in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        if 0 <= best_epoch < len(history):
            ax.axvline(best_epoch + 1, color="grey", linestyle=":", label=f"selected (epoch {best_epoch + 1})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if title == "learning rate and temperature":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def save_scores(path: Path, scores: torch.Tensor, labels: torch.Tensor, classes: list[int], meta: dict) -> Path:
    """The test scores (N, K) in test-sample order with their labels and class ids; ``meta`` names the run."""
    np.savez(path, scores=scores.numpy().astype(np.float32), labels=labels.numpy(), classes=np.asarray(classes),
             **{k: np.asarray(v) for k, v in meta.items()})
    return path
