"""Self-supervised pretraining (module/moco.py, experiments/train/pretrain.py) and the runs started
from it: linear evaluation and the zero-shot track with init_from."""
import math

import pytest
import torch
from torch import nn

from experiments.train.pretrain import pretrain_sets
from experiments.train.settings import Settings
from main import ex
from module.moco import MoCoModel, info_nce, skelemix_loss

OPTS = {"--loglevel": "ERROR"}


class Pool(nn.Module):
    """A stand-in backbone: the mean of each channel, through one linear layer."""

    out_dim = 2

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3, 4)))


def test_the_key_encoder_follows_the_query_encoder_by_momentum():
    model = MoCoModel(Pool(), dim=2, queue_size=5, momentum=0.9)
    assert all(not p.requires_grad for p in model.key_parameters())
    with torch.no_grad():
        for p in model.query_parameters():
            p.fill_(1.0)
        for p in model.key_parameters():
            p.fill_(0.0)
    model.momentum_update()
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in model.key_parameters())
    model.momentum_update()
    assert all(torch.allclose(p, torch.full_like(p, 0.19)) for p in model.key_parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.query_parameters())  # the query is untouched
    sd = model.state_dict()
    assert "backbone.fc.weight" in sd and "key_backbone.fc.weight" in sd and "queue" in sd  # init_from reads backbone.*


def test_the_queue_replaces_its_oldest_keys_and_wraps_around():
    model = MoCoModel(Pool(), dim=2, queue_size=5)
    keys = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    model.enqueue(keys[:3])
    assert torch.equal(model.queue[:, :3], keys[:3].T) and int(model.queue_ptr) == 3
    model.enqueue(keys[3:])  # columns 3, 4, then 0
    assert torch.equal(model.queue[:, 3:5], keys[3:5].T) and torch.equal(model.queue[:, 0], keys[5])
    assert torch.equal(model.queue[:, 1:3], keys[1:3].T) and int(model.queue_ptr) == 1
    model.enqueue(torch.zeros(7, 2))  # more keys than the queue holds: the last 5 fill it
    assert torch.equal(model.queue, torch.zeros(2, 5))


def test_contrastive_logits_and_loss_on_a_hand_case():
    model = MoCoModel(Pool(), dim=2, queue_size=2, temperature=0.5)
    with torch.no_grad():
        model.queue.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))  # negatives (0, 1) and (-1, 0)
    q = torch.tensor([[1.0, 0.0]])
    logits = model.logits(q, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(logits, torch.tensor([[2.0, 0.0, -2.0, 1.2]]))  # cosines / 0.5; the extra negative last
    assert info_nce(logits).item() == pytest.approx(-torch.log_softmax(logits, 1)[0, 0].item())
    assert info_nce(torch.tensor([[10.0, -10.0]])).item() == pytest.approx(math.log1p(math.exp(-20)), abs=1e-6)


class MapNet(nn.Module):
    """A stand-in backbone with one unit that halves T: its map is the input averaged over frame pairs."""

    out_dim = 3

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.AvgPool2d((2, 1))])

    def forward(self, x):
        n, c, t, v, m = x.shape
        fmap = self.blocks[0](x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))
        return fmap.mean(dim=(2, 3)).view(n, m, c).mean(dim=1)


def test_region_queries_pool_the_pasted_cells_and_their_complement_by_area():
    torch.manual_seed(0)
    model = MoCoModel(MapNet(), dim=4, queue_size=3).eval()
    x = torch.randn(2, 3, 4, 5, 1)
    mask = torch.zeros(4, 5)
    mask[0:1, [1, 3]] = 1.0  # frame 0 of 4 = half of feature frame 0, joints 1 and 3
    p, c = model.region_queries(x, mask)
    fmap = (x[:, :, 0::2] + x[:, :, 1::2])[..., 0] / 2  # (N, C, 2, 5)
    w = torch.zeros(2, 5)
    w[0, [1, 3]] = 0.5
    want_p = (fmap * w).sum(dim=(2, 3)) / w.sum()
    want_c = (fmap * (1 - w)).sum(dim=(2, 3)) / (1 - w).sum()
    assert torch.allclose(p, torch.nn.functional.normalize(model.projector(want_p), dim=1), atol=1e-6)
    assert torch.allclose(c, torch.nn.functional.normalize(model.projector(want_c), dim=1), atol=1e-6)
    # the loss: the pasted region's positive is the partner's key, the complement's its own
    k = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    partner = torch.tensor([1, 0])
    want = 0.5 * (info_nce(model.logits(p, k[partner], c)) + info_nce(model.logits(c, k, p)))
    assert skelemix_loss(model, x, mask, k, partner).item() == pytest.approx(want.item(), rel=1e-5)


