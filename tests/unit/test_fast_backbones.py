"""The fast formulations against the straightforward ones, in float64 on the CPU: the
adjacency-first graph convolution, the depthwise-convolution temporal shift, and whole
ST-GCN / Shift-GCN backbones (outputs, every parameter gradient, running statistics,
eval mode); checkpoints are interchangeable; bfloat16 autocast runs."""
import copy

import pytest
import torch
from torch.autograd import gradcheck

from module import build_backbone
from module.graph import adjacency
from module.head import SkeletonTextModel
from module.shift import temporal_shift
from module.stgcn import GraphConv

CL = torch.channels_last
TIGHT = dict(rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- graph convolution

@pytest.mark.parametrize("cin,cout", [(3, 8), (8, 8), (8, 20), (12, 5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("method", ["aggregate_first", "dense"])
def test_fast_graph_conv_methods_equal_conv_then_einsum(cin, cout, layout, method):
    torch.manual_seed(0)
    ref = GraphConv(cin, cout, 3).double()
    with torch.no_grad():
        ref.conv.bias.uniform_(-1, 1)
    fast = copy.deepcopy(ref)
    fast.method = method
    a0 = torch.from_numpy(adjacency("ntu25")).double() * (1 + torch.rand(3, 25, 25, dtype=torch.float64))
    x0 = torch.randn(4, cin, 7, 25, dtype=torch.float64)
    outs, grads = [], []
    for m, fmt in ((ref, torch.contiguous_format), (fast, CL if layout == "channels_last" else torch.contiguous_format)):
        x = x0.clone(memory_format=fmt).requires_grad_(True)
        a = a0.clone().requires_grad_(True)
        out = m(x, a)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=torch.float64)).view(out.shape))
        outs.append(out)
        grads.append([x.grad, a.grad, m.conv.weight.grad, m.conv.bias.grad])
    torch.testing.assert_close(outs[1], outs[0], **TIGHT)
    for g_fast, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_ref, **TIGHT)


# ----------------------------------------------------------------------------- temporal shift

POSITIONS = {  # (xpos, ypos) per channel, C = 4
    "fractional": ([0.3, -0.7, 1.25, -1.6], [0.4, -1.3, 2.7, -0.2]),
    "integer": ([0.0, 1.0, -1.0, 2.0], [0.0, 1.0, -2.0, 3.0]),
    "out_of_range": ([7.5, -9.2, 0.1, 30.0], [20.3, -15.0, 3.5, -8.6]),
    "original_init": ([3e-9, -7e-9, 1e-8, -2e-9], [0.83, -0.41, 0.05, -0.97]),
    "all_same": ([0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]),
}


def _shift(impl, x, xpos, ypos, stride, pos_grad, g):
    x = x.detach().requires_grad_(True)
    xp, yp = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    out = temporal_shift(x, xp, yp, stride, impl=impl, pos_grad=pos_grad)
    out.backward(g)
    return out, x.grad, xp.grad, yp.grad


