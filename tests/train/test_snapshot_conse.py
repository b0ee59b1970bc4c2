"""The snapshot ensemble over epochs and the held-out-pick estimate (experiments/train/epoch_eval.py),
ConSE and class-centred scores at test time (module/align.py), on constructed cases and end to end."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.catalog import get_dataset
from data.loading import Subset, ZeroShotData
from experiments.train.epoch_eval import ZeroShotEpochEval, holdout_top1, snapshot_first_epoch
from experiments.train.evaluate import zero_shot_eval
from experiments.train.settings import ConseSettings, Settings
from main import ex
from module.align import class_centred, seen_mixture

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=3, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1)
DROP = {"checkpoint", "train_seconds"}


def basis(i: int, d: int = 6) -> torch.Tensor:
    return torch.eye(d)[i]


def test_seen_mixture_is_the_softmax_weighted_mix_of_the_seen_texts():
    seen = torch.stack([2 * basis(0), basis(1), basis(2)])  # unnormalised rows: the mix uses unit rows
    f = torch.stack([basis(0) + 0.5 * basis(1), basis(3)])
    mix = seen_mixture(f, seen, temperature=0.1)
    cos = F.normalize(f, dim=1) @ F.normalize(seen, dim=1).t()
    w = (cos / 0.1).softmax(dim=1)
    assert torch.allclose(mix, w @ F.normalize(seen, dim=1), atol=1e-6)
    assert torch.allclose(mix[1], torch.full((6,), 0.0).index_fill(0, torch.tensor([0, 1, 2]), 1 / 3), atol=1e-6)
    top1 = seen_mixture(f, seen, temperature=0.1, top_k=1)
    assert torch.allclose(top1[0], basis(0)) and torch.allclose(top1[1], mix[1])  # the nearest; a tie keeps all tied
    assert torch.allclose(seen_mixture(f, seen, 0.1, top_k=3), mix) and torch.allclose(seen_mixture(f, seen, 0.1, 9), mix)
    with pytest.raises(ValueError, match="conse_temperature must be > 0"):
        seen_mixture(f, seen, 0.0)
    with pytest.raises(ValueError, match="conse_top_k must be >= 0"):
        seen_mixture(f, seen, 0.1, top_k=-1)


def test_conse_ignores_directions_no_seen_class_spans():
    # classes 0, 1 seen (texts e0, e1); unseen 2 ~ e0 + e2, unseen 3 ~ e1 + e4. A sample of class 2 that
    # the projection put near e0 and far along e4: nearest text says 3, its seen-class mix says 2.
    text = torch.stack([basis(0), basis(1), basis(0) + basis(2), basis(1) + basis(4)])
    feats = (basis(0) + 1.5 * basis(4)).unsqueeze(0)
    labels = torch.tensor([2])
    assert zero_shot_eval(feats, labels, [2, 3], text).top1 == 0.0
    res = zero_shot_eval(feats, labels, [2, 3], text, conse=ConseSettings(0.1, 0), seen=[0, 1])
    assert res.top1 == 100.0 and res.feats.shape == (1, 6)
    with pytest.raises(ValueError, match="needs the training classes"):
        zero_shot_eval(feats, labels, [2, 3], text, conse=ConseSettings(0.1, 0))


def test_class_centring_takes_the_hub_away():
    # class 0's text is near every sample (a hub): nearest text gives it all four; centred, each
    # sample goes to the class it is nearest to relative to that class's mean
    text = torch.stack([basis(0) + basis(1) + basis(2), basis(1), basis(2)])
    feats = torch.stack([2 * basis(0) + basis(1), 2 * basis(0) + basis(1), 2 * basis(0) + basis(2),
                         2 * basis(0) + basis(2)])
    labels = torch.tensor([1, 1, 2, 2])
    logits = F.normalize(feats, dim=1) @ F.normalize(text, dim=1).t()
    assert torch.allclose(class_centred(logits), logits - logits.mean(dim=0))
    assert zero_shot_eval(feats, labels, [0, 1, 2], text).top1 == 0.0
    from experiments.train.settings import AlignSettings

    res = zero_shot_eval(feats, labels, [0, 1, 2], text, AlignSettings(0.9, 1, 1.0))
    assert res.top1 == 0.0 and res.top1_centred == 100.0


def test_snapshot_first_epoch():
    assert snapshot_first_epoch(0.25, 25) == 6 and snapshot_first_epoch(0.0, 25) == 0
    assert snapshot_first_epoch(0.25, 50) == 12 and snapshot_first_epoch(0.99, 1) == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"snapshot_start must be in \[0, 1\)"):
            snapshot_first_epoch(bad, 10)


class Fixed(nn.Module):
    """A 'model' whose embedding of sample i is row i of its current table (switched per epoch)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table, self.dummy = table, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.table[x[:, 0, 0, 0, 0].long()]


