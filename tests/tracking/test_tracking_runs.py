"""Runs recorded in MongoDB, through the real command line and in process: everything a run
has, FAILED / INTERRUPTED runs, two runs at once, database outages, offline mode + sync,
and credentials that must not be stored."""
import io
import json
import os
import signal
import subprocess
import sys

import bson
import numpy as np
import gridfs
import pymongo
import pytest
import torch

from experiments.files import PROJECT_ROOT
from experiments.tracking import dbserver
from experiments.tracking import observer as observers
from experiments.train import loop as train_module
from experiments.tracking.dbserver import TrackingError
from experiments.tracking.observer import TrackingObserver
from experiments.runtime import applied_allocator, default_allocator
from experiments.tracking.upload import sync
from experiments.tracking.output import OUTPUT_LIMIT
from main import ex
from tracking_support import (ARTIFACTS, PER_EPOCH, TINY, cli_args, cli_env, database, free_port, needs_server,
                              server_processes, start_cli, wait_until)

pytestmark = [needs_server, pytest.mark.slow]


def run_in_process(data_root, out_dir, **updates):
    """One tiny run through ``ex.run`` with the tracking observer attached."""
    obs = TrackingObserver()
    ex.observers.append(obs)
    try:
        return ex.run(config_updates={**TINY, "data_root": str(data_root), "out_dir": str(out_dir), **updates},
                      options={"--loglevel": "INFO"})  # INFO: the epoch lines are in the captured output
    finally:
        ex.observers.remove(obs)


def record_of(db, run_id) -> dict:
    return db.runs.find_one({"_id": run_id})


def metrics_of(db, run_id) -> dict[str, dict]:
    return {m["name"]: m for m in db.metrics.find({"run_id": run_id})}


def artifact(db, doc, name) -> bytes:
    file_id = next(a["file_id"] for a in doc["artifacts"] if a["name"] == name)
    return gridfs.GridFS(db).get(file_id).read()


def assert_complete(db, doc, epochs: int = 2, allocator: str | None = None) -> None:
    """Everything a finished run must have in MongoDB. ``allocator``: what the run's process
    applied (default: what ``python main.py`` applies in this environment)."""
    assert doc["status"] == "COMPLETED"
    assert doc["config"]["dataset"] == "demo" and doc["config"]["epoch_num"] == epochs
    assert doc["host"]["hostname"] and doc["host"]["python_version"]
    # the allocator main.py applied (experiments/runtime.py), recorded with the run
    want = (os.environ.get("PGFA_ALLOCATOR") or default_allocator()) if allocator is None else allocator
    assert doc["host"]["allocator"] == want
    sources = dict(doc["experiment"]["sources"])
    assert {"main.py", "config.py", "experiments/train/loop.py", "module/stgcn.py"} <= set(sources)
    assert gridfs.GridFS(db).get(sources["experiments/train/loop.py"]).read() == \
        (PROJECT_ROOT / "experiments" / "train" / "loop.py").read_bytes()
    out = doc["captured_out"]
    assert f"epoch {epochs}/{epochs}" in out and "unseen top-1" in out and "\r" not in out and len(out) <= OUTPUT_LIMIT
    metrics = metrics_of(db, doc["_id"])
    for name in PER_EPOCH:
        assert metrics[name]["steps"] == list(range(epochs)), name
    assert metrics["val_top1"]["values"][doc["result"]["best_epoch"]] == doc["result"]["best_val_top1"]
    summary = doc["info"]["summary"]
    for key in ("best_val_top1", "unseen_top1", "unseen_top1_aligned"):
        assert summary[key] == doc["result"][key]
    assert summary["epochs"] == epochs
    assert {a["name"] for a in doc["artifacts"]} == ARTIFACTS
    ckpt = torch.load(io.BytesIO(artifact(db, doc, "best.pt")), weights_only=True)
    assert ckpt["config"]["dataset"] == "demo" and "logit_scale" in ckpt["model"]
    csv_rows = artifact(db, doc, "unseen_per_class.csv").decode().splitlines()
    assert csv_rows[0].startswith("class_id,class_name") and len(csv_rows) == 1 + len(doc["result"]["unseen_classes"])
    for png in ("unseen_confusion.png", "embedding_2d.png", "curves.png"):
        assert artifact(db, doc, png)[:4] == b"\x89PNG"
    assert len(bson.encode(doc)) < 200_000  # far below the 16 MB document limit


