"""Distributed sweeps: claims on grid points (exclusive, renewed, expiring), several workers on one
grid, and a killed worker's point taken over after its lease."""
from __future__ import annotations

import ast
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import pymongo
import pytest

from experiments.files import PROJECT_ROOT
from experiments.suite import sweep as sweep_module
from experiments.suite.claims import DONE, FAILED, RELEASED, RUNNING, Claims, point_key, server_clock
from experiments.suite.grid import Point
from experiments.tracking import dbserver
from tracking_support import cli_env, database, free_port, needs_server, wait_until

TINY_BASE = ("{'text_model': 'minilm', 'text_kind': 'labels', 'epoch_num': 1, 'hidden_channels': 4, "
             "'out_channels': 32, 'batch_size': 64, 'warmup_epochs': 1, 'monitor_unseen': False}")


FAR = datetime.datetime(2100, 1, 1)


class FakeClock:
    def __init__(self):
        self.now = datetime.datetime(2026, 1, 1, 12, 0, 0)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def db(tracking):
    """The ``pgfa`` database of a private embedded server."""
    return database(dbserver.ensure_running().url)


def test_point_key_is_stable_and_ignores_machine_paths():
    a = Point("demo", 1, 0, "default", {"epoch_num": 2, "data_root": "/home/ann/data"})
    b = Point("demo", 1, 0, "default", {"data_root": "/scratch/bob/data", "epoch_num": 2})
    assert point_key(a.updates()) == point_key(b.updates())  # same settings, other machine, other order
    assert point_key(a.updates()) != point_key(Point("demo", 1, 1, "default", {"epoch_num": 2}).updates())
    assert "config.data_root" not in sweep_module.completed_query(a)
    with_url = {"note_url": "mongodb://ann:s3cret@db:27017/x"}
    assert point_key(with_url) == point_key({"note_url": "mongodb://bob:other@db:27017/x"})  # as stored: redacted


@needs_server
def test_claims_are_exclusive_renewed_and_expire(db):
    clock = FakeClock()
    a, b = Claims(db.claims, "a", 60, clock), Claims(db.claims, "b", 60, clock)
    assert a.claim("p", label="demo split 1") and not b.claim("p")
    assert b.held_by_other(b.holder("p")) and not a.held_by_other(a.holder("p"))
    clock.advance(50)
    assert a.beat("p")  # renewed: valid until 50 + 60 s
    clock.advance(50)
    assert not b.claim("p")
    clock.advance(11)  # no heartbeat for more than a lease: a's worker is taken for dead
    assert not b.held_by_other(b.holder("p")) and b.claim("p")
    assert not a.beat("p") and not a.finish("p", DONE)  # a finds it lost the point and leaves b's claim alone
    doc = db.claims.find_one({"_id": "p"})
    assert (doc["worker"], doc["state"], doc["attempts"], doc["label"]) == ("b", RUNNING, 2, "demo split 1")
    db.claims.delete_one({"_id": "p"})  # someone cleared the claims: the next heartbeat claims the point again
    assert b.beat("p") and b.holder("p")["worker"] == "b"

    earlier = Claims(db.claims, "c", 60, clock)  # a worker already running when b's point fails
    clock.advance(1)
    assert b.finish("p", FAILED, rc=1)
    assert db.claims.find_one({"_id": "p"})["rc"] == 1
    clock.advance(1)
    assert not earlier.claim("p")  # failed during its sweep: left to a later sweep
    later = Claims(db.claims, "d", 60, clock)
    assert later.claim("p")  # a later sweep retries it
    assert later.finish("p", RELEASED)  # interrupted: anyone may take it at once
    assert earlier.claim("p") and earlier.finish("p", DONE)
    assert a.claim("p")  # done: taken again only if its COMPLETED run is gone (the sweep checks that first)
    with pytest.raises(ValueError, match="a claim ends as"):
        a.finish("p", RUNNING)