def settings(selection: str, start: float, epochs: int):
    cfg = ex.run("print_config", config_updates={"epoch_num": epochs}, options={"--loglevel": "ERROR"}).config
    return Settings.from_config({**cfg, "selection": selection, "snapshot_start": start, "monitor_unseen": False,
                                 "device": "cpu"})


def indexed(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 1, 1, 1)
    x[:, 0, 0, 0, 0] = torch.arange(n).float()
    return x


def test_snapshot_averages_unit_embeddings_from_its_first_epoch_and_resumes():
    text, e = torch.eye(4), [basis(i, 4) for i in range(4)]
    val = Subset(indexed(4)[:2], torch.tensor([0, 1]), [0, 1])  # samples 0, 1: rows 0, 1 of the tables
    unseen = Subset(indexed(4)[2:], torch.tensor([2, 3]), [2, 3])  # rows 2, 3
    data = ZeroShotData(train=Subset(indexed(1), torch.tensor([0]), [0]), val=val, unseen=unseen, seen_test=None)
    s = settings("snapshot", 0.34, 3)  # floor(0.34 * 3) = 1: epochs 2 and 3 (1-based) are averaged
    ev = ZeroShotEpochEval(s, data, text, torch.device("cpu"))
    tables = [torch.stack([e[1], e[0], e[0], e[0]]),  # epoch 1: both validation samples wrong; not averaged
              torch.stack([10 * (0.6 * e[0] + 0.8 * e[1]), e[1], e[3], e[3]]),  # sample 0 wrong (scale: irrelevant)
              torch.stack([e[0], e[1], e[2], 0.1 * e[3]])]  # both right; the mean of 2 and 3 puts sample 0 right
    scores = [ev(Fixed(t)) for t in tables[:2]]
    assert scores[0] == (0.0, {"val_top1": 0.0})  # before the first averaged epoch: the epoch's own score
    assert scores[1] == (50.0, {"val_top1": 50.0, "val_top1_snapshot": 50.0})
    again = ZeroShotEpochEval(s, data, text, torch.device("cpu"))
    again.load_state_dict(ev.state_dict())
    for each in (ev, again):
        assert each(Fixed(tables[2])) == (100.0, {"val_top1": 100.0, "val_top1_snapshot": 100.0})
        assert torch.allclose(each.unseen_snapshot(), torch.stack([(e[3] + e[2]) / 2, e[3]]))
        rec = each.record([{}] * 3)
        assert {k: rec[k] for k in ("snapshot_start", "snapshot_from_epoch", "snapshot_epochs")} == \
            {"snapshot_start": 0.34, "snapshot_from_epoch": 1, "snapshot_epochs": 2}
        assert rec["val_holdout_top1"] == 100.0  # the final ensemble gets both classes right
    assert ZeroShotEpochEval(settings("val", 0.25, 3), data, text, torch.device("cpu")).unseen_snapshot() is None


def test_holdout_estimate_picks_on_one_half_and_scores_the_other():
    labels = torch.tensor([0, 0, 1, 1])
    # epoch 0: class 0 right, class 1 wrong; epoch 1: the reverse. A pick on either class's samples
    # chooses the epoch that gets the other class wrong: the estimate is 0, the best epoch's top-1 50.
    correct = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert holdout_top1(correct, labels) == 0.0
    # an epoch right on both is picked from either half (of equals the first, as the run picks), unless
    # the run could not pick it (e.g. raw weights before a weight average is ready)
    good = torch.cat([torch.ones(1, 4, dtype=torch.bool), correct])
    assert holdout_top1(good, labels) == 100.0 and holdout_top1(good, labels, [False, True, True]) == 0.0
    # a model chosen without validation: scored on each half in turn
    assert holdout_top1(correct, labels, fixed=torch.tensor([True, False, True, True])) == 75.0
    # 3 classes: halves of 1 and 2 classes, every way (6 splits)
    three = torch.tensor([0, 1, 2])
    assert holdout_top1(torch.tensor([[True, True, False]]), three) == pytest.approx(
        100 * (0.5 + 0.5 + 1.0 + 0.0 + 1.0 + 1.0) / 6)  # A = {0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}
    assert math.isnan(holdout_top1(correct[:, :2], labels[:2]))  # one class: no split
    assert math.isnan(holdout_top1(correct, labels, [False, False]))