@pytest.mark.parametrize("shape", [(2, 4, 6, 5), (2, 4, 7, 5)], ids=["H6", "H7"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list(POSITIONS))
@pytest.mark.parametrize("pos_grad", ["constrained", "exact"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dwconv_shift_equals_the_reference(shape, stride, name, pos_grad, layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape[0], shape[1], shape[2] // stride, shape[3], generator=gen, dtype=torch.float64)
    xpos, ypos = (torch.tensor(v, dtype=torch.float64) for v in POSITIONS[name])
    want = _shift("ref", x, xpos, ypos, stride, pos_grad, g)
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    got = _shift("dwconv", x.to(memory_format=fmt), xpos, ypos, stride, pos_grad, g.to(memory_format=fmt))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TIGHT)
    if pos_grad == "constrained":  # the sign steps, exactly (signed zeros included)
        assert torch.equal(got[3], want[3]) and torch.equal(torch.signbit(got[2]), torch.signbit(want[2]))
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=CL)


@pytest.mark.parametrize("stride", [1, 2])
def test_dwconv_shift_gradcheck(stride):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    xpos = torch.tensor([0.3, -0.6, 1.2], dtype=torch.float64, requires_grad=True)
    ypos = torch.tensor([0.45, -1.3, 0.7], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda *a: temporal_shift(*a, stride, impl="dwconv", pos_grad="exact"), (x, xpos, ypos))


def test_auto_uses_dwconv_on_cpu():
    x = torch.randn(2, 4, 6, 5)
    xpos, ypos = torch.tensor([0.3, -0.7, 1.25, -1.6]), torch.tensor([0.4, -1.3, 2.7, -0.2])
    torch.testing.assert_close(temporal_shift(x, xpos, ypos, 2), temporal_shift(x, xpos, ypos, 2, impl="dwconv"),
                               rtol=0, atol=0)


# ----------------------------------------------------------------------------- whole backbones

SMALL = {"stgcn": dict(hidden_channels=4, out_channels=40, dropout=0.0),  # 25 joints x 40 > DENSE_GRAPH_MAX
         "shiftgcn": dict(hidden_channels=4, out_channels=16, num_person=2, shift_pos_grad="exact")}


def _pair(name):
    torch.manual_seed(0)
    kw = dict(SMALL[name])
    if name == "shiftgcn":
        ref = build_backbone(name, formulation="plain", shift_impl="ref", **kw)
        fast = build_backbone(name, formulation="fast", shift_impl="auto", **kw)
    else:
        ref = build_backbone(name, formulation="plain", **kw)
        fast = build_backbone(name, formulation="fast", **kw)
    with torch.no_grad():  # move every parameter off its initial value (edge importance, biases, masks)
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast.load_state_dict(ref.state_dict())
    return ref.double(), fast.double()


@pytest.mark.parametrize("name", ["stgcn", "shiftgcn"])
def test_fast_backbone_equals_reference(name):
    ref, fast = _pair(name)
    if name == "stgcn":  # both fast graph-conv methods are in the comparison
        assert {b.gcn.method for b in fast.blocks} == {"dense", "aggregate_first"}
    x = torch.randn(3, 3, 20, 25, 2, dtype=torch.float64)
    for step in range(2):  # training mode, twice: running statistics accumulate identically
        outs = []
        for m in (ref, fast):
            m.zero_grad()
            out = m(x + step)
            (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)).sum().backward()
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0], **TIGHT)
    ref_params, fast_params = dict(ref.named_parameters()), dict(fast.named_parameters())
    for n, p in ref_params.items():
        torch.testing.assert_close(fast_params[n].grad, p.grad, rtol=1e-8, atol=1e-12, msg=n)
    ref_buf, fast_buf = dict(ref.named_buffers()), dict(fast.named_buffers())
    for n, b in ref_buf.items():
        torch.testing.assert_close(fast_buf[n], b, **TIGHT, msg=n)
    ref.eval(), fast.eval()
    torch.testing.assert_close(fast(x), ref(x), **TIGHT)


def test_stgcn_with_dropout_matches_in_eval_mode_and_keeps_the_dropout_rate():
    torch.manual_seed(0)
    ref = build_backbone("stgcn", hidden_channels=4, out_channels=16, formulation="plain")
    fast = build_backbone("stgcn", hidden_channels=4, out_channels=16, formulation="fast")
    fast.load_state_dict(ref.state_dict())
    drops = [(type(b.tcn[4]).__name__, b.tcn[4].p) for b in fast.blocks]
    assert drops[0] == ("FastDropout", 0.0) and all(d == ("FastDropout", 0.5) for d in drops[1:])
    x = torch.randn(2, 3, 16, 25, 2)
    ref.eval(), fast.eval()
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["stgcn", "shiftgcn"])
def test_checkpoints_load_across_formulations(name):
    ref = build_backbone(name, formulation="plain", **SMALL[name])
    fast = build_backbone(name, formulation="fast", **SMALL[name])
    a, b = ref.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    fast.load_state_dict(a)
    ref.load_state_dict(b)


def test_unknown_formulation_is_refused():
    with pytest.raises(ValueError, match="unknown formulation 'faster'"):
        build_backbone("stgcn", formulation="faster")
    with pytest.raises(ValueError, match="unknown formulation"):
        build_backbone("shiftgcn", formulation="")


@pytest.mark.parametrize("name", ["stgcn", "shiftgcn"])
def test_bf16_autocast_runs_and_stays_close(name):
    """bfloat16 autocast (CPU): a training step runs, every parameter gets a finite float32
    gradient, and the output is within bfloat16 rounding of float32."""
    torch.manual_seed(0)
    model = SkeletonTextModel(build_backbone(name, **{**SMALL[name], "hidden_channels": 8}), 12)
    x = torch.randn(4, 3, 16, 25, 2)
    model.eval()
    with torch.no_grad():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.05 * want.abs().max().item())
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    (model.scale() * out.float()).square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


def test_fast_stgcn_training_with_dropout_is_reproducible_under_a_seed():
    """The fused block end (BatchNorm, dropout, residual, ReLU) draws its mask from torch's
    generator: the same seed gives the same step, another seed another mask."""
    def step(seed):
        torch.manual_seed(0)
        m = build_backbone("stgcn", hidden_channels=4, out_channels=16, formulation="fast").train()
        x = torch.randn(2, 3, 16, 25, 2)
        torch.manual_seed(seed)
        out = m(x)
        out.square().sum().backward()
        return out.detach(), m.blocks[5].tcn[3].weight.grad.clone()

    (a, ga), (b, gb), (c, _) = step(1), step(1), step(2)
    assert torch.equal(a, b) and torch.equal(ga, gb) and torch.isfinite(ga).all()
    assert not torch.equal(a, c)
