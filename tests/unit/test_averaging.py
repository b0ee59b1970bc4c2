"""Weight averaging (experiments/train/averaging.py): EMA and SWA by hand, BatchNorm handling, settings."""
import pytest
import torch
from torch import nn

from experiments.train.averaging import WeightAverage, recompute_batchnorm, swa_first_epoch
from experiments.train.settings import average_settings

CPU = torch.device("cpu")


def linear_with(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return lin


def set_weights(lin: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))


def test_ema_two_updates_by_hand():
    model = linear_with([[0.0, 0.0]], [0.0])
    avg = WeightAverage(model, "ema", decay=0.5)
    set_weights(model, [[1.0, 2.0]], [4.0])
    avg.update(model)  # the first update copies: (1, 2), 4
    set_weights(model, [[3.0, 6.0]], [0.0])
    avg.update(model)  # decay min(0.5, (1 + 1) / (10 + 1)) = 2/11: 2/11 * old + 9/11 * new
    assert avg.updates == 2
    torch.testing.assert_close(avg.module.weight, torch.tensor([[2 / 11 * 1 + 9 / 11 * 3, 2 / 11 * 2 + 9 / 11 * 6]]))
    torch.testing.assert_close(avg.module.bias, torch.tensor([2 / 11 * 4 + 9 / 11 * 0]))
    # the raw model is untouched, the copy takes no gradients
    torch.testing.assert_close(model.weight, torch.tensor([[3.0, 6.0]]))
    assert not any(p.requires_grad for p in avg.module.parameters())


def test_ema_decay_caps_the_warm_up():
    model = linear_with([[0.0, 0.0]], [0.0])
    avg = WeightAverage(model, "ema", decay=0.1)
    set_weights(model, [[1.0, 1.0]], [1.0])
    avg.update(model)
    set_weights(model, [[11.0, 21.0]], [-9.0])
    avg.update(model)  # min(0.1, 2/11) = 0.1: 0.1 * old + 0.9 * new
    torch.testing.assert_close(avg.module.weight, torch.tensor([[0.1 + 9.9, 0.1 + 18.9]]))
    torch.testing.assert_close(avg.module.bias, torch.tensor([0.1 - 8.1]))
    # after many updates the cap is the configured decay
    avg.updates = 100_000
    assert avg.weight_of_new() == pytest.approx(0.9)


def test_swa_is_the_uniform_mean_of_three_snapshots():
    model = linear_with([[0.0, 0.0]], [0.0])
    avg = WeightAverage(model, "swa")
    for w, b in [([[1.0, 4.0]], [3.0]), ([[2.0, 5.0]], [6.0]), ([[6.0, 0.0]], [0.0])]:
        set_weights(model, w, b)
        avg.update(model)
    torch.testing.assert_close(avg.module.weight, torch.tensor([[(1 + 2 + 6) / 3, (4 + 5 + 0) / 3]]))
    torch.testing.assert_close(avg.module.bias, torch.tensor([(3 + 6 + 0) / 3]))


def test_ema_averages_batchnorm_buffers_swa_copies_them():
    bn = nn.BatchNorm1d(2)
    ema, swa = WeightAverage(bn, "ema", decay=0.9), WeightAverage(bn, "swa")
    for mean in (torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])):
        bn.running_mean.copy_(mean)
        bn.num_batches_tracked += 1
        ema.update(bn)
        swa.update(bn)
    w = 2 / 11  # the second update's decay (warm-up cap)
    torch.testing.assert_close(ema.module.running_mean, torch.tensor([w * 1 + (1 - w) * 3, w * 2 + (1 - w) * 6]))
    assert int(ema.module.num_batches_tracked) == 2  # integer buffers are copied
    torch.testing.assert_close(swa.module.running_mean, torch.tensor([3.0, 6.0]))  # recomputed by the loop


def test_recompute_batchnorm_measures_the_data_and_draws_nothing():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.BatchNorm1d(4))
            self.head = nn.BatchNorm1d(4)  # not on the forward path (like the training-only FR-Head)

        def forward(self, x):
            return self.body(x)

        def __getitem__(self, i):
            return self.body[i]

    model = Net().eval()
    head = model.head
    head.running_mean.fill_(7.0)
    x = torch.randn(40, 3) * 3 + 1
    rng = torch.get_rng_state()
    assert recompute_batchnorm(model, x, batch_size=8, device=CPU)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout was off: training draws are unchanged
    assert not model.training and not model[1].training and model[1].momentum == 0.1
    h = model[0](x).detach()
    # each batch weighs the same: the mean of the batch means (equal batches: the data's mean)
    torch.testing.assert_close(model[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    var = torch.stack([h[i:i + 8].var(0) for i in range(0, 40, 8)]).mean(0)  # unbiased per batch, averaged
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    # the second BatchNorm sees the first one's training-mode output, with dropout off
    h2 = model[1].train()(h).detach()
    torch.testing.assert_close(model[3].running_mean, h2.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.equal(head.running_mean, torch.full((4,), 7.0))  # unreached layers keep their statistics
    assert not recompute_batchnorm(nn.Linear(3, 1), x, batch_size=8, device=CPU)


def test_state_round_trip():
    model = linear_with([[1.0, 2.0]], [3.0])
    avg = WeightAverage(model, "swa")
    avg.update(model)
    other = WeightAverage(linear_with([[0.0, 0.0]], [0.0]), "swa")
    other.load_state_dict(avg.state_dict())
    assert other.updates == 1 and torch.equal(other.module.weight, avg.module.weight)
    with pytest.raises(ValueError, match="stored average is 'swa'"):
        WeightAverage(model, "ema").load_state_dict(avg.state_dict())


def test_swa_first_epoch():
    assert swa_first_epoch(0.75, 50) == 37  # epochs 38..50 (1-based) are averaged
    assert swa_first_epoch(0.75, 2) == 1
    assert swa_first_epoch(0.0, 10) == 0
    assert swa_first_epoch(0.99, 1) == 0


@pytest.mark.parametrize("updates,match", [
    ({"weight_average": "polyak"}, "weight_average must be one of"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
    ({"swa_start": -0.1}, "swa_start must be in"),
    ({"swa_start": 1.0}, "swa_start must be in"),
])
def test_bad_averaging_settings_name_their_key(updates, match):
    with pytest.raises(ValueError, match=match):
        average_settings({"weight_average": "ema", "ema_decay": 0.999, "swa_start": 0.75, **updates})


def test_record_tells_variants_apart():
    base = {"ema_decay": 0.99, "swa_start": 0.5}
    assert average_settings({**base, "weight_average": "none"}).record() == {"weight_average": "none"}
    assert average_settings({**base, "weight_average": "ema"}).record() == {"weight_average": "ema",
                                                                            "ema_decay": 0.99}
    assert average_settings({**base, "weight_average": "swa"}).record() == {"weight_average": "swa",
                                                                            "swa_start": 0.5}
