"""What a raw-data reader hands to the prepare pipeline (``data/prepare.py``).

A ``Source`` enumerates its *items* (files, or videos holding several segments)
cheaply, then reads one item at a time into ``Sequence``s, or ``Skip``s that say
why a file or segment cannot be used. Every sequence carries the metadata the
evaluation protocols need and one boolean per protocol (``train[protocol]``: is it a
training sample under that protocol), so splits can be rebuilt from the prepared
samples without the raw files.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class RawFormatError(ValueError):
    """A raw file that does not follow its format (the message names the file and the place)."""


@dataclass(frozen=True)
class Item:
    """One unit of reading: ``key`` is unique and sorts the items; ``path`` is the file."""

    key: str
    path: str


@dataclass
class Sequence:
    name: str                 # unique sample name, e.g. S001C001P001R001A001
    label: int                # 0-based class id of the full dataset
    joints: np.ndarray        # (M, T, V, 3) sensor coordinates, absent actor = 0
    meta: dict                # e.g. subject, view, setup: ints or strings
    train: dict[str, bool]    # protocol -> is this a training sample


@dataclass(frozen=True)
class Skip:
    """A file or segment left out of a batch prepare, and why."""

    name: str
    path: str
    reason: str


class Source(ABC):
    """A dataset's raw input.

    Subclasses set ``dataset``, ``layout``, ``persons`` and ``protocols`` (the first is
    the default) and implement ``items`` and ``read``; ``excluded`` lists what was left
    out before reading (bad names, official exclusion lists).
    """

    dataset: str = ""
    layout: str = "ntu25"
    persons: int = 2
    protocols: tuple[str, ...] = ("xsub",)
    parallel: bool = True  # items can be read in worker processes

    def __init__(self) -> None:
        self.excluded: list[Skip] = []
        self.notes: list[str] = []  # what ``items`` decided that the run's log should say

    @abstractmethod
    def items(self) -> list[Item]:
        """Every item to read, sorted by key."""

    @abstractmethod
    def read(self, item: Item) -> list[Sequence | Skip]:
        """Read one item (raises nothing for bad input: a bad item becomes a ``Skip``)."""

    def options(self) -> dict:
        """Settings besides the items that change what ``read`` returns (part of the cache key)."""
        return {}

    def fingerprint(self, items: list[Item]) -> str:
        """SHA-256 of the item keys, their file sizes and the options: a changed input rebuilds the cache."""
        h = hashlib.sha256()
        h.update(repr(sorted(self.options().items())).encode())
        for it in items:
            size = os.stat(it.path).st_size if os.path.exists(it.path) else -1
            h.update(f"{it.key}\0{size}\0".encode())
        return h.hexdigest()


def find_files(paths: str | list[str], suffix: str, what: str) -> list[Path]:
    """Files ending in ``suffix`` under one or more folders (recursively), sorted by name.

    Raises ``FileNotFoundError`` naming a missing folder, or when nothing matches.
    """
    roots = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not roots or not all(str(r) for r in roots):
        raise FileNotFoundError(f"no input folder given for {what}: set raw.path")
    found: list[Path] = []
    for root in roots:
        root = Path(root).expanduser()
        if root.is_file() and root.name.endswith(suffix):
            found.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{what}: {root} is not a folder")
        found += [p for p in root.rglob(f"*{suffix}") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"{what}: no *{suffix} files under {', '.join(map(str, roots))}")
    return sorted(found, key=lambda p: p.name)
