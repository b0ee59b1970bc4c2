"""Where a run's numbers and files go.

The training loop talks to a ``Tracker`` only (``log_scalar``, ``add_artifact``);
``SacredTracker`` forwards to the Sacred run, whose observers store everything, and
keeps the run's headline numbers in ``info.summary`` on the run document (Omniboard
shows them as plain columns; see ``experiments/tracking/omniboard.py``).
The observers that store a run are added by ``experiments.tracking.observer.attach_observers``.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Protocol

# Headline numbers of a finished run, copied from the result dict into info.summary.
SUMMARY_KEYS = ("best_epoch", "best_val_top1", "best_unseen_top1_selection", "unseen_top1", "unseen_top1_aligned",
                "unseen_per_class_mean", "unseen_per_class_mean_aligned", "test_top1", "test_top5",
                "best_test_top1_selection", "ensemble_top1")


class Tracker(Protocol):
    def log_scalar(self, name: str, value: float, step: int) -> None: ...

    def add_artifact(self, path: str | Path, name: str | None = None) -> None: ...

    def set_info(self, key: str, value) -> None: ...


class NullTracker:
    """Keeps the logged values in memory (tests, library use without Sacred)."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[str, str]] = []
        self.info: dict = {}

    def set_info(self, key: str, value) -> None:
        self.info[key] = value

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars.setdefault(name, []).append((step, float(value)))

    def add_artifact(self, path: str | Path, name: str | None = None) -> None:
        self.artifacts.append((str(path), name or Path(path).name))


class PrefixTracker:
    """Logs a part's metrics (a fold's, a stream's) as ``<prefix><name>``; its artifacts and infos are not
    recorded (the run that holds the parts records its own)."""

    def __init__(self, tracker: Tracker, prefix: str):
        self.tracker, self.prefix = tracker, prefix

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.tracker.log_scalar(self.prefix + name, value, step)

    def add_artifact(self, path, name=None) -> None:
        pass

    def set_info(self, key: str, value) -> None:
        pass


class SacredTracker:
    """Forwards to a Sacred run and keeps ``run.info["summary"]`` current: the latest value of
    every scalar, ``epochs`` logged so far, ``best_val_top1`` so far, and (``summarize``) the
    result's headline numbers. Stored with every heartbeat, so running runs show progress."""

    def __init__(self, run) -> None:
        self.run = run
        self.summary: dict[str, float] = run.info.setdefault("summary", {})

    def log_scalar(self, name: str, value: float, step: int) -> None:
        value = float(value)
        self.run.log_scalar(name, value, step)
        self.summary[name] = value
        self.summary["epochs"] = max(self.summary.get("epochs", 0), step + 1)
        if name == "val_top1":
            self.summary["best_val_top1"] = max(self.summary.get("best_val_top1", value), value)

    def set_info(self, key: str, value) -> None:
        """An entry of the run document's ``info`` (stored with the next heartbeat)."""
        self.run.info[key] = value

    def add_artifact(self, path: str | Path, name: str | None = None) -> None:
        name = name or Path(path).name
        # An explicit type keeps Sacred from printing its guess into the captured output.
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.run.add_artifact(str(path), name=name, content_type=content_type)

    def summarize(self, result: dict) -> None:
        """Put the result's headline numbers into the summary (the run list's columns)."""
        self.summary.update({k: result[k] for k in SUMMARY_KEYS if result.get(k) is not None})