def run(root, out, **updates):
    cfg = {"data_root": str(root), "out_dir": str(out), **TINY, **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


@pytest.mark.slow
def test_snapshot_conse_run_records_what_it_scored(text_root, tmp_path):
    import numpy as np

    res = run(text_root, tmp_path / "snap", selection="snapshot", snapshot_start=0.34, conse=True,
              conse_temperature=0.2)
    assert res["selection"] == "snapshot" and res["best_epoch"] == 2  # the last epoch's weights are kept
    assert res["snapshot_from_epoch"] == 1 and res["snapshot_epochs"] == 2
    assert res["conse_temperature"] == 0.2 and res["conse_top_k"] == 0
    last = torch.load(tmp_path / "snap" / "last.pt", weights_only=False)
    assert res["best_val_top1"] == last["history"][-1]["val_top1_snapshot"]
    assert last["evaluator"]["epoch"] == 3 and set(last["evaluator"]["sums"]) == {"val", "unseen"}
    saved = np.load(tmp_path / "snap" / "unseen_scores.npz")
    top1 = 100 * np.mean(np.asarray(saved["classes"])[saved["scores"].argmax(1)] == saved["labels"])
    assert top1 == pytest.approx(res["unseen_top1"])
    # evaluating its checkpoint scores the last epoch's weights alone, and says so
    ev = run(text_root, tmp_path / "test", train_mode="test", checkpoint=res["checkpoint"])
    assert ev["selection"] == "snapshot" and "not stored" in ev["evaluated_weights"]
    assert "snapshot_epochs" not in ev and "conse_temperature" not in ev  # ConSE: the evaluating run's choice


@pytest.mark.slow
def test_resumed_snapshot_run_equals_the_uninterrupted_one(text_root, tmp_path, stop_after_first_epoch):
    ref, resumed = stop_after_first_epoch.reference_and_resumed(
        lambda out, **kw: run(text_root, out, **kw), tmp_path / "ref", tmp_path / "victim",
        selection="snapshot", snapshot_start=0.0, conse=True)
    assert {k: v for k, v in resumed.items() if k not in DROP} == {k: v for k, v in ref.items() if k not in DROP}


def test_trainval_needs_the_snapshot_ensemble_before_any_training(text_root, tmp_path):
    for selection in ("val", "folds"):  # folds: refused before its fold stages (which select by "val")
        with pytest.raises(ValueError, match=f"trainval=True .* needs selection='snapshot' .got selection='{selection}'"):
            run(text_root, tmp_path / "bad", selection=selection, trainval=True)


def test_snapshot_and_conse_refuse_gzsl(text_root, tmp_path):
    for opts in (dict(selection="snapshot"), dict(conse=True)):
        with pytest.raises(ValueError, match="does not combine"):
            run(text_root, tmp_path / "g", gzsl=True, **opts)


def test_trainval_snapshot_sums_the_unseen_part_alone():
    text, e = torch.eye(4), [basis(i, 4) for i in range(4)]
    unseen = Subset(indexed(2), torch.tensor([2, 3]), [2, 3])
    data = ZeroShotData(train=Subset(indexed(1), torch.tensor([0]), [0, 1]), val=None, unseen=unseen, seen_test=None)
    s = settings("snapshot", 0.0, 2)
    ev = ZeroShotEpochEval(replace(s, data=replace(s.data, trainval=True)), data, text, torch.device("cpu"))
    for table in (torch.stack([e[2], e[2]]), torch.stack([e[3], e[3]])):
        score, metrics = ev(Fixed(table))
        assert math.isnan(score) and metrics == {}  # nothing is validated
    assert set(ev.sums) == {"unseen"} and torch.allclose(ev.unseen_snapshot(), torch.stack([(e[2] + e[3]) / 2] * 2))
    assert ev.record([{}] * 2) == {"snapshot_start": 0.0, "snapshot_from_epoch": 0, "snapshot_epochs": 2,
                                   "trainval": True, "train_classes": 2}


@pytest.mark.slow
def test_trainval_run_trains_on_the_validation_classes(text_root, tmp_path):
    ref = run(text_root, tmp_path / "ref", selection="snapshot")
    res = run(text_root, tmp_path / "tv", selection="snapshot", trainval=True)
    assert res["trainval"] is True and res["val_classes"] == [] and "val_holdout_top1" not in res
    classes = get_dataset(ref["dataset"], str(text_root)).num_classes
    assert res["train_classes"] == classes - len(ref["unseen_classes"])  # every seen class, validation's too
    assert res["unseen_classes"] == ref["unseen_classes"] and len(ref["val_classes"]) > 0
    assert math.isnan(res["best_val_top1"]) and 0 <= res["unseen_top1"] <= 100
    last = torch.load(tmp_path / "tv" / "last.pt", weights_only=False)
    assert set(last["evaluator"]["sums"]) == {"unseen"}
    ev = run(text_root, tmp_path / "test", train_mode="test", checkpoint=res["checkpoint"])
    assert ev["trained_on"]["trainval"] is True and "not stored" in ev["evaluated_weights"]
    from experiments.suite.refine import validation_confusion  # no validation confusions left to refine on

    with pytest.raises(ValueError, match="trained on its validation classes"):
        validation_confusion(res["checkpoint"], str(text_root), {})
    # evaluation follows the checkpoint's run, not the evaluating config's trainval (a dataset default)
    ev = run(text_root, tmp_path / "test2", train_mode="test", checkpoint=ref["checkpoint"], trainval=True)
    assert not ev["trained_on"]["trainval"] and ev["val_classes"] == ref["val_classes"]
