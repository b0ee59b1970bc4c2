"""Every run recorded twice: a local record first, then MongoDB; nothing is lost.

``TrackingObserver`` is the one observer the experiment gets (``attach_observers``). When
a run starts it reads the run's config:

* ``offline=True``: the run is recorded only locally; ``python main.py sync`` uploads it later.
* else the database is ``mongo_url``, or ``$PGFA_MONGO_URL``, or (neither set) the embedded
  server (``experiments/dbserver.py``), started if needed. If it does not answer a ping the
  run fails before training, with a message naming the URL and the fix.

Every event goes to the local record (Sacred's ``FileStorageObserver`` format under
``<tracking dir>/records/<time>-<uid>/`` plus ``tracking.json``), then to Sacred's
``MongoObserver``. If MongoDB fails during the run, training goes on, the record is
marked ``pending`` and MongoDB is left alone for the rest of the run; when the run ends
the observer re-uploads the whole record (restarting the embedded server if that is the
one that went away), or tells the user to run ``python main.py sync``. Uploads replace a
run by its record's uid (unique index), so each run is in MongoDB exactly once.

Credentials in MongoDB URLs are removed from the config, the meta data (command line)
and the captured output before anything is stored.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import sys
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import gridfs
import pymongo
import pymongo.errors
from bson.errors import BSONError
from sacred.observers import FileStorageObserver, MongoObserver, RunObserver
from sacred.utils import IntervalTimer, ObserverError

from experiments import dbserver
from experiments.dbserver import DEFAULT_DB, TrackingError, write_json_atomic
from experiments.tracking import plain, redact, redact_text

MONGO_URL_ENV = "PGFA_MONGO_URL"
TIMEOUT_MS = 5000  # server selection / connect: how long a dead database can stall a heartbeat once
UID_INDEX = "pgfa_local_record_uid"
MONGO_ERRORS = (pymongo.errors.PyMongoError, BSONError, ObserverError)


def records_dir() -> Path:
    return dbserver.tracking_dir() / "records"


# ----------------------------------------------------------------------------- the database

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


class StrictMongoObserver(MongoObserver):
    """Sacred's MongoObserver with two changes: a failed write raises (Sacred's swallows
    connection errors in ``save``/``final_save``), because the caller keeps the local record
    and re-uploads it; and sources are stored with their md5, so runs share one copy of each
    source version (pymongo 4's GridFS no longer adds the md5 Sacred looks them up by)."""

    source_files: dict[str, Path] = {}  # replay: where a source's content is, if not at base_dir/name

    def save(self) -> None:
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})

    def final_save(self, attempts: int) -> None:
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


# ----------------------------------------------------------------------------- the local record

class JournalObserver(FileStorageObserver):
    """Sacred's FileStorageObserver with crash-safe writes: JSON files are replaced atomically,
    and the captured output is rewritten whole (it is filtered and capped, so not append-only)."""

    def save_json(self, obj, filename: str) -> None:
        from sacred.serializer import flatten

        write_json_atomic(Path(self.dir) / filename, flatten(obj))

    def save_cout(self) -> None:
        path = Path(self.dir) / "cout.txt"
        tmp = path.with_name(".cout.txt.tmp")
        tmp.write_text(self.cout, encoding="utf-8")
        tmp.replace(path)


def read_state(record: Path) -> dict:
    return json.loads((record / "tracking.json").read_text())


def write_state(record: Path, **changes) -> dict:
    path = record / "tracking.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update(changes)
    write_json_atomic(path, state)
    return state


# ----------------------------------------------------------------------------- the observer

