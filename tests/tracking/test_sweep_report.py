"""Sweeps (grid, skip what is COMPLETED) and the results table."""
import csv
import math
import datetime
import subprocess
import sys
from types import SimpleNamespace

import pytest

from experiments.files import PROJECT_ROOT
from experiments.tracking import dbserver
from experiments.suite.report import aggregate, bar_chart, to_markdown
from experiments.suite.grid import Point, grid
from experiments.suite.sweep import command, completed_query
from tracking_support import cli_env, database, free_port, needs_server


def test_grid_defaults_to_the_tracks_splits_and_orders_points():
    pts = grid(["ntu60"], [], [0, 1], {"a": {}, "b": {"DA": False}}, {"epoch_num": 3}, data_root="data")
    assert [p.split for p in pts[:4]] == [1, 1, 1, 1] and len(pts) == 3 * 2 * 2
    assert pts[2].variant == "b" and pts[2].updates() == {"epoch_num": 3, "DA": False, "dataset": "ntu60",
                                                          "split": 1, "seed": 0, "tag": "b"}
    sota = grid(["ntu60"], [], [0], {"x": {}}, {"train_mode": "sota"}, data_root="data")
    assert [p.split for p in sota] == [5, 12]
    with pytest.raises(ValueError, match=r"splits \['9'\] not defined"):
        grid(["ntu60"], [9], [0], {"x": {}}, {}, data_root="data")


def test_point_query_and_command_line():
    p = Point("demo", 2, 1, "labels", {"text_kind": "labels", "DA": False})
    q = completed_query(p)
    assert q["status"] == "COMPLETED" and q["config.split"] == 2 and q["config.tag"] == "labels"
    assert q["config.text_kind"] == "labels" and q["config.DA"] is False
    args = command(p, python="py")
    assert args[2] == "with" and "text_kind='labels'" in args and "DA=False" in args and "split=2" in args


def test_points_carry_the_defaults_their_dataset_resolves_to():
    from experiments.suite.grid import with_run_defaults
    from main import ex

    points = with_run_defaults(grid(["nw_ucla", "demo"], [1], [0], {"b": {}, "v": {"selection": "val"}},
                                    {"epoch_num": 25}, data_root="data"), ex.resolved_config)
    nw, nw_val, demo, _ = points
    assert nw.defaults == {"batch_size": 32, "selection": "snapshot", "text_kind": "labels+des+parts",
                           "trainval": True}
    assert nw_val.defaults["trainval"] is False and "selection" not in nw_val.defaults  # the override wins
    assert demo.defaults == {"batch_size": 32, "lr_steps": [5], "max_frame": 32, "warmup_epochs": 1}
    assert "trainval" not in nw.updates()  # the command line is unchanged
    q = completed_query(nw)  # a run recorded before NW-UCLA's defaults changed is not this point's
    assert q["config.trainval"] is True and q["config.selection"] == "snapshot" and q["config.epoch_num"] == 25


def doc(_id, seed, top1, aligned=None, tag="", split=1, **cfg):
    res = {"unseen_top1": top1, "unseen_per_class_mean": top1, "selection": "val"}
    if aligned is not None:
        res["unseen_top1_aligned"] = aligned
    config = {"dataset": "demo", "split": split, "train_mode": "main", "seed": seed, "tag": tag, "lr": 0.05, **cfg}
    return {"_id": _id, "config": config, "result": res}