# ----------------------------------------------------------------------------- two runs at once, CLI

def test_two_concurrent_runs_one_server(two_cli_runs):
    assert two_cli_runs["codes"] == [0, 0], two_cli_runs["logs"]
    info = two_cli_runs["info"]
    assert server_processes(two_cli_runs["tracking"] / "db") == [info.pid]
    docs = list(database(info.url).runs.find({}, {"status": 1, "config.seed": 1}))
    assert sorted(d["config"]["seed"] for d in docs) == [0, 1] and len({d["_id"] for d in docs}) == 2
    assert all(d["status"] == "COMPLETED" for d in docs)


def test_cli_run_has_every_item(two_cli_runs):
    db = database(two_cli_runs["info"].url)
    for doc in db.runs.find():
        assert_complete(db, doc)
        record = two_cli_runs["tracking"] / "records" / doc["meta"]["local_record"]["name"]
        assert json.loads((record / "tracking.json").read_text())["state"] == "uploaded"


# ----------------------------------------------------------------------------- FAILED and INTERRUPTED

def test_failed_run_is_recorded_with_its_trace(tracking, text_root, tmp_path, monkeypatch):
    real_epoch = train_module.train_epoch
    calls = []

    def breaks_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in epoch 2")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", breaks_in_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_in_process(text_root, tmp_path / "ckpt")
    db = database(dbserver.read_server_state().url)
    doc = db.runs.find_one()
    assert doc["status"] == "FAILED"
    assert "simulated crash in epoch 2" in "".join(doc["fail_trace"])
    assert metrics_of(db, doc["_id"])["train_loss"]["steps"] == [0]  # epoch 1 was logged before the crash


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_gives_interrupted(tracking, text_root, tmp_path, sig):
    env = cli_env(tracking, int(os.environ["PGFA_DB_PORT"]))
    proc = start_cli(cli_args(text_root, tmp_path / "ckpt", epoch_num=200) + ["-b", "1"], env, tmp_path / "run.log")
    try:
        wait_until(lambda: dbserver.read_server_state() is not None, 120, "the server")
        db = database(dbserver.read_server_state().url)
        wait_until(lambda: db.metrics.find_one({"name": "train_loss"}), 180, "the first epoch in MongoDB")
        proc.send_signal(sig)  # SIGINT is what Ctrl-C sends
        proc.wait(timeout=120)
    finally:
        proc.kill()
    doc = db.runs.find_one()
    assert doc["status"] == "INTERRUPTED", (tmp_path / "run.log").read_text()[-2000:]
    assert doc["stop_time"] is not None and metrics_of(db, doc["_id"])["train_loss"]["steps"]
    assert dbserver.status() is not None  # Ctrl-C did not reach the server (its own session)


# ----------------------------------------------------------------------------- outages

def kill_server_after_first_metric(proc, tmp_path) -> int:
    """Wait for the run's first metric in MongoDB, SIGKILL the server; returns the run _id."""
    try:
        wait_until(lambda: dbserver.read_server_state() is not None, 120, "the server")
        info = dbserver.read_server_state()
        db = database(info.url)
        metric = wait_until(lambda: db.metrics.find_one({"name": "train_loss"}), 180, "the first epoch in MongoDB")
        os.kill(info.pid, signal.SIGKILL)
        wait_until(lambda: not dbserver.pid_alive(info.pid), 10, "the server to die")
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        proc.kill()
    return metric["run_id"]


def test_server_killed_mid_run_the_run_finishes_and_is_complete(tracking, text_root, tmp_path):
    """The embedded server dies during training: the run goes on, and when it ends the
    observer restarts the server and uploads the complete run from its local record."""
    env = cli_env(tracking, int(os.environ["PGFA_DB_PORT"]))
    proc = start_cli(cli_args(text_root, tmp_path / "ckpt", epoch_num=4) + ["-b", "1"], env, tmp_path / "run.log")
    run_id = kill_server_after_first_metric(proc, tmp_path)
    log = (tmp_path / "run.log").read_text()
    assert "failed during the run" in log and "has now been uploaded" in log
    db = database(dbserver.status().url)
    assert db.runs.count_documents({}) == 1
    assert_complete(db, record_of(db, run_id), epochs=4)  # same _id as before the outage


