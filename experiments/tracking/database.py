"""The MongoDB a run is recorded in: which one (``Target``), a checked connection, and the
Sacred observer that writes to it.

The database is ``mongo_url``, else ``$PGFA_MONGO_URL``, else the embedded server
(``experiments/tracking/dbserver.py``), started if needed. Credentials in URLs are never
shown: ``Target.display`` is redacted.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import gridfs
import pymongo
import pymongo.errors
from bson.errors import BSONError
from sacred.observers import MongoObserver
from sacred.utils import ObserverError

from experiments.tracking import dbserver
from experiments.tracking.dbserver import DEFAULT_DB, TrackingError
from experiments.tracking.output import redact_text
from experiments.tracking.records import records_dir

MONGO_URL_ENV = "PGFA_MONGO_URL"
TIMEOUT_MS = 5000  # server selection / connect: how long a dead database can stall a heartbeat once
UID_INDEX = "pgfa_local_record_uid"
MONGO_ERRORS = (pymongo.errors.PyMongoError, BSONError, ObserverError)


@dataclass(frozen=True)
class Target:
    """A MongoDB to record in. ``url`` may hold credentials: show ``display``, never ``url``."""
    url: str
    db_name: str
    embedded: bool

    @property
    def display(self) -> str:
        return f"{redact_text(self.url)} (database {self.db_name!r})"


def resolve_target(mongo_url: str = "") -> Target:
    """The configured database: ``mongo_url``, else ``$PGFA_MONGO_URL``, else the embedded server (started)."""
    url = mongo_url or os.environ.get(MONGO_URL_ENV, "")
    if not url:
        return Target(dbserver.ensure_running().url, DEFAULT_DB, embedded=True)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise TrackingError(f"mongo_url {redact_text(url)!r} is not a MongoDB URL; use "
                            f"mongodb://user:password@host:port/database (or leave it empty for the embedded server)")
    db_name = urllib.parse.unquote(parts.path.lstrip("/")) or DEFAULT_DB
    return Target(url, db_name, embedded=False)


def how_to_fix(target: Target) -> str:
    offline = ("  or record runs offline: add offline=True (the run is kept under "
               f"{records_dir()}; `python main.py sync` uploads it later)")
    if target.embedded:
        return ("  the embedded server: python main.py server_status / server_stop / server_start "
                f"(data in {dbserver.tracking_dir() / 'db'}, log {dbserver.tracking_dir() / 'server.log'})\n" + offline)
    return (f"  check that the server runs and that host, port and credentials in {MONGO_URL_ENV} / mongo_url are "
            "right, or unset both to use the embedded server\n" + offline)


def connect(target: Target, timeout_ms: int = TIMEOUT_MS) -> pymongo.database.Database:
    """A database handle after a successful ping (and the uid index that makes uploads exactly-once)."""
    try:
        client = pymongo.MongoClient(target.url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                     socketTimeoutMS=60_000)
    except pymongo.errors.PyMongoError as exc:  # malformed URL / options
        raise TrackingError(f"cannot use MongoDB URL {redact_text(target.url)}: "
                            f"{redact_text(str(exc))}\n{how_to_fix(target)}") from None
    db = client[target.db_name]
    try:
        client.admin.command("ping")
        db.runs.create_index("meta.local_record.uid", name=UID_INDEX, unique=True, sparse=True)
    except pymongo.errors.PyMongoError as exc:
        client.close()
        raise TrackingError(f"MongoDB at {target.display} is not reachable: {type(exc).__name__}: "
                            f"{redact_text(str(exc))[:300]}\n{how_to_fix(target)}") from None
    return db


# Headline numbers (``info.summary``, SacredTracker) also stored as the first top-level fields of
# the run document: Omniboard's run list orders its columns as the document's fields (config
# entries last), so columns reading these fields are in its first view.
LIST_FIELDS = ("unseen_top1", "unseen_top1_aligned", "best_val_top1", "epochs", "test_top1")


class StrictMongoObserver(MongoObserver):
    """Sacred's MongoObserver with three changes: a failed write raises (Sacred's swallows
    connection errors in ``save``/``final_save``), because the caller keeps the local record
    and re-uploads it; and sources are stored with their md5, so runs share one copy of each
    source version (pymongo 4's GridFS no longer adds the md5 Sacred looks them up by); and the
    headline numbers are copied to top-level fields (``LIST_FIELDS``)."""

    source_files: dict[str, Path] = {}  # replay: where a source's content is, if not at base_dir/name

    def insert(self) -> None:
        # the headline fields first (empty until the first summary), so the run list shows them first
        self.run_entry = {**{k: None for k in LIST_FIELDS}, **self.run_entry}
        super().insert()

    def _lift_summary(self) -> None:
        summary = (self.run_entry.get("info") or {}).get("summary") or {}
        self.run_entry.update({k: summary[k] for k in LIST_FIELDS if k in summary})

    def save(self) -> None:
        self._lift_summary()
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})

    def final_save(self, attempts: int) -> None:
        self._lift_summary()
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)

    def save_sources(self, ex_info: dict) -> list:
        stored = []
        for name, md5 in ex_info["sources"]:
            abs_path = os.path.join(ex_info["base_dir"], name)
            existing = self.fs.find_one({"filename": abs_path, "md5": md5})
            if existing is not None:
                stored.append([name, existing._id])
                continue
            with open(self.source_files.get(name, abs_path), "rb") as f:
                stored.append([name, self.fs.put(f, filename=abs_path, md5=md5)])
        return stored


def mongo_observer(db: pymongo.database.Database) -> StrictMongoObserver:
    return StrictMongoObserver.create_from(db.runs, gridfs.GridFS(db), metrics_collection=db.metrics)
