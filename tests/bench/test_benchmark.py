"""The benchmark command's machinery on tiny widths (its numbers are not checked here:
speed is a benchmark's business, not a test's)."""
import re

from experiments.bench.benchmark import Spec, run_group, table
from experiments.runtime import default_allocator
from tracking_support import needs_server


def test_benchmark_group_prints_every_row_against_the_ceiling():
    default = default_allocator()
    specs = [Spec("ceiling", tiny=True)] + [Spec("train", "stgcn", f, 4, m, tiny=True)
                                           for f, m in (("plain", "system"), ("plain", default),
                                                        ("fast", default))]
    rows = run_group(specs, rounds=1, log=lambda m: None)
    lines = table("tiny", rows)
    assert re.match(r"  conv ceiling \(best layout\) +\d+\.\d GFLOP/s", lines[1]), lines
    assert not any("no plain row" in ln for ln in lines)  # every row has its model count
    body = [ln for ln in lines if " train b4 " in ln]
    assert len(body) == 3, lines
    for ln, spec in zip(body, specs[1:]):
        assert spec.name() in ln
        sps, x_ref, x_before, gfs, pct = ln[len(spec.name()) + 2:].split()[:5]
        assert float(sps) > 0 and float(gfs) > 0 and 0 < float(pct.rstrip("%"))
    # ratios: the plain rows are 1.00 against themselves
    assert body[1].split()[-8] == "1.00" and body[0].split()[-7] == "1.00"
    assert all(r.peak_rss_mib > 0 for r in rows)
    # each worker runs with the allocator its row names
    assert [r.info["mimalloc_loaded"] for r in rows[1:]] == [False, default == "mimalloc", default == "mimalloc"]


def _conv_flops(model, x, counter=None):
    """Convolution FLOPs of one forward + backward: from profiler events (experiments.bench.breakdown),
    and by the FLOP counter (the benchmark's, unless another is given)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from experiments.bench.workloads import flop_counter
    from experiments.bench.breakdown import split_events

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(x).square().sum().backward()
    convs = split_events(prof.events()).convs
    with counter or flop_counter() as c:
        model(x).square().sum().backward()
    counted = sum(v for k, v in c.get_flop_counts()["Global"].items() if "convolution" in str(k))
    return convs, sum(g.flops for g in convs.values()), counted


def test_convolution_flops_from_profiler_events_and_from_the_counter_agree():
    """Strides, padding, dilation, groups, and a first layer whose input needs no gradient."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, (9, 1), (2, 1), (4, 0)), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(12),
                          nn.Conv2d(12, 6, 1, stride=(1, 2)))
    x = torch.randn(2, 3, 17, 5)                      # no gradient: the first conv computes only dW
    convs, ours, counted = _conv_flops(model, x)
    assert counted > 0 and ours == counted
    assert sorted(g.signature for g in convs.values()) == [(3, 8, 9, 1, 2, 1, 17, 5), (8, 12, 3, 3, 1, 4, 9, 5),
                                                           (12, 6, 1, 1, 1, 1, 9, 5)]
    x.requires_grad_(True)                            # now the first conv's input gradient too
    _, ours_x, counted_x = _conv_flops(model, x)
    assert ours_x == counted_x > counted


def test_grouped_convolution_backward_is_counted_once_per_gradient():
    """By hand: forward 2 * outputs * (C_in / groups) * kernel; the backward twice that. torch's
    stock counter counts the grouped weight gradient `groups` times (why the benchmark has its own)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    conv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    forward = 2 * (2 * 12 * 6 * 5) * 2 * 9
    _, ours, counted = _conv_flops(conv, x)
    assert ours == counted == 3 * forward
    _, _, stock = _conv_flops(conv, x, FlopCounterMode(display=False))
    assert stock == forward + forward + 4 * forward
    plain = nn.Conv2d(8, 12, 3, padding=1)            # groups = 1: the same as torch's count
    assert _conv_flops(plain, x)[2] == _conv_flops(plain, x, FlopCounterMode(display=False))[2]


def test_matrix_product_flops_from_profiler_events_and_from_the_counter_agree():
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    from experiments.bench.workloads import flop_counter
    from experiments.bench.breakdown import split_events

    lin = nn.Linear(6, 5)
    a = torch.randn(4, 3, 7, requires_grad=True)
    b = torch.randn(4, 7, 6, requires_grad=True)
    w = torch.randn(5, 5, requires_grad=True)

    def step():
        y = lin(torch.bmm(a, b))                      # bmm, then addmm over (12, 6) rows
        (torch.einsum("nij,jk->nik", y, w) ** 2).sum().backward()

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    parts = split_events(prof.events())
    with flop_counter() as c:
        step()
    counted = sum(v for k, v in c.get_flop_counts()["Global"].items() if "mm" in str(k))
    assert parts.matmul_flops == counted > 0 and parts.matmul_us > 0 and not parts.convs


def test_breakdown_report_on_tiny_stgcn():
    from experiments.bench.workloads import Spec
    from experiments.bench.breakdown import report

    lines = report(Spec("train", "stgcn", "fast", 4, tiny=True), steps=1, top=3)
    text = "\n".join(lines)
    import torch

    assert f", {torch.backends.cpu.get_cpu_capability()} (allocator: " in lines[0]  # the vector width the kernels use
    assert "conv ceiling (best layout) in this process:" in lines[1]
    conv = next(ln for ln in lines if "convolutions, forward + backward" in ln)
    mm = next(ln for ln in lines if "matrix products, forward + backward" in ln)
    bn = next(ln for ln in lines if "BatchNorm" in ln)
    rest = next(ln for ln in lines if "everything else" in ln)
    shares = [float(ln.split("%")[0].split()[-1]) for ln in (conv, mm, bn, rest)]
    assert abs(sum(shares) - 100) < 0.5, lines       # the four parts make the step
    assert re.search(r"\d+ more shapes", text)        # top=3 lists three shapes, then the rest together
    assert len(re.findall(r"bound: convolutions and products at the ceiling's speed", text)) == 2


def test_ddp_throughput_prints_one_row_per_configuration(capsys):
    """The 1-vs-2-process benchmark runs every configuration through ``train_epoch`` (tiny sizes)."""
    from experiments.bench import ddp_throughput

    rows = ddp_throughput.main(["--tiny", "--epochs", "1", "--steps", "2", "--batch", "4", "--threads", "2"])
    assert [r["config"] for r in rows] == ["1 process, 1 thread", "1 process, 2 threads",
                                          "2 processes (gloo), 1 thread each"]
    assert rows[0]["ratio"] == 1.0 and all(r["samples_per_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert out.count("x |") == 3 and "not representative of NCCL on GPUs" in out


@needs_server
def test_db_memory_prints_a_row_per_pair_of_runs(capsys):
    """The run database's memory benchmark writes its simulated runs to two throwaway servers (tiny sizes)
    and prints both servers' resident size after each pair."""
    from experiments.bench import db_memory

    db_memory.main(["--runs", "3", "--epochs", "2", "--artifact-mb", "0.5"])
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if re.fullmatch(r"\| \d+ \| \d+ \| \d+ \| \d+ \|", line)]
    assert [row.split(" | ")[0] for row in rows] == ["| 2", "| 3"]  # two at a time, then the odd one