def test_outage_of_a_url_database_then_sync(tracking, text_root, tmp_path):
    """A database given by URL is not ours to restart: the run ends pending, and `sync`
    completes it once the database is back (same _id, nothing duplicated)."""
    info = dbserver.ensure_running()
    url = f"mongodb://127.0.0.1:{info.port}/pgfa"
    env = cli_env(tracking, info.port, PGFA_MONGO_URL=url)
    proc = start_cli(cli_args(text_root, tmp_path / "ckpt", epoch_num=4) + ["-b", "1"], env, tmp_path / "run.log")
    run_id = kill_server_after_first_metric(proc, tmp_path)
    assert "python main.py sync" in (tmp_path / "run.log").read_text()
    record = next((tracking / "records").glob("2*"))
    assert json.loads((record / "tracking.json").read_text())["state"] == "pending"

    dbserver.ensure_running()  # the database is back (same port)
    done = subprocess.run([sys.executable, "main.py", "sync"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"as run {run_id}" in done.stdout and "1 run(s) uploaded" in done.stdout
    db = database(url)
    assert db.runs.count_documents({}) == 1
    assert_complete(db, record_of(db, run_id), epochs=4)
    assert db.metrics.count_documents({"run_id": run_id}) == len(PER_EPOCH)  # no half-uploaded leftovers


def test_unreachable_database_fails_before_training(tracking, text_root, tmp_path):
    url = f"mongodb://someone:hunter22@127.0.0.1:{free_port()}/pgfa"
    with pytest.raises(TrackingError) as err:
        run_in_process(text_root, tmp_path / "ckpt", mongo_url=url)
    msg = str(err.value)
    assert "not reachable" in msg and "127.0.0.1" in msg and "offline=True" in msg and "python main.py sync" in msg
    assert "hunter22" not in msg and "someone" not in msg
    assert not (tmp_path / "ckpt").exists()  # nothing was trained
    assert not (tracking / "records").exists() or not any((tracking / "records").glob("2*"))  # no record


# ----------------------------------------------------------------------------- offline + sync

def test_offline_run_then_sync_uploads_exactly_once(tracking, text_root, tmp_path):
    res = run_in_process(text_root, tmp_path / "ckpt", offline=True)
    assert res.status == "COMPLETED"
    assert not (tracking / "server.json").exists()  # offline: no database was contacted
    record = next((tracking / "records").glob("2*"))
    assert json.loads((record / "tracking.json").read_text())["state"] == "offline"

    target = observers.resolve_target("")  # starts the embedded server
    first = sync(target)
    assert [r for r, _ in first["uploaded"]] == [record]
    run_id = first["uploaded"][0][1]
    db = database(target.url)
    assert_complete(db, record_of(db, run_id), allocator=applied_allocator())  # ran in this process
    assert record_of(db, run_id)["config"]["offline"] is True

    assert sync(target)["uploaded"] == []  # already uploaded: nothing to do
    # a sync that crashed after uploading but before marking the record: the upload is redone
    # in place (found by the record's uid), never duplicated
    state = json.loads((record / "tracking.json").read_text())
    (record / "tracking.json").write_text(json.dumps({**state, "state": "offline"}))
    again = sync(target)
    assert again["uploaded"] == [(record, run_id)]
    assert db.runs.count_documents({}) == 1 and db.metrics.count_documents({}) == len(PER_EPOCH)
    assert db.fs.files.count_documents({"filename": {"$regex": "^artifact://"}}) == len(ARTIFACTS)
    with pytest.raises(pymongo.errors.DuplicateKeyError):  # the database itself refuses a second copy
        db.runs.insert_one({"_id": 999, "meta": {"local_record": {"uid": state["uid"]}}})


# ----------------------------------------------------------------------------- credentials

def test_url_credentials_are_not_stored(tracking, text_root, tmp_path):
    info = dbserver.ensure_running()
    pymongo.MongoClient(info.url).admin.command("createUser", "runwriter", pwd="Zq9-secret-pw",
                                                roles=[{"role": "root", "db": "admin"}])
    url = f"mongodb://runwriter:Zq9-secret-pw@127.0.0.1:{info.port}/withauth?authSource=admin"
    res = run_in_process(text_root, tmp_path / "ckpt", mongo_url=url)
    db = pymongo.MongoClient(url)["withauth"]
    doc = record_of(db, res._id)
    assert doc["status"] == "COMPLETED" and doc["config"]["mongo_url"].startswith("mongodb://***@127.0.0.1")
    stored = [json.dumps(doc, default=str)] + [json.dumps(m, default=str) for m in db.metrics.find()]
    stored += [gridfs.GridFS(db).get(a["file_id"]).read().decode("latin-1") for a in doc["artifacts"]]
    ckpt = torch.load(io.BytesIO(artifact(db, doc, "best.pt")), weights_only=True)
    stored.append(json.dumps(ckpt["config"]))
    record = tracking / "records" / doc["meta"]["local_record"]["name"]
    stored += [p.read_bytes().decode("latin-1") for p in record.iterdir()]
    stored.append((tmp_path / "ckpt" / "best.pt").read_bytes().decode("latin-1"))
    for text in stored:
        assert "Zq9-secret-pw" not in text and "runwriter" not in text


# ----------------------------------------------------------------------------- ensembles of recorded runs

def test_ensemble_of_runs_recorded_in_mongodb_is_recorded_naming_its_members(tracking, tmp_path):
    sup = dict(train_mode="supervised", dataset="demo", epoch_num=1, hidden_channels=4, out_channels=16, max_frame=8,
               batch_size=64, warmup_epochs=1)
    ids = [run_in_process(tmp_path, tmp_path / m, modality=m, **sup)._id for m in ("joint", "bone")]
    db = database(dbserver.read_server_state().url)
    scores = [np.load(io.BytesIO(artifact(db, record_of(db, i), "test_scores.npz")))["scores"] for i in ids]
    res = run_in_process(tmp_path, tmp_path / "ens", train_mode="ensemble", ensemble_members=ids)
    doc = record_of(db, res._id)
    assert doc["status"] == "COMPLETED" and doc["experiment"]["name"] == "demo-ensemble-2runs"
    assert [m["ref"] for m in doc["result"]["members"]] == [str(i) for i in ids]
    assert doc["result"]["weights"] == [1.0, 1.0] and doc["result"]["weight_rule"] == "equal weights"
    fused = np.load(io.BytesIO(artifact(db, doc, "ensemble_scores.npz")))["scores"]
    np.testing.assert_allclose(fused, scores[0].astype(np.float64) + scores[1], rtol=1e-6)
    assert doc["info"]["summary"]["ensemble_top1"] == doc["result"]["ensemble_top1"]


def test_a_checkpoint_is_evaluated_by_its_run_id_in_mongodb(tracking, text_root, tmp_path):
    trained = run_in_process(text_root, tmp_path / "train")
    res = run_in_process(text_root, tmp_path / "eval", train_mode="test", checkpoint=str(trained._id)).result
    assert res["evaluated_checkpoint"].endswith(f"run-{trained._id}/best.pt")
    assert res["unseen_top1"] == trained.result["unseen_top1"]


def test_a_streams_run_s_id_is_refused_as_a_checkpoint_naming_its_streams_checkpoints(tracking, text_root, tmp_path):
    trained = run_in_process(text_root, tmp_path / "train", selection="snapshot", streams=["joint", "bone"])
    db = database(dbserver.read_server_state().url)
    names = {a["name"] for a in record_of(db, trained._id)["artifacts"]}
    assert {"joint_best.pt", "bone_best.pt", "streams.json"} <= names and "best.pt" not in names
    with pytest.raises(ValueError, match=f"checkpoint {trained._id}: a stream ensemble run .*joint_best.pt, "
                                         "bone_best.pt"):
        run_in_process(text_root, tmp_path / "eval", train_mode="test", checkpoint=str(trained._id))
