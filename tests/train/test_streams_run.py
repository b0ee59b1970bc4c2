"""The stream ensemble as one run (experiments/train/streams.py): the fusion on constructed cases, and
end to end, a streams run against the single-stream runs it is made of."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.train.evaluate import zero_shot_eval
from experiments.files import STREAMS_FILE
from experiments.train.streams import fuse_features, fuse_text, fused_from_folders
from main import ex

TINY = dict(text_model="minilm", text_kind="labels", epoch_num=3, hidden_channels=4, out_channels=16, max_frame=8,
            batch_size=64, warmup_epochs=1, selection="snapshot")


def run(tmp_path, name, **updates):
    cfg = {**TINY, "out_dir": str(tmp_path / name), **updates}
    return ex.run(config_updates=cfg, options={"--loglevel": "ERROR"}).result


def test_a_cosine_against_fused_texts_is_the_mean_of_the_streams_cosines():
    g = torch.Generator().manual_seed(0)
    a, b, text = torch.randn(7, 5, generator=g), 3 * torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    cos = lambda f, t: F.normalize(f, dim=1) @ F.normalize(t, dim=1).t()  # noqa: E731
    fused = fuse_features([a, b]) @ fuse_text(text, 2).t()
    assert torch.allclose(fused, (cos(a, text) + cos(b, text)) / 2, atol=1e-6)
    assert torch.allclose(fuse_features([a, b]).norm(dim=1), torch.ones(7))  # still unit rows
    # a stream that ranks the classes more sharply does not get a larger say: each is unit-length first
    res = zero_shot_eval(fuse_features([a, b]), torch.zeros(7, dtype=torch.long), [0, 1, 2, 3], fuse_text(text, 2))
    assert torch.equal(res.pred, (cos(a, text) + cos(b, text)).argmax(1))


@pytest.fixture(scope="module")
def streams_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streams")
    fused = run(tmp, "both", streams=["joint", "bone"])
    joint = run(tmp, "joint", modality="joint", save_embeddings=True)
    bone = run(tmp, "bone", modality="bone", save_embeddings=True)
    return tmp, fused, joint, bone


def test_a_streams_run_is_the_score_ensemble_of_its_single_stream_runs(streams_run):
    tmp, fused, joint, bone = streams_run
    # each stream trained as its own single-stream run with the same seed would
    assert fused["stream_results"]["joint"]["unseen_top1"] == pytest.approx(joint["unseen_top1"])
    assert fused["stream_results"]["bone"]["unseen_top1"] == pytest.approx(bone["unseen_top1"])
    for m, single in (("joint", joint), ("bone", bone)):
        assert fused["stream_results"][m]["val_holdout_top1"] == pytest.approx(single["val_holdout_top1"])
    # the fused scores are the equal-weight sum of the single runs' saved scores (python main.py ensemble)
    a, b = (np.load(tmp / n / "unseen_scores.npz") for n in ("joint", "bone"))
    mine = np.load(tmp / "both" / "unseen_scores.npz")
    np.testing.assert_allclose(mine["scores"], (a["scores"] + b["scores"]) / 2, atol=1e-5)
    assert str(mine["modality"]) == "joint+bone" and fused["streams"] == ["joint", "bone"]
    top1 = 100.0 * (mine["classes"][mine["scores"].argmax(1)] == mine["labels"]).mean()
    assert fused["unseen_top1"] == pytest.approx(top1)
    assert fused["selection"] == "snapshot" and 0.0 <= fused["best_val_top1"] <= 100.0
    assert 0.0 <= fused["val_holdout_top1"] <= 100.0 and "unseen_top1_aligned" in fused
    # the same numbers from the single runs' saved embeddings (python -m experiments.train.streams A B)
    again = fused_from_folders([str(tmp / "joint"), str(tmp / "bone")])
    assert again["streams"] == ["joint", "bone"]
    for key in ("unseen_top1", "unseen_top1_aligned", "unseen_top1_centred", "val_holdout_top1"):
        assert again[key] == pytest.approx(fused[key])
    assert again["val_top1"] == pytest.approx(fused["best_val_top1"])
    manifest = json.loads((tmp / "both" / STREAMS_FILE).read_text())
    assert manifest["streams"] == ["joint", "bone"]
    assert all((tmp / "both" / m / "best.pt").is_file() for m in ("joint", "bone"))
    with pytest.raises(ValueError, match="a stream ensemble run .*evaluate one of its streams' checkpoints"):
        ex.run(config_updates={"train_mode": "test", "checkpoint": str(tmp / "both")}, options={"--loglevel": "ERROR"})
    res = ex.run(config_updates={**TINY, "train_mode": "test", "checkpoint": str(tmp / "both" / "bone")},
                 options={"--loglevel": "ERROR"}).result  # a stream's own checkpoint evaluates as a single run's
    assert 0.0 <= res["unseen_top1"] <= 100.0


def test_a_streams_run_trained_on_the_validation_classes_too_has_no_validation_score(tmp_path):
    res = run(tmp_path, "tv", streams=["joint", "joint_motion"], trainval=True)
    assert np.isnan(res["best_val_top1"]) and "val_holdout_top1" not in res and res["trainval"] is True
    assert list(res["stream_results"]) == ["joint", "joint_motion"]


@pytest.mark.parametrize("updates, match", [
    ({"streams": ["joint"]}, "two or more different streams"),
    ({"streams": ["joint", "joint"]}, "two or more different streams"),
    ({"streams": ["joint", "nope"]}, "nope"),
    ({"streams": ["joint", "bone"], "selection": "val"}, "sets selection"),
    ({"streams": ["joint", "bone"], "gzsl": True}, "sets gzsl"),
])
def test_refusals(tmp_path, updates, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, "x", **updates)
