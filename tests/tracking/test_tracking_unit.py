"""Tracking pieces that need no database: credential redaction, the captured-output filter,
source discovery, URL resolution, the run summary and the report files."""
import csv
import json
import re
from types import SimpleNamespace

import pytest
import torch

from experiments.train import artifacts
from experiments.tracking.dbserver import TrackingError
from experiments.tracking.database import MONGO_URL_ENV, resolve_target
from experiments.tracking.output import OUTPUT_LIMIT, clean_output, project_sources, redact, redact_text
from experiments.tracking.tracker import SacredTracker
from experiments.files import PROJECT_ROOT


@pytest.mark.parametrize("text,secret", [
    ("mongodb://alice:pa55w0rd@db.example.org:27017/runs", "pa55w0rd"),
    ("mongodb+srv://alice:pa55w0rd@cluster0.example.net/runs?retryWrites=true", "pa55w0rd"),
    ("mongodb://alice:p%40ss@h1:1,h2:2/runs?authSource=admin", "p%40ss"),
    ("connect to mongodb://alice:pa55w0rd@h:1/x and retry", "pa55w0rd"),
    ("mongodb://h:1/x?tls=true&tlsCertificateKeyFilePassword=pa55w0rd&w=1", "pa55w0rd"),
    ("mongodb://h:1/x?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok3n", "tok3n"),
])
def test_redaction_removes_credentials(text, secret):
    out = redact_text(text)
    assert secret not in out and "alice" not in out
    assert "mongodb" in out and "***" in out


def test_redaction_keeps_what_is_not_a_secret():
    assert redact_text("mongodb://127.0.0.1:27117/pgfa?authSource=admin&w=1") == \
        "mongodb://127.0.0.1:27117/pgfa?authSource=admin&w=1"
    assert redact_text("user@example.org wrote: a@b") == "user@example.org wrote: a@b"
    nested = {"mongo_url": "mongodb://u:pw@h/x", "UPDATE": ["lr=0.1", "mongo_url=mongodb://u:pw@h/x"], "lr": 0.1}
    assert redact(nested) == {"mongo_url": "mongodb://***@h/x", "UPDATE": ["lr=0.1", "mongo_url=mongodb://***@h/x"],
                              "lr": 0.1}


def test_captured_output_keeps_the_final_state_of_progress_bars():
    bar = "".join(f"\repoch 1:  {p:3d}%|{'#' * (p // 10):10s}| {p}/100" for p in range(0, 101, 5))
    raw = "INFO - start\n" + bar + "\r" + " " * 40 + "\r" + "INFO - epoch 1/2 loss 2.8\n\x1b[A\x1b[2Kdone\n"
    out = clean_output(raw)
    assert "\r" not in out and "\x1b" not in out
    assert out.splitlines() == ["INFO - start", "INFO - epoch 1/2 loss 2.8", "done", ""][:len(out.splitlines())]
    assert out.count("epoch 1:") == 0  # the bar was cleared by its last redraw, as on a terminal


def test_captured_output_is_capped_head_and_tail_and_stays_capped_as_it_grows():
    line = "x" * 99 + "\n"
    text, total = "", 0
    for chunk in range(30):  # Sacred re-filters the accumulated output at every heartbeat
        new = "".join(f"{chunk:03d}-{i:04d} {line}" for i in range(200))
        total += len(new)
        text = clean_output(text + new, limit=50_000)
        assert len(text) <= 50_000
    assert text.startswith("000-0000 ")  # the head survives
    assert text.rstrip().endswith("029-0199 " + "x" * 99)  # and the tail
    marker = re.search(r"\[\.\.\. (\d+) characters of output left out \.\.\.\]\n", text)
    assert int(marker.group(1)) + len(text) - len(marker.group(0)) == total  # it counts exactly what is missing
    assert clean_output(text, limit=50_000) == text  # idempotent
    assert OUTPUT_LIMIT < 1_000_000  # far below MongoDB's 16 MB document limit


