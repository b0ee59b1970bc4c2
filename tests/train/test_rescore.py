"""Rescoring saved per-epoch embeddings (``save_embeddings=True``, experiments/train/rescore.py): a run's
own settings give its recorded numbers; the file resumes with the run; bad requests are refused."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from experiments.suite.ablation import difference, paired_difference
from experiments.train.rescore import COLUMNS, load_embeddings, main, rescore, run_key
from experiments.train.settings import AlignSettings, ConseSettings
from main import ex

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=3, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1, save_embeddings=True)
RECORDED = {"val_top1": "best_val_top1", **{c: c for c in COLUMNS if c != "val_top1"}}


def run(root, out, **updates):
    cfg = {"data_root": str(root), "out_dir": str(out), **TINY, **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


def assert_repeats(res: dict, again: dict):
    assert again["best_epoch"] == res["best_epoch"]
    for col, key in RECORDED.items():
        assert again[col] == pytest.approx(res[key], abs=1e-9), col


@pytest.mark.slow
def test_rescoring_a_run_with_its_own_settings_repeats_its_numbers(text_root, tmp_path):
    res = run(text_root, tmp_path / "val")  # the epoch picked on validation
    emb = load_embeddings(tmp_path / "val")
    assert res["embeddings_file"] == str(tmp_path / "val" / "epoch_embeddings.npz")
    assert emb["val"].shape[0] == emb["unseen"].shape[0] == 3 and emb["config"]["seed"] == 0
    assert_repeats(res, rescore(emb, "val", align=AlignSettings.from_config(emb["config"])))
    snap = run(text_root, tmp_path / "snap", selection="snapshot", snapshot_start=0.34, conse=True)
    emb = load_embeddings(tmp_path / "snap" / "epoch_embeddings.npz")
    again = rescore(emb, "snapshot", 0.34, ConseSettings(0.1), AlignSettings.from_config(emb["config"]))
    assert_repeats(snap, again)
    assert rescore(emb, "snapshot", 0.34, None, None)["unseen_top1_aligned"] is None  # DA off: no aligned number
    # validating on some of the saved classes equals scoring those classes' samples among them alone
    some = emb["val_classes"].tolist()[:2]
    keep = np.isin(emb["val_y"].numpy(), some)
    cut = rescore(emb, "snapshot", 0.34, val_classes=some)
    first = 1  # floor(0.34 * 3)
    mean = torch.nn.functional.normalize(emb["val"][first:, keep], dim=2).sum(0)
    pred = np.array(some)[(mean @ torch.nn.functional.normalize(emb["text"][some], dim=1).T).argmax(1).numpy()]
    assert cut["val_top1"] == pytest.approx(100 * np.mean(pred == emb["val_y"].numpy()[keep]))
    with pytest.raises(ValueError, match="must be a non-empty subset"):
        rescore(emb, "snapshot", val_classes=[99])
    tv = run(text_root, tmp_path / "tv", selection="snapshot", trainval=True)
    emb = load_embeddings(tmp_path / "tv")
    align = AlignSettings.from_config(emb["config"])
    assert "val" not in emb and rescore(emb, "snapshot", align=align)["unseen_top1"] == \
        pytest.approx(tv["unseen_top1"], abs=1e-9)
    with pytest.raises(ValueError, match="needs validation embeddings"):
        rescore(emb, "val")
    with pytest.raises(ValueError, match="saved no validation embeddings"):
        rescore(emb, "snapshot", val_classes=[0])
    # with SWA the raw epochs before swa_start cannot be picked: rescoring skips them as the run did
    swa = run(text_root, tmp_path / "swa", weight_average="swa", swa_start=0.5)
    emb = load_embeddings(tmp_path / "swa")
    assert emb["selectable"].tolist() == [False, True, True]
    assert_repeats(swa, rescore(emb, "val", align=AlignSettings.from_config(emb["config"])))


@pytest.mark.slow
def test_saved_embeddings_resume_with_the_run(text_root, tmp_path, stop_after_first_epoch):
    stop_after_first_epoch.reference_and_resumed(lambda out, **kw: run(text_root, out, **kw), tmp_path / "ref",
                                                 tmp_path / "victim", selection="snapshot")
    with np.load(tmp_path / "ref" / "epoch_embeddings.npz") as a, \
            np.load(tmp_path / "victim" / "epoch_embeddings.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if k != "config":  # the resumed run's config names its resume folder
                assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_rescore_command_prints_a_row_per_variant(text_root, tmp_path, capsys):
    for seed in (0, 1):
        run(text_root, tmp_path / f"s{seed}", seed=seed)
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--snapshot-start", "0.25", "0.5", "--conse", "0.2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == ["val pick", "snapshot from 0.25", "snapshot from 0.5",
                                                     "val pick+conse(τ 0.2)", "snapshot from 0.25+conse(τ 0.2)",
                                                     "snapshot from 0.5+conse(τ 0.2)"]
    assert all(r.split(" | ")[1] == "2" for r in rows)
    assert all(len(r.split(" | ")[-1].split(" / ")) == 1 for r in rows)  # one split: one per-split mean

    # against runs scored as they ran: the held-out pick's difference, its SE, and the default-changing rule
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--against", str(tmp_path / "s0"), str(tmp_path / "s1")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("| per split (unseen_top1) | Δ held-out (SE) | clear gain (> 1 SE) |")
    own = [line.split(" | ") for line in out if line.startswith("| val pick |")][0]  # the runs' own selection
    assert own[-2].startswith("+0.00 (") and own[-1] == "no |"  # no gain over themselves
    # --val-classes validates both sides on the same classes: still no difference
    saved = [str(int(c)) for c in load_embeddings(tmp_path / "s0")["val_classes"]]
    assert len(saved) > 3
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--val-classes", *saved[:3], "--against", str(tmp_path / "s0"),
          str(tmp_path / "s1")])
    own = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| val pick |")][0]
    assert own[-2].startswith("+0.00 (")
    main([str(tmp_path / "s0"), "--against", str(tmp_path / "s1")])  # one run a side: no standard error
    own = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| val pick |")][0]
    assert own[-2] == "– (fewer than 2 runs a side)" and own[-1] == "no |"
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--against", str(tmp_path / "s0"), str(tmp_path / "s1"),
          "--ses", "2"])  # the stricter rule names itself in the header
    assert capsys.readouterr().out.splitlines()[0].endswith("| clear gain (> 2 SE) |")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "s0"), "--against", str(tmp_path / "s1"), "--ses", "0"])
    assert "--ses must be positive, got 0.0" in capsys.readouterr().err
    # --paired: each run against the run of its split, seed and validation draw
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--against", str(tmp_path / "s1"), str(tmp_path / "s0"),
          "--paired"])
    own = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| val pick |")][0]
    assert own[-2] == "+0.00 (0.00)" and own[-1] == "no |"  # paired with itself, whatever the order given
    vc = "(3, 10, 17, 18, 25)"  # demo's split 1 validation classes
    with pytest.raises(ValueError, match=re.escape(f"without a partner on the other side: [('demo', '1', 0, {vc})] "
                                                   f"(variant) / [('demo', '1', 1, {vc})] (against)")):
        main([str(tmp_path / "s0"), "--against", str(tmp_path / "s1"), "--paired"])
    with pytest.raises(ValueError, match="two --against runs share"):
        main([str(tmp_path / "s0"), "--against", str(tmp_path / "s0"), str(tmp_path / "s0"), "--paired"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "s0"), "--paired"])
    assert "--paired compares with --against runs" in capsys.readouterr().err


def test_paired_difference_pairs_runs_by_key():
    # a run is keyed by the validation classes saved beside its embeddings (those it validated on)
    cfg = {"dataset": "d", "split": 2, "seed": 0, "val_classes": [0, 8]}
    assert run_key({"config": cfg, "val_classes": torch.tensor([7, 5])}) == ("d", "2", 0, (5, 7))
    assert run_key({"config": cfg}) == ("d", "2", 0, (0, 8))  # nothing saved: as configured
    # three draws where the variant is 8-10 points above its partner, though the draws differ by 20 points
    mine = {("d", "1", 0, 0): 60.0, ("d", "1", 0, 1): 80.0, ("d", "2", 0, 0): 100.0}
    theirs = {("d", "1", 0, 0): 50.0, ("d", "1", 0, 1): 72.0, ("d", "2", 0, 0): 91.0}
    diff, se = paired_difference(mine, theirs)
    assert diff == pytest.approx(9.0) and se == pytest.approx(1.0 / np.sqrt(3))
    unpaired = difference(list(mine.values()), list(theirs.values()))
    assert unpaired[0] == pytest.approx(9.0) and unpaired[1] > 10 * se  # the draws' spread swamps the unpaired SE
    assert all(np.isnan(paired_difference({"a": 1.0}, {"a": 0.0})))  # one pair: no standard error
    with pytest.raises(ValueError, match=r"without a partner on the other side: \[\('d', '2', 0, 0\)\] "
                                         r"\(variant\) / \[\] \(against\)"):
        paired_difference(mine, {k: v for k, v in theirs.items() if k[1] == "1"})


def test_refusals(text_root, tmp_path):
    for selection in ("test", "folds"):  # folds: before any of its trainings
        with pytest.raises(ValueError, match=f"save_embeddings=True .* got selection='{selection}'"):
            run(text_root, tmp_path / "t", selection=selection)
    with pytest.raises(FileNotFoundError, match="no saved embeddings"):
        load_embeddings(tmp_path)
    with pytest.raises(ValueError, match="repeats selection 'val' or 'snapshot'"):
        rescore({"text": None, "train_classes": np.array([0]), "val": None}, "folds")
