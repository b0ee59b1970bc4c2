"""The local record of every run, written before anything goes to MongoDB.

Sacred's ``FileStorageObserver`` layout under ``<tracking dir>/records/<time>-<uid>/``
(``run.json``, ``config.json``, ``metrics.json``, ``info.json``, ``cout.txt``, the
artifacts) plus ``tracking.json``, the record's state: ``live``, ``offline``, ``pending``
(MongoDB failed during the run) or ``uploaded``.
"""
from __future__ import annotations

import json
from pathlib import Path

from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

from experiments.files import write_json_atomic, write_text_atomic
from experiments.tracking.dbserver import tracking_dir


def records_dir() -> Path:
    return tracking_dir() / "records"


class JournalObserver(FileStorageObserver):
    """Sacred's FileStorageObserver with crash-safe writes: JSON files are replaced atomically,
    and the captured output is rewritten whole (it is filtered and capped, so not append-only)."""

    def save_json(self, obj, filename: str) -> None:
        write_json_atomic(Path(self.dir) / filename, flatten(obj))

    def save_cout(self) -> None:
        write_text_atomic(Path(self.dir) / "cout.txt", self.cout)


def read_record_state(record: Path) -> dict:
    return json.loads((record / "tracking.json").read_text())


def write_record_state(record: Path, **changes) -> dict:
    path = record / "tracking.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update(changes)
    write_json_atomic(path, state)
    return state