@needs_server
def test_racing_claimers_get_one_point_once(db):
    url = dbserver.read_server_state().url

    def race(key: str) -> list[int]:
        winners, barrier = [], threading.Barrier(8)

        def claimer(i: int) -> None:
            own = pymongo.MongoClient(url)["pgfa"]  # a connection per claimer, as separate workers have
            claims = Claims(own.claims, f"w{i}", 60, server_clock(own))
            barrier.wait()
            if claims.claim(key):
                winners.append(i)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return winners

    assert len(race("fresh")) == 1  # nobody held it: one insert succeeds, seven are refused
    db.claims.update_one({"_id": "fresh"}, {"$set": {"expires": datetime.datetime(2000, 1, 1)}})
    assert len(race("fresh")) == 1  # an expired claim: one takeover
    assert db.claims.find_one({"_id": "fresh"})["attempts"] == 2


@needs_server
def test_workers_run_each_point_once_on_their_devices(db, monkeypatch, tmp_path):
    """Three workers on six points whose runs succeed at once (a fake run process records a
    COMPLETED run): each point runs exactly once, on the workers' devices round-robin."""
    started = []

    class Run:
        def __init__(self, cmd, cwd, env, stdout, stderr):
            config = dict(arg.split("=", 1) for arg in cmd[3:])
            started.append((config["seed"], env["CUDA_VISIBLE_DEVICES"]))
            db.runs.insert_one({"status": "COMPLETED", "config": {k: ast.literal_eval(v) for k, v in config.items()}})

        def wait(self):
            time.sleep(0.05)
            return 0

    monkeypatch.setattr(sweep_module.subprocess, "Popen", Run)
    monkeypatch.setattr(sweep_module, "LOG_DIR", tmp_path / "logs")
    points = [Point("demo", 1, seed, "default") for seed in range(6)]
    lines = []
    done = sweep_module.run_sweep(points, db, workers=3, devices=["0", "1", "2"], log=lines.append)
    assert sorted(seed for seed, _ in started) == ["0", "1", "2", "3", "4", "5"], lines
    assert {device for _, device in started} <= {"0", "1", "2"} and len(done["completed"]) == 6
    claims = list(db.claims.find())
    assert len(claims) == 6 and {c["state"] for c in claims} == {DONE} and {c["attempts"] for c in claims} == {1}
    assert lines[-1] == "sweep: 6 completed"
    again = sweep_module.run_sweep(points, db, workers=3, log=lines.append)
    assert len(again["skipped"]) == 6 and len(started) == 6


@needs_server
def test_a_worker_that_lost_its_claim_stops_its_run(db, monkeypatch):
    """A worker whose heartbeats did not reach the database for a lease finds the point taken over
    and stops its run (SIGINT) rather than run the point a second time beside the new holder."""
    signals = []

    class Run:
        def __init__(self, cmd, cwd, env, stdout, stderr):
            self.stopped = threading.Event()
            threading.Timer(0.3, lambda: db.claims.update_one({}, {"$set": {"worker": "thief", "expires": FAR}})).start()

        def send_signal(self, sig):
            signals.append(sig)
            self.stopped.set()

        def wait(self):
            return 130 if self.stopped.wait(30) else 0

    monkeypatch.setattr(sweep_module.subprocess, "Popen", Run)
    lines = []
    done = sweep_module.run_sweep([Point("demo", 1, 0, "default")], db, lease_s=0.6, log=lines.append)
    assert signals == [signal.SIGINT] and done["failed"] == ["demo split 1 seed 0 [default]"]
    assert any("lost its claim" in line for line in lines), lines
    assert db.claims.find_one()["worker"] == "thief" and db.claims.find_one()["state"] == RUNNING  # left alone


def sweep_args(demo_root, *extra: str, base: str = TINY_BASE) -> list[str]:
    return [sys.executable, "main.py", "sweep", "with", f"data_root={str(demo_root)!r}", "sweep.datasets=['demo']",
            f"sweep.base={base}", *extra]


