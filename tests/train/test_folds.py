"""Selection over validation folds of the seen classes (experiments/train/folds.py)."""
import numpy as np
import pytest
import torch

from experiments.train.folds import best_mean_epoch, fold_classes
from main import ex

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=3, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1, monitor_unseen=False)


def test_folds_start_with_the_splits_own_and_are_disjoint_while_classes_last():
    seen = list(range(10))
    folds = fold_classes(seen, [7, 2], 4, seed=0)
    assert folds[0] == [2, 7] and all(len(f) == 2 and set(f) <= set(seen) for f in folds)
    assert len({c for f in folds for c in f}) == 8  # 4 disjoint folds of 2 from 10 classes
    assert folds == fold_classes(seen, [7, 2], 4, seed=0) and folds != fold_classes(seen, [7, 2], 4, seed=1)
    # 7 seen classes, folds of 2 (NW-UCLA): 3 disjoint, the 4th from outside the 3rd
    more = fold_classes(list(range(7)), [0, 1], 4, seed=0)
    assert len({c for f in more[:3] for c in f}) == 6 and not set(more[3]) & set(more[2])
    with pytest.raises(ValueError, match="must be >= 1"):
        fold_classes(seen, [1], 0, 0)
    with pytest.raises(ValueError, match="must be non-empty seen classes"):
        fold_classes(seen, [11], 2, 0)
    with pytest.raises(ValueError, match="leave nothing to train on"):
        fold_classes([1, 2], [1, 2], 2, 0)


def test_best_epoch_of_the_mean_curve():
    curves = [[10.0, 50.0, 40.0], [60.0, 20.0, 40.0]]  # fold 2 alone would pick epoch 0, fold 1 epoch 1
    best, mean = best_mean_epoch(curves)
    assert best == 2 and mean.tolist() == [35.0, 35.0, 40.0]
    assert best_mean_epoch([[1.0, 1.0]])[0] == 0  # the first of equals
    assert best_mean_epoch(curves, [[True, True, False], [True, True, True]])[0] == 0  # not selectable everywhere
    with pytest.raises(ValueError, match="equal length"):
        best_mean_epoch([[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="no epoch is selectable"):
        best_mean_epoch([[1.0]], [[False]])


@pytest.mark.slow
def test_folds_run_trains_every_fold_then_all_seen_classes_to_the_chosen_epoch(text_root, tmp_path):
    cfg = {"data_root": str(text_root), "out_dir": str(tmp_path / "run"), **TINY, "selection": "folds",
           "val_folds": 2}
    run = ex.run(config_updates=cfg, options={"--loglevel": "ERROR"})
    res = run.result
    assert res["selection"] == "folds" and res["val_classes"] == []
    assert res["val_folds"][0] == run.config["val_classes"] and len(res["val_folds"]) == 2
    assert not set(res["val_folds"][1]) & set(res["val_folds"][0] + run.config["unseen_classes"])
    assert res["train_classes"] == 30 - len(run.config["unseen_classes"])  # every seen class
    curves = [[h["val_top1"] for h in torch.load(tmp_path / "run" / f"fold{i}" / "last.pt", weights_only=False)
               ["history"]] for i in (1, 2)]
    want = int(np.argmax(np.mean(curves, axis=0)))
    assert res["best_epoch"] == want and res["best_val_top1"] == pytest.approx(np.mean(curves, axis=0)[want])
    final = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert len(final["history"]) == want + 1  # stopped after the chosen epoch
    assert all("val_top1" not in h for h in final["history"])
    best = torch.load(res["checkpoint"], weights_only=False)
    assert best["epoch"] == want


def test_folds_refuse_gzsl(text_root, tmp_path):
    base = {"data_root": str(text_root), **TINY, "selection": "folds"}
    with pytest.raises(ValueError, match="with gzsl=True is not supported"):
        ex.run(config_updates={**base, "gzsl": True, "out_dir": str(tmp_path / "g")}, options={"--loglevel": "ERROR"})
