"""Where a run's numbers and files go.

The training loop talks to a ``Tracker`` only (``log_scalar``, ``add_artifact``);
``SacredTracker`` forwards to the Sacred run, whose observers store everything.
``attach_observers`` is the single place where observers are added to the experiment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    def log_scalar(self, name: str, value: float, step: int) -> None: ...

    def add_artifact(self, path: str | Path, name: str | None = None) -> None: ...


class NullTracker:
    """Keeps the logged values in memory (tests, library use without Sacred)."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[str, str]] = []

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars.setdefault(name, []).append((step, float(value)))

    def add_artifact(self, path: str | Path, name: str | None = None) -> None:
        self.artifacts.append((str(path), name or Path(path).name))


class SacredTracker:
    def __init__(self, run) -> None:
        self.run = run

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.run.log_scalar(name, float(value), step)

    def add_artifact(self, path: str | Path, name: str | None = None) -> None:
        self.run.add_artifact(str(path), name=name or Path(path).name)


def plain(value):
    """Sacred's read-only config containers → plain dicts/lists (JSON- and ``weights_only``-safe)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def attach_observers(ex, argv: list[str] | None = None) -> None:
    """Add the experiment's observers (none yet: the tracking issue wires MongoDB here)."""
    return None
