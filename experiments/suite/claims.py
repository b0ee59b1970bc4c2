"""Claims on sweep points, so that several sweep workers (threads of one sweep, sweeps on other
machines) share one grid through the database the runs are recorded in.

One document per point in the ``claims`` collection, ``_id`` = ``point_key`` of the point's
settings::

    {"_id": key, "worker": "host:pid:w0:1a2b3c", "state": "running" | "done" | "failed" | "released",
     "label": ..., "point": {settings}, "claimed_at": t, "heartbeat": t, "expires": t + lease_s,
     "lease_s": 120.0, "attempts": n, "released_at": t, "rc": exit status}

Claiming is one atomic ``find_one_and_update`` with ``upsert=True`` whose filter matches only a
claim that may be taken: none yet (the upsert inserts it), one ``done`` or ``released``, one
``running`` whose ``expires`` has passed (its worker stopped beating: crashed, killed, cut off),
or one ``failed`` before this worker started (a rerun retries failures; workers already running
when a point failed do not all try it again). Against a claim that may not be taken the filter
matches nothing, the upsert tries to insert a second document with the same ``_id`` and the
database refuses it (DuplicateKeyError): someone else holds the point. Two workers racing for one
point therefore get one success and one refusal, on any MongoDB.

Times are the database server's clock (``hello``'s ``localTime``), read by the client and
written as plain values, so workers on machines whose clocks disagree still agree on whether a
lease has expired. (SecantusDB, the embedded server, accepts ``$$NOW`` in update pipelines but
its comparisons with ``$$NOW`` in a query's ``$expr`` match nothing, so the expiry test is a
plain ``{"expires": {"$lt": now}}`` with ``now`` read first.)
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import socket
from typing import Callable

import pymongo
import pymongo.errors

from experiments.tracking.output import redact

Clock = Callable[[], datetime.datetime]

# Settings that say where a machine keeps its files, not what a run is: a point is the same point
# on machines whose data folders differ.
MACHINE_LOCAL = ("data_root",)
RUNNING, DONE, FAILED, RELEASED = "running", "done", "failed", "released"


def point_identity(updates: dict) -> dict:
    """A point's settings as they identify it: credentials redacted, machine-local paths left out."""
    return {k: redact(v) for k, v in updates.items() if k not in MACHINE_LOCAL}


def point_key(updates: dict) -> str:
    """A stable id of a point: the sha256 of its identity as canonical JSON (keys sorted)."""
    text = json.dumps(point_identity(updates), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def server_clock(db: pymongo.database.Database) -> Clock:
    """The database server's time (``hello``, or ``isMaster`` before MongoDB 4.4.2)."""

    def now() -> datetime.datetime:
        try:
            return db.client.admin.command("hello")["localTime"]
        except pymongo.errors.OperationFailure:
            return db.client.admin.command("isMaster")["localTime"]

    return now


def worker_id(index: int = 0) -> str:
    """``host:pid:w<index>:<random>``: unique per worker, readable in the claims collection."""
    return f"{socket.gethostname()}:{os.getpid()}:w{index}:{secrets.token_hex(3)}"


class Claims:
    """One worker's claims on points.

    Args:
        collection: the ``claims`` collection.
        worker: this worker's id (``worker_id``).
        lease_s: how long a claim stays valid without a heartbeat.
        clock: the current time; the database server's (``server_clock``) unless a test fakes it.
    """

    def __init__(self, collection: pymongo.collection.Collection, worker: str, lease_s: float, clock: Clock):
        if lease_s <= 0:
            raise ValueError(f"sweep.lease_s must be positive, not {lease_s}")
        self.collection, self.worker, self.lease_s, self.clock = collection, worker, float(lease_s), clock
        self.lease = datetime.timedelta(seconds=self.lease_s)
        self.started = clock()  # failures from before this moment are retried, later ones are not

    def claim(self, key: str, **info) -> bool:
        """Take the point if nobody holds it; ``info`` (label, point) is stored with the claim."""
        now = self.clock()
        takeable = [{"state": {"$in": [DONE, RELEASED]}}, {"state": RUNNING, "expires": {"$lt": now}},
                    {"state": FAILED, "released_at": {"$lt": self.started}}]
        try:
            self.collection.find_one_and_update(
                {"_id": key, "$or": takeable},
                {"$set": {"worker": self.worker, "state": RUNNING, "claimed_at": now, "heartbeat": now,
                          "expires": now + self.lease, "lease_s": self.lease_s, **info},
                 "$unset": {"released_at": "", "rc": ""}, "$inc": {"attempts": 1}},
                upsert=True)
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    def beat(self, key: str) -> bool:
        """Extend this worker's running claim by a lease; False if another worker holds the point now.
        A claim that has gone (someone cleared the collection) is taken again."""
        now = self.clock()
        res = self.collection.update_one({"_id": key, "worker": self.worker, "state": RUNNING},
                                         {"$set": {"heartbeat": now, "expires": now + self.lease}})
        return res.matched_count == 1 or self.claim(key)

    def finish(self, key: str, state: str, rc: int | None = None) -> bool:
        """End this worker's claim: ``done`` (the run COMPLETED), ``failed`` (retried by a later
        sweep) or ``released`` (interrupted: any worker may take it at once)."""
        if state not in (DONE, FAILED, RELEASED):
            raise ValueError(f"a claim ends as {DONE}, {FAILED} or {RELEASED}, not {state!r}")
        res = self.collection.update_one({"_id": key, "worker": self.worker, "state": RUNNING},
                                         {"$set": {"state": state, "released_at": self.clock(), "rc": rc}})
        return res.matched_count == 1

    def holder(self, key: str) -> dict | None:
        """The point's claim document, if any."""
        return self.collection.find_one({"_id": key})

    def held_by_other(self, doc: dict | None) -> bool:
        """Whether ``doc`` is a live claim of another worker (running, lease not expired)."""
        return (doc is not None and doc.get("state") == RUNNING and doc.get("worker") != self.worker
                and doc["expires"] >= self.clock())