@needs_server
@pytest.mark.slow
def test_three_workers_complete_each_point_exactly_once(text_root, tmp_path):
    env = cli_env(tmp_path / "tracking", free_port())
    args = sweep_args(text_root, "sweep.splits=[1, 2]", "sweep.seeds=[0, 1]", "sweep.workers=3")
    try:
        out = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "sweep: 4 completed" in out.stdout, out.stdout[-3000:]
        db = database(dbserver.read_server_state(tmp_path / "tracking").url)
        assert db.runs.count_documents({}) == 4 and db.runs.count_documents({"status": "COMPLETED"}) == 4
        points = {(r["config"]["split"], r["config"]["seed"]) for r in db.runs.find()}
        assert points == {(1, 0), (1, 1), (2, 0), (2, 1)}
        claims = list(db.claims.find())
        assert len(claims) == 4 and all(c["state"] == DONE and c["attempts"] == 1 for c in claims)
        assert len({c["worker"] for c in claims}) >= 2  # the points ran in several workers
    finally:
        subprocess.run([sys.executable, "main.py", "server_stop"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                       timeout=60)


@needs_server
@pytest.mark.slow
def test_a_killed_workers_point_is_taken_over_after_its_lease(text_root, tmp_path):
    """Worker A claims the one point and is killed with its run (a crashed machine) while worker
    B waits for it; B takes the point over once A's lease has run out and completes it."""
    env = cli_env(tmp_path / "tracking", free_port())
    args = sweep_args(text_root, "sweep.splits=[1]", "sweep.seeds=[0]", "sweep.lease_s=6.0")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = b = None
    try:
        with open(log_a, "wb") as out:
            a = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # its own process group: killed with its run below
        info = wait_until(lambda: dbserver.read_server_state(tmp_path / "tracking"), 300, "the embedded server")
        db = database(info.url)
        claim = wait_until(lambda: db.claims.find_one({"state": RUNNING}), 300, "worker A's claim")
        with open(log_b, "wb") as out:
            b = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        # B starts while A's heartbeats keep its claim alive (a 6 s lease), and waits for it
        wait_until(lambda: f"running in worker {claim['worker']}" in log_b.read_text(), 300,
                   "worker B to see A's claim")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=60)
        assert b.wait(timeout=900) == 0, log_b.read_text()[-3000:]
        assert f"taken over from worker {claim['worker']}" in log_b.read_text()
        assert "sweep: 1 completed" in log_b.read_text(), log_b.read_text()[-3000:]
        assert db.runs.count_documents({"status": "COMPLETED"}) == 1  # A's run, if it began, never completed
        taken = db.claims.find_one({"_id": claim["_id"]})
        assert taken["state"] == DONE and taken["attempts"] == 2 and taken["worker"] != claim["worker"]
    finally:
        for proc in (a, b):  # a failed test: the workers and their runs
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "main.py", "server_stop"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                       timeout=60)


@needs_server
@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_releases_its_claim(text_root, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the sweep and its run): the run is recorded INTERRUPTED,
    the claim released for the next sweep, the sweep exits with 130."""
    env = cli_env(tmp_path / "tracking", free_port())
    args = sweep_args(text_root, "sweep.splits=[1]", "sweep.seeds=[0]",
                      base=TINY_BASE.replace("'epoch_num': 1", "'epoch_num': 40"))  # still running at Ctrl-C
    log = tmp_path / "sweep.log"
    with open(log, "wb") as out:  # a terminal's process group; SIGINT at its default, as in a terminal
        proc = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: "epoch 1/40" in log.read_text(), 300, "the run's first epoch")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
        db = database(dbserver.read_server_state(tmp_path / "tracking").url)
        assert [r["status"] for r in db.runs.find()] == ["INTERRUPTED"]
        assert db.claims.find_one()["state"] == RELEASED and "released for the next sweep" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "main.py", "server_stop"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                       timeout=60)
