"""Upload local run records into MongoDB, each exactly once.

A record (``<tracking dir>/records/<name>/``, written by ``TrackingObserver``; ``records.py``) is
uploaded when it was made offline (``offline=True``), when MongoDB failed during its
run (``pending``), or when its process ended without settling it (``live`` with a dead
pid, e.g. killed). The upload replays the record through Sacred's MongoObserver, so the
result is the document a live run would have produced: config, host, sources, captured
output, metrics (with their original timestamps), artifacts, result and final status.

Exactly once: the record's uid is stored in the run document (``meta.local_record.uid``,
a unique index). A run already in the database under that uid (a partial live upload, or
an upload interrupted half-way) is removed, with its metrics and artifact files, and
replaced under the same ``_id``; then the record is marked ``uploaded`` and skipped by
later syncs. A lock file serialises syncs on this machine; the index guards the rest.
"""
from __future__ import annotations

import datetime
import json
import mimetypes
import socket
from pathlib import Path

import gridfs
import pymongo
import pymongo.errors
from sacred.dependencies import get_digest
from tqdm import tqdm

from experiments.files import file_lock, pid_alive
from experiments.tracking.database import Target, connect, mongo_observer
from experiments.tracking.records import read_record_state, records_dir, write_record_state

TO_UPLOAD = ("offline", "pending", "live")


def _time(value: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value) if value else None


def _load(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def why_not_now(record: Path, state: dict) -> str | None:
    """Why a record waiting for upload must wait (its run is still going), else None."""
    run = _load(record / "run.json", {})
    if run.get("status") != "RUNNING":
        return None
    if state.get("host") != socket.gethostname():
        return f"still RUNNING on host {state.get('host')}"
    if pid_alive(int(state.get("pid", -1))):
        return f"still running (pid {state['pid']})"
    return None  # its process is gone: upload what it recorded (Omniboard shows it as probably dead)


def upload_record(record: Path, db: pymongo.database.Database) -> int:
    """Put one local record into ``db`` (replacing an earlier copy of it); returns its run ``_id``."""
    run = json.loads((record / "run.json").read_text())
    uid = run["meta"]["local_record"]["uid"]
    fs = gridfs.GridFS(db)
    old = db.runs.find_one({"meta.local_record.uid": uid}, {"artifacts": 1})
    run_id = None
    if old is not None:  # replace, keeping the _id the run already had
        run_id = old["_id"]
        db.metrics.delete_many({"run_id": run_id})
        for artifact in old.get("artifacts") or []:
            fs.delete(artifact["file_id"])
        db.runs.delete_one({"_id": run_id})

    obs = mongo_observer(db)
    ex_info = dict(run["experiment"])
    stored = {name: record.parent / rel for name, rel in ex_info["sources"]}
    obs.source_files = stored
    ex_info["sources"] = [(name, get_digest(str(path))) for name, path in stored.items()]
    obs.started_event(ex_info, run["command"], run["host"], _time(run["start_time"]),
                      _load(record / "config.json", {}), run["meta"], run_id)
    info = {k: v for k, v in _load(record / "info.json", {}).items() if k != "metrics"}  # old ids are stale
    metrics = _load(record / "metrics.json", {})
    if metrics:
        obs.log_metrics({name: {"values": m["values"], "steps": m["steps"],
                                "timestamps": [_time(t) for t in m["timestamps"]]} for name, m in metrics.items()},
                        info)
    for name in run.get("artifacts", []):
        obs.artifact_event(name, str(record / name),
                           content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
    cout = (record / "cout.txt").read_text(encoding="utf-8") if (record / "cout.txt").exists() else ""
    obs.heartbeat_event(info, cout, _time(run.get("heartbeat")) or _time(run["start_time"]), run.get("result"))
    status = run.get("status")
    if status == "COMPLETED":
        obs.completed_event(_time(run["stop_time"]), run.get("result"))
    elif status == "FAILED":
        obs.failed_event(_time(run["stop_time"]), run.get("fail_trace"))
    elif status != "RUNNING":
        obs.interrupted_event(_time(run["stop_time"]), status)
    return obs.run_entry["_id"]


def sync(target: Target, base: Path | None = None) -> dict[str, list]:
    """Upload every record that waits for it; returns ``{"uploaded": [(record, _id)], "waiting": [(record, why)]}``."""
    base = base or records_dir()
    out: dict[str, list] = {"uploaded": [], "waiting": []}
    if not base.is_dir():
        return out
    db = connect(target)
    with file_lock(base / ".sync.lock"):
        todo = []
        for record in sorted(p for p in base.iterdir() if (p / "tracking.json").is_file()):
            state = read_record_state(record)
            if state.get("state") not in TO_UPLOAD:
                continue
            if state["state"] == "live" and pid_alive(int(state.get("pid", -1))) \
                    and state.get("host") == socket.gethostname():
                continue  # an online run in progress records itself
            why = why_not_now(record, state)
            if why:
                out["waiting"].append((record, why))
            else:
                todo.append(record)
        for record in tqdm(todo, desc="sync", unit="run", disable=None):
            try:
                run_id = upload_record(record, db)
            except pymongo.errors.DuplicateKeyError:
                # uploaded concurrently (another machine's sync): that copy is the one
                run_id = db.runs.find_one({"meta.local_record.uid": read_record_state(record)["uid"]}, {"_id": 1})["_id"]
            write_record_state(record, state="uploaded", mongo_id=run_id, target=target.display,
                        uploaded_at=datetime.datetime.now().isoformat(timespec="seconds"))
            out["uploaded"].append((record, run_id))
    return out