def test_aggregate_mean_std_over_seeds_and_variants():
    runs = [doc(1, 0, 60.0, 62.0), doc(2, 1, 70.0, 66.0), doc(3, 2, 80.0, 70.0),
            doc(4, 0, 50.0, lr=0.1), doc(5, 0, 10.0, tag="mine"), doc(6, 0, 20.0, tag="mine")]
    rows = {r.variant: r for r in aggregate(runs)}
    assert set(rows) == {"lr=0.05", "lr=0.1", "mine"}
    m, s = rows["lr=0.05"].stat("unseen_top1")
    assert m == pytest.approx(70.0) and s == pytest.approx(10.0)  # sample std of 60, 70, 80
    assert rows["lr=0.05"].stat("unseen_top1_aligned")[0] == pytest.approx(66.0)
    assert rows["lr=0.05"].transductive and not rows["lr=0.1"].transductive
    assert rows["mine"].seeds == [0] and rows["mine"].stat("unseen_top1") == (20.0, 0.0)  # the later run wins
    md = to_markdown(list(rows.values()))
    assert "70.00 ± 10.00" in md and "transductive" in md and "| val |" in md


def test_quoted_numbers_are_labelled(tmp_path):
    runs = [doc(1, 0, 55.0, 58.0, split=5, dataset="ntu60", train_mode="sota")]
    rows = aggregate(runs)
    md = to_markdown(rows)
    assert "PGFA 80.26" in md and "quoted (published, test-selected)" in md
    bar_chart(rows, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 5000


@needs_server
@pytest.mark.slow
def test_sweep_fills_the_table_and_a_rerun_starts_nothing(demo_root, tmp_path):
    env = cli_env(tmp_path / "tracking", free_port())
    base = ("{'text_model': 'minilm', 'text_kind': 'labels', 'epoch_num': 1, 'hidden_channels': 4, "
            "'out_channels': 32, 'batch_size': 64, 'warmup_epochs': 1, 'monitor_unseen': False}")
    args = [sys.executable, "main.py", "sweep", "with", f"data_root={str(demo_root)!r}", "sweep.datasets=['demo']",
            "sweep.splits=[1, 2]", "sweep.seeds=[0, 1]", f"sweep.base={base}"]
    try:
        out = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "sweep: 4 completed" in out.stdout
        db = database(dbserver.read_server_state(tmp_path / "tracking").url)
        assert db.runs.count_documents({"status": "COMPLETED"}) == 4
        rep = subprocess.run([sys.executable, "main.py", "results", "with", f"report.out={str(tmp_path / 'res')!r}"],
                             env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0, rep.stderr[-3000:]
        rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv")))
        assert [(r["split"], r["seeds"]) for r in rows] == [("1", "0 1"), ("2", "0 1")]
        assert (tmp_path / "res" / "results.png").is_file() and "| demo | 1 |" in rep.stdout
        again = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "sweep: 4 skipped" in again.stdout, again.stdout[-2000:]
        assert db.runs.count_documents({}) == 4
    finally:
        subprocess.run([sys.executable, "main.py", "server_stop"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                       timeout=60)


def test_sweep_points_with_a_url_are_recorded_where_the_sweep_looks(monkeypatch):
    from experiments.suite import sweep as sweep_module

    url = "mongodb://ann:s3cret@db.example:27017/lab"
    p = Point("demo", 1, 0, "default", {"note_url": url})
    assert completed_query(p)["config.note_url"] == "mongodb://***@db.example:27017/lab"  # as it is stored
    calls = []

    class Child:  # a point's run process that succeeds at once
        def __init__(self, cmd, cwd, env, stdout, stderr):
            calls.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(sweep_module.subprocess, "Popen", Child)

    class NoRuns:
        class runs:
            @staticmethod
            def count_documents(query, limit):
                return 0

        class claims:  # every claim is granted
            @staticmethod
            def find_one_and_update(query, update, upsert):
                return None

            @staticmethod
            def update_one(query, update):
                return SimpleNamespace(matched_count=1)

    sweep_module.run_sweep([Point("demo", 1, 0, "default")], NoRuns, mongo_url=url, log=lambda m: None,
                           clock=datetime.datetime.now)
    (cmd, env), = calls
    assert env["PGFA_MONGO_URL"] == url and not any("s3cret" in c for c in cmd)


def test_ablation_variants_and_table():
    from experiments.suite.ablation import (AblationRow, ablation_variants, best_by_validation, clear_gain, difference,
                                            paired_stats, runs_query, summarize)
    from experiments.suite.ablation import to_markdown as ablation_markdown

    v = ablation_variants(["ema", "texts"], [["ema", "texts"]], extra={"mine": {"lr": 0.01}})
    assert list(v) == ["baseline", "+ema", "+texts", "+ema+texts"]
    assert v["+ema+texts"] == {"weight_average": "ema", "text_kind": "labels+des+parts"} and v["baseline"] == {}
    with pytest.raises(ValueError, match=r"unknown ablation components \['nope'\]"):
        ablation_variants(["nope"])
    with pytest.raises(ValueError, match=r"set \['weight_average'\] differently"):
        ablation_variants([], [["ema", "swa"]])
    points = grid(["demo"], [1, 2], [0, 1], {"baseline": {}, "+ema": {"weight_average": "ema"}},
                  {"epoch_num": 3, "weight_average": "none", "data_root": "/x"}, data_root="data")
    for p in points:
        p.defaults = {"batch_size": 32}
    q = runs_query(points)  # one entry per variant: splits and seeds pooled, data_root left out
    same = {"config.dataset": "demo", "config.epoch_num": 3, "config.batch_size": 32}
    assert q["$or"] == [{**same, "config.tag": "baseline", "config.weight_average": "none"},
                        {**same, "config.tag": "+ema", "config.weight_average": "ema"}]

    def run(_id, tag, split, seed, top1, val):
        d = doc(_id, seed, top1, top1 + 5, tag=tag, split=split)
        d["result"]["best_val_top1"] = val
        return d

    runs = [run(1, "baseline", 1, 0, 40.0, 50.0), run(2, "baseline", 2, 0, 20.0, 70.0),
            run(3, "+ema", 1, 0, 50.0, 60.0), run(4, "+ema", 2, 0, 30.0, 40.0),
            run(5, "+ema", 2, 0, 60.0, 45.0)]  # a rerun of a point replaces the earlier run
    rows = summarize(runs, ["baseline", "+ema"])
    assert [(r.variant, sorted(r.runs)) for r in rows] == [("baseline", [("1", 0), ("2", 0)]),
                                                            ("+ema", [("1", 0), ("2", 0)])]
    assert rows[1].stat("unseen_top1") == (55.0, pytest.approx(7.0710678))
    # chosen by validation accuracy alone: the baseline (60) over +ema (52.5), though +ema is better on unseen
    assert best_by_validation(rows, "demo") == "baseline"
    assert not clear_gain(rows[1], rows[0]) and not clear_gain(rows[0], rows[1])  # 7.5 < se 12.5
    rows[1].values["best_val_top1"] = [90.0, 92.0]
    assert clear_gain(rows[1], rows[0])  # 31 > se 10.0
    assert clear_gain(rows[1], rows[0], ses=3) and not clear_gain(rows[1], rows[0], ses=3.2)  # 31 against 30, 32
    with pytest.raises(ValueError, match="ses must be positive"):
        clear_gain(rows[1], rows[0], ses=0)
    rows[1].values["best_val_top1"] = [60.0, 45.0]
    table = ablation_markdown(rows)
    assert "| demo | +ema | 2 | 55.00 ± 7.07 | 60.00 ± 7.07 | – | 52.50 ± 10.61 | – | +25.00 | +25.00 | 1: 50.0 / 2: " \
        "60.0 |" in table and "demo: baseline (best_val_top1)" in table and "difference: demo: none." in table
    # once every row records the held-out-pick estimate, variants are compared by it instead
    rows[0].values["val_holdout_top1"], rows[1].values["val_holdout_top1"] = [30.0, 32.0], [50.0, 52.0]
    assert best_by_validation(rows, "demo") == "+ema"
    table = ablation_markdown(rows)
    assert "demo: +ema (val_holdout_top1)" in table and "difference: demo: +ema (+20.00, SE 0.00, 2 pairs)." in table
    # runs paired by split and seed: a steady gain across draws that differ by far more passes
    rows[0].values["val_holdout_top1"], rows[1].values["val_holdout_top1"] = [30.0, 60.0], [33.0, 64.0]
    assert paired_stats(rows[1], rows[0], "val_holdout_top1") == (3.5, 0.5, 2)
    assert not clear_gain(rows[1], rows[0], "val_holdout_top1", ses=2)  # unpaired: SE 21.6
    assert "difference: demo: +ema (+3.50, SE 0.50, 2 pairs)." in ablation_markdown(rows)
    rows[1].values["val_holdout_top1"] = [31.0, 60.0]  # +0.5 (SE 0.5): not above two standard errors
    assert "difference: demo: none." in ablation_markdown(rows)
    rows[1].values["val_holdout_top1"] = [50.0, 52.0]
    rows[0].values.pop("val_holdout_top1")
    assert best_by_validation(rows, "demo") == "baseline"  # not every row has it: the selection's top-1
    # a trainval row has no validation number (NaN is not pooled): it is shown, never ranked
    one = AblationRow("demo", "+one")
    one.values["best_val_top1"] = [99.0]  # one run a side: no standard error, never a clear gain
    assert not clear_gain(one, rows[0]) and all(math.isnan(v) for v in difference([99.0], [1.0, 2.0]))
    assert difference([3.0, 5.0], [1.0, 1.0]) == (3.0, 1.0)
    tv = summarize(runs + [run(6, "+trainval", 1, 0, 90.0, float("nan"))], ["baseline", "+ema", "+trainval"])
    assert tv[2].stat("best_val_top1") is None and tv[2].stat("unseen_top1") == (90.0, 0.0)
    assert best_by_validation(tv, "demo") == "baseline"


@needs_server
def test_ablation_command_runs_rows_and_prints_the_table(demo_root, tmp_path):
    env = cli_env(tmp_path / "tracking", free_port())
    base = ("{'text_model': 'minilm', 'text_kind': 'labels', 'epoch_num': 1, 'hidden_channels': 4, "
            "'out_channels': 32, 'batch_size': 64, 'warmup_epochs': 1, 'monitor_unseen': False}")
    args = [sys.executable, "main.py", "ablation", "with", f"data_root={str(demo_root)!r}", "sweep.datasets=['demo']",
            "sweep.splits=[1]", "sweep.seeds=[0]", f"sweep.base={base}", "ablation.components=['parts_on']",
            "ablation.extra={'parts_on': {'part_align': True}}",  # a study's own component, from the command line
            f"ablation.out={str(tmp_path / 'ablation.md')!r}"]
    try:
        out = subprocess.run(args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "ablation: 2 variants" in out.stdout and "sweep: 2 completed" in out.stdout
        table = (tmp_path / "ablation.md").read_text()
        assert "| demo | baseline | 1 |" in table and "| demo | +parts_on | 1 |" in table
        db = database(dbserver.read_server_state(tmp_path / "tracking").url)
        assert db.runs.find_one({"config.tag": "+parts_on"})["config"]["part_align"] is True
        # a run recorded under another value of a dataset default (demo's max_frame, which the base leaves
        # to the dataset) is not the point's: it leaves the table, and a sweep would run the point again
        db.runs.update_one({"config.tag": "baseline"}, {"$set": {"config.max_frame": 16}})
        again = subprocess.run(args[:-1] + ["ablation.run=False"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                               text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "| demo | +parts_on | 1 |" in again.stdout and "| demo | baseline |" not in again.stdout
    finally:
        subprocess.run([sys.executable, "main.py", "server_stop"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                       timeout=60)


def test_every_ablation_component_is_a_set_of_config_entries_a_run_takes():
    """A misspelt key in ``COMPONENTS`` would only fail when its first run starts, after the sweep began."""
    from experiments.suite.ablation import COMPONENTS
    from main import ex

    for name, overrides in COMPONENTS.items():
        cfg = ex.resolved_config({"dataset": "demo", **overrides})
        assert {k: cfg[k] for k in overrides} == overrides, name