def test_project_sources_are_the_code_only(tmp_path):
    found = {p.relative_to(PROJECT_ROOT).as_posix() for p in project_sources()}
    assert {"main.py", "config.py", "experiments/train/loop.py", "module/stgcn.py"} <= found
    assert not any(p.startswith((".", "tests/")) or "/." in p for p in found)
    for f in ["main.py", "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py", "pkg/data/c.py",
              "venv/lib/python3.11/site-packages/torch/__init__.py", ".venv/lib/d.py", "tests/test_x.py"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in project_sources(tmp_path)] == [
        "main.py", "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py"]


def test_database_url_resolution(monkeypatch):
    monkeypatch.setenv(MONGO_URL_ENV, "mongodb://u:pw@envhost:27017/fromenv")
    t = resolve_target("")
    assert (t.url, t.db_name, t.embedded) == ("mongodb://u:pw@envhost:27017/fromenv", "fromenv", False)
    assert "pw" not in t.display and "envhost:27017" in t.display
    t = resolve_target("mongodb://cfg:27017")  # the config entry wins; no database in the URL: pgfa
    assert (t.url, t.db_name) == ("mongodb://cfg:27017", "pgfa")
    with pytest.raises(TrackingError, match="not a MongoDB URL") as err:
        resolve_target("http://u:secretpw@host/db")
    assert "secretpw" not in str(err.value)


def test_summary_tracks_progress_and_takes_the_headline_numbers():
    run = SimpleNamespace(info={}, logged=[], log_scalar=lambda n, v, s: run.logged.append((n, v, s)))
    tracker = SacredTracker(run)
    for step, val in enumerate([30.0, 50.0, 40.0]):
        tracker.log_scalar("val_top1", val, step)
    assert run.info["summary"] == {"val_top1": 40.0, "best_val_top1": 50.0, "epochs": 3}
    tracker.summarize({"best_val_top1": 50.0, "unseen_top1": 61.5, "unseen_top1_aligned": 70.0, "split": "1"})
    assert run.info["summary"]["unseen_top1_aligned"] == 70.0 and "split" not in run.info["summary"]
    assert len(run.logged) == 3


def test_report_files(tmp_path):
    classes = [2, 5, 7]
    labels = torch.tensor([2, 2, 5, 5, 7, 7, 7, 2])
    pred = torch.tensor([2, 5, 5, 5, 7, 2, 7, 2])        # 2: 2/3, 5: 2/2, 7: 2/3
    pred_a = torch.tensor([2, 2, 5, 5, 7, 7, 7, 2])      # all right
    feats, text = torch.randn(8, 16), torch.randn(10, 16)
    names = {2: "wave", 5: "jump", 7: "sit down"}
    paths = artifacts.write_unseen_report(tmp_path, labels, classes, names, pred, pred_a, feats, text,
                                          torch.randn(3, 16))
    assert [p.name for p in paths] == ["unseen_confusion.png", "unseen_per_class.csv", "embedding_2d.png"]
    rows = list(csv.DictReader(open(paths[1])))
    assert [(r["class_id"], r["class_name"], r["samples"], r["top1_inductive"], r["top1_aligned"]) for r in rows] == [
        ("2", "wave", "3", "66.67", "100.00"), ("5", "jump", "2", "100.00", "100.00"),
        ("7", "sit down", "3", "66.67", "100.00")]
    for png in (paths[0], paths[2]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # without alignment: no aligned column values, no prototypes
    paths = artifacts.write_unseen_report(tmp_path / "b", labels, classes, names, pred, None, feats, text, None)
    assert all(r["top1_aligned"] == "" for r in csv.DictReader(open(paths[1])))


def test_class_names_fall_back_to_ids_without_texts():
    assert artifacts.class_names("demo", [0])[0] == json.load(open(PROJECT_ROOT / "descriptions" / "demo.json"))[
        "classes"][0]["labels"]
    assert artifacts.class_names("ntu60", [3, 4]) == {3: "brushing hair", 4: "drop"}
    assert artifacts.class_names("no_texts_here", [3, 4]) == {3: "class 3", 4: "class 4"}
