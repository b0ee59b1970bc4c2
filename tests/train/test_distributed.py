"""Data-parallel training (``experiments/train/distributed.py``) on CPU with gloo: the sharded,
gathered and gradient-averaged steps of a 2-process launch against one process."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import ddp_support
from chromedriver_client import free_port
from experiments.train import distributed


def launch(fn, *args, size: int = 2) -> None:
    """Run ``fn`` as ranks 0..size-1; ``args[-1]`` is the folder the ranks write to. A rank killed by a
    signal fails the test, with which ranks had left the process group cleanly before it."""
    try:
        mp.spawn(fn, args=(size, free_port(), *args), nprocs=size, join=True)
    except mp.ProcessExitedException as e:
        left = ddp_support.ranks_that_left(args[-1], size)
        raise AssertionError(f"rank {e.error_index} died ({e}); ranks past shutdown(): {left or 'none'}") from e


def test_two_ranks_take_the_same_steps_as_one_process(tmp_path):
    """Without BatchNorm the 2-process steps are the 1-process steps: the gathered batch-contrastive
    loss and the averaged gradients give the same update (to float32 rounding)."""
    launch(ddp_support.train_worker, False, str(tmp_path))
    one, one_losses = ddp_support.train_steps(bn=False, epochs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["losses"] == pytest.approx(one_losses, rel=1e-5)
        for name, value in one.state_dict().items():
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert one.logit_scale.item() != pytest.approx(2.0)  # the temperature trained (so it was compared)


def test_ranks_end_with_rank_zeros_batchnorm_statistics(tmp_path):
    """With BatchNorm each rank normalises its own shard, but the running statistics every rank ends
    with (and evaluates and saves) are rank 0's, and the weights stay identical across ranks."""
    launch(ddp_support.train_worker, True, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt")["state"] for r in range(2))
    for name in r0:
        torch.testing.assert_close(r0[name], r1[name], rtol=0, atol=0, msg=name)
    one, _ = ddp_support.train_steps(bn=True, epochs=2)
    # shard statistics are not whole-batch ones (what sync_batchnorm=True gives on CUDA)
    assert not torch.equal(r0["norm.running_mean"], one.state_dict()["norm.running_mean"])


@pytest.mark.parametrize("n", [7, 1])
def test_gather_rows_returns_every_row_in_order(tmp_path, n):
    """Uneven shares (7 rows over 2 ranks) and a rank with none (1 row): every rank gets rows 0..n-1."""
    launch(ddp_support.gather_rows_worker, n, str(tmp_path))
    expected = torch.arange(n, dtype=torch.float32)[:, None].expand(-1, 3)
    for r in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rows{r}.pt"), expected)


def test_one_process_is_the_identity(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.shard(x) is x and distributed.gather(x) is x
    assert distributed.world() == distributed.World() and distributed.is_main()
    assert distributed.broadcast_object("folder") == "folder"


@pytest.mark.parametrize("update, message", [
    ({"train_mode": "pretrain"}, "does not run under torchrun"),
    ({"selection": "folds"}, "selection='folds'"),
    ({"aggregation": True}, "aggregation=True"),
    ({"batch_size": 63}, "must divide by the 2 processes"),
    ({"sync_batchnorm": True, "device": "cpu"}, "needs CUDA"),
])
def test_a_launch_refuses_what_it_cannot_run(monkeypatch, update, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cfg = {"train_mode": "main", "selection": "val", "aggregation": False, "batch_size": 64, "device": "auto",
           "sync_batchnorm": False, **update}
    with pytest.raises(ValueError, match=message):
        distributed.check_launch(cfg)
    assert not distributed.is_main()