class TrackingObserver(RunObserver):
    """The local record plus MongoDB, with the behaviour described in the module docstring."""

    priority = 40

    def __init__(self, records: Path | None = None) -> None:
        self.records = records  # None: <tracking dir>/records, resolved when a run starts
        self._lock = threading.RLock()  # the heartbeat thread and the main thread both emit events
        self._reset()

    def _reset(self) -> None:
        self.journal: JournalObserver | None = None
        self.mongo: StrictMongoObserver | None = None
        self.target: Target | None = None
        self.mongo_error: Exception | None = None
        self.record: Path | None = None

    # -- start

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        with self._lock:
            self._reset()
            offline = bool(config.get("offline", False))
            db = None
            if not offline:
                self.target = resolve_target(config.get("mongo_url", ""))
                db = connect(self.target)
            uid = uuid.uuid4().hex
            name = f"{start_time:%Y%m%d-%H%M%S}-{uid[:8]}"
            meta = redact(copy.deepcopy(plain(meta_info)))
            meta["local_record"] = {"uid": uid, "name": name}
            cfg = redact(plain(config))
            host_info = redact(plain(host_info))  # in case captured environment variables hold a URL
            self.journal = JournalObserver(self.records or records_dir())
            self.journal.started_event(copy.deepcopy(ex_info), command, host_info, start_time, cfg, meta, name)
            self.record = Path(self.journal.dir)
            write_state(self.record, uid=uid, state="offline" if offline else "live", pid=os.getpid(),
                        host=socket.gethostname(), target=self.target.display if self.target else None)
            if offline:
                return name
            self.mongo = mongo_observer(db)
            try:
                run_id = self.mongo.started_event(copy.deepcopy(ex_info), command, host_info, start_time, cfg, meta, _id)
            except MONGO_ERRORS as exc:  # gone between the ping and the insert: nothing has run yet
                shutil.rmtree(self.record, ignore_errors=True)
                self._reset()
                raise TrackingError(f"MongoDB at {self.target.display} failed when the run started: "
                                    f"{redact_text(str(exc))[:300]}") from None
            write_state(self.record, mongo_id=run_id)
            return run_id

    # -- during the run

    def _forward(self, method: str, **kwargs) -> None:
        with self._lock:
            if self.journal is None:
                return
            getattr(self.journal, method)(**kwargs)  # the local record first: it is the complete one
            if self.mongo is None or self.mongo_error is not None:
                return
            try:
                getattr(self.mongo, method)(**kwargs)
            except MONGO_ERRORS as exc:
                self.mongo_error = exc
                write_state(self.record, state="pending", error=f"{type(exc).__name__}: {redact_text(str(exc))[:300]}")
                print(f"WARNING: MongoDB at {self.target.display} failed during the run ({type(exc).__name__}). "
                      f"Training goes on; the run is recorded in {self.record} and is uploaded when it ends if "
                      f"the database is back, else by `python main.py sync`.", file=sys.stderr, flush=True)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._forward("heartbeat_event", info=info, captured_out=redact_text(captured_out), beat_time=beat_time,
                      result=result)

    def log_metrics(self, metrics_by_name, info):
        self._forward("log_metrics", metrics_by_name=metrics_by_name, info=info)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._forward("artifact_event", name=name, filename=filename, metadata=metadata, content_type=content_type)

    def resource_event(self, filename):
        self._forward("resource_event", filename=filename)

    def completed_event(self, stop_time, result):
        self._forward("completed_event", stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        self._forward("interrupted_event", interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        self._forward("failed_event", fail_time=fail_time, fail_trace=[redact_text(line) for line in fail_trace])

    # -- after the run

    def join(self) -> None:
        """Called by Sacred once the run has ended: settle where the run is recorded."""
        # Sacred waits only 2 s for its last heartbeat; let it land before the record is read.
        for thread in threading.enumerate():
            if isinstance(thread, IntervalTimer) and thread.stopped.is_set() and thread is not threading.current_thread():
                thread.join(timeout=2 * TIMEOUT_MS / 1000)
        with self._lock:
            if self.record is None:
                return
            state = read_state(self.record)["state"]
            if state == "live":
                write_state(self.record, state="uploaded")
            elif state == "offline":
                print(f"run recorded offline in {self.record}; upload it with: python main.py sync", file=sys.stderr)
            elif state == "pending":
                self._recover()
            self._reset()

    def _recover(self) -> None:
        from experiments.sync import upload_record

        try:
            target = self.target
            if target.embedded:  # the embedded server is ours to restart (maybe on another port)
                target = Target(dbserver.ensure_running().url, DEFAULT_DB, embedded=True)
            run_id = upload_record(self.record, connect(target))
        except (TrackingError, *MONGO_ERRORS, OSError) as exc:
            print(f"MongoDB at {self.target.display} is still not usable ({redact_text(str(exc)).splitlines()[0]}).\n"
                  f"The complete run is kept in {self.record}; upload it when the database is back: "
                  f"python main.py sync", file=sys.stderr)
            return
        write_state(self.record, state="uploaded", mongo_id=run_id, target=target.display)
        print(f"MongoDB failed during the run; the complete run has now been uploaded to {target.display} "
              f"as run {run_id}.", file=sys.stderr)
