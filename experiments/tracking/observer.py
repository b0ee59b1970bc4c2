"""Every run recorded twice: a local record first, then MongoDB; nothing is lost.

``TrackingObserver`` is the one observer the experiment gets (``attach_observers``). When
a run starts it reads the run's config:

* ``offline=True``: the run is recorded only locally; ``python main.py sync`` uploads it later.
* else the database is ``mongo_url``, or ``$PGFA_MONGO_URL``, or (neither set) the embedded
  server (``experiments/tracking/dbserver.py``), started if needed. If it does not answer a ping the
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
import os
import shutil
import socket
import sys
import threading
import uuid
from pathlib import Path

from sacred.observers import RunObserver
from sacred.utils import IntervalTimer

from experiments.experiment import COMMAND_INGREDIENTS
from experiments.tracking import dbserver
from experiments.tracking.database import (DEFAULT_DB, MONGO_ERRORS, TIMEOUT_MS, StrictMongoObserver, Target,
                                           TrackingError, connect, mongo_observer, resolve_target)
from experiments.tracking.output import plain, redact, redact_text
from experiments.tracking.records import JournalObserver, read_record_state, records_dir, write_record_state
from experiments.tracking.upload import upload_record

def run_config(cfg: dict) -> dict:
    """A training run's own entries: the config without the side commands' ingredients
    (``experiments.experiment.COMMAND_INGREDIENTS``)."""
    return {k: v for k, v in cfg.items() if k not in COMMAND_INGREDIENTS}


def run_name(cfg: dict) -> str:
    """``<dataset>-split<k>-<track>-seed<s>[-<tag>]`` (supervised: ``<dataset>-supervised-<stream>-seed<s>``):
    what the run list calls a run."""
    if cfg.get("train_mode") == "ensemble":
        name = f"{cfg.get('dataset')}-ensemble-{len(cfg.get('ensemble_members') or [])}runs"
    elif cfg.get("train_mode") in ("supervised", "linear_eval"):
        name = f"{cfg.get('dataset')}-{cfg.get('train_mode')}-{cfg.get('modality')}-seed{cfg.get('seed')}"
    else:
        name = f"{cfg.get('dataset')}-split{cfg.get('split')}-{cfg.get('train_mode')}-seed{cfg.get('seed')}"
    return f"{name}-{cfg['tag']}" if cfg.get("tag") else name


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
            cfg = run_config(redact(plain(config)))
            ex_info = {**ex_info, "name": run_name(cfg)}  # Omniboard's run list shows it as the run's name
            host_info = redact(plain(host_info))  # in case captured environment variables hold a URL
            self.journal = JournalObserver(self.records or records_dir())
            self.journal.started_event(copy.deepcopy(ex_info), command, host_info, start_time, cfg, meta, name)
            self.record = Path(self.journal.dir)
            write_record_state(self.record, uid=uid, state="offline" if offline else "live", pid=os.getpid(),
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
            write_record_state(self.record, mongo_id=run_id)
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
                write_record_state(self.record, state="pending", error=f"{type(exc).__name__}: {redact_text(str(exc))[:300]}")
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
            state = read_record_state(self.record)["state"]
            if state == "live":
                write_record_state(self.record, state="uploaded")
            elif state == "offline":
                print(f"run recorded offline in {self.record}; upload it with: python main.py sync", file=sys.stderr)
            elif state == "pending":
                self._recover()
            self._reset()

    def _recover(self) -> None:
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
        write_record_state(self.record, state="uploaded", mongo_id=run_id, target=target.display)
        print(f"MongoDB failed during the run; the complete run has now been uploaded to {target.display} "
              f"as run {run_id}.", file=sys.stderr)


def attach_observers(ex) -> None:
    """Add the observer that records every observed run locally and in MongoDB (once).

    Where it records is part of each run's config (``mongo_url``, ``offline``), so the
    observer reads it when the run starts."""
    if not any(isinstance(o, TrackingObserver) for o in ex.observers):
        ex.observers.append(TrackingObserver())