TINY = dict(dataset="demo", epoch_num=1, hidden_channels=4, out_channels=16, max_frame=8, batch_size=64,
            warmup_epochs=1, text_model="minilm", text_kind="labels", monitor_unseen=False)


def test_the_pretraining_set_is_unlabelled_and_holds_no_unseen_sequences_unless_transductive(text_root):
    cfg = ex.run("print_config", config_updates={**TINY, "data_root": str(text_root), "train_mode": "pretrain"},
                 options=OPTS).config
    plain, mon_train, _, rec = pretrain_sets(Settings.from_config(cfg))
    assert bool((plain.y == -1).all()) and mon_train is None and rec["transductive"] is False
    trans, _, _, rec_t = pretrain_sets(Settings.from_config({**cfg, "transductive": True}))
    assert len(trans) > len(plain) and rec_t["transductive"] is True
    assert rec_t["num_pretrain_sequences"] == len(trans) and "transductive" in rec_t["pretrain_data"]


@pytest.mark.slow
def test_pretrain_then_linear_eval_and_zero_shot_from_its_encoder(text_root, tmp_path):
    base = {**TINY, "data_root": str(text_root)}
    pre = ex.run(config_updates={**base, "train_mode": "pretrain", "pretrain_on": "protocol",
                                 "out_dir": str(tmp_path / "pre")}, options=OPTS).result
    assert pre["train_mode"] == "pretrain" and pre["epochs"] == 1 and math.isfinite(pre["final_train_loss"])
    assert 0.0 <= pre["knn_top1_monitor"] <= 100.0 and pre["moco"]["queue"] == pre["num_pretrain_sequences"] - 64
    enc = {k: v for k, v in torch.load(pre["checkpoint"], weights_only=True)["model"].items()
           if k.startswith("backbone.")}
    lin = ex.run(config_updates={**base, "train_mode": "linear_eval", "init_from": str(tmp_path / "pre"),
                                 "out_dir": str(tmp_path / "lin")}, options=OPTS).result
    assert lin["train_mode"] == "linear_eval" and lin["freeze_backbone"] is True
    assert lin["init_from"]["train_mode"] == "pretrain" and lin["init_from"]["loaded"] == len(enc)
    after = torch.load(lin["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(after[k], v) for k, v in enc.items())  # linear evaluation: the encoder is unchanged
    rnd = ex.run(config_updates={**base, "train_mode": "linear_eval", "out_dir": str(tmp_path / "rnd")},
                 options=OPTS).result
    assert "init_from" not in rnd and rnd["encoder_batchnorm"].startswith("random encoder")
    stats = torch.load(rnd["checkpoint"], weights_only=True)["model"]
    means = [v for k, v in stats.items() if k.startswith("backbone.") and k.endswith("running_mean")]
    assert means and any(bool(m.abs().sum() > 0) for m in means)  # the data's statistics, not BatchNorm's zeros
    zs = ex.run(config_updates={**base, "init_from": pre["checkpoint"], "out_dir": str(tmp_path / "zs")},
                options=OPTS).result
    assert zs["init_from"]["loaded"] == len(enc) and "freeze_backbone" not in zs
    assert 0.0 <= zs["unseen_top1"] <= 100.0
    with pytest.raises(ValueError, match="pretraining checkpoint"):
        ex.run(config_updates={**base, "train_mode": "test", "checkpoint": pre["checkpoint"]}, options=OPTS)


@pytest.mark.slow
@pytest.mark.parametrize("updates", [dict(train_mode="pretrain", pretrain_on="protocol"),
                                     dict(train_mode="supervised", aggregation=True, samples_per_class=4)],
                         ids=["pretrain", "aggregation"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(text_root, tmp_path, stop_after_first_epoch,
                                                                  updates):
    cfg = {**TINY, "data_root": str(text_root), "epoch_num": 2, **updates}

    def train(folder, **more):
        return ex.run(config_updates={**cfg, "out_dir": str(folder), **more}, options=OPTS).result

    stop_after_first_epoch.off()
    ref = train(tmp_path / "ref")
    stop_after_first_epoch.on()
    with pytest.raises(stop_after_first_epoch.error):
        train(tmp_path / "victim")
    stop_after_first_epoch.off()
    resumed = train(tmp_path / "victim", resume=str(tmp_path / "victim"))
    a = torch.load(ref["checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
