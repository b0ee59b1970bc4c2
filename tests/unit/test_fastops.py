"""Fast building blocks against their straightforward PyTorch formulations
(``module/fastops.py``): the cheap dropout mask, the joint x channel BatchNorm."""
import pytest
import torch
from torch import nn

from module.fastops import FastDropout, JointChannelBatchNorm, SubsampledPointwiseConv, fast_dropout, keep_mask

CL = torch.channels_last


def _same_step(yr, yf, xr, xf, **tol):
    """Outputs equal; one backward of the same gradient through each; input gradients equal."""
    torch.testing.assert_close(yf, yr, **tol)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, **tol)


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])  # 0.3 is no multiple of 2^-16: the torch.rand path
def test_keep_mask_has_the_requested_probability(p):
    torch.manual_seed(0)
    x = torch.empty(64, 32, 50, 25)  # 2.56M draws: the standard error of the mean is < 3.2e-4
    keep = keep_mask(x, p).float()
    assert keep.mean().item() == pytest.approx(1 - p, abs=2e-3)
    # no structure along any axis (the four lanes of a 64-bit word are independent)
    for dim in range(4):
        frac = keep.mean(dim=[d for d in range(4) if d != dim])
        assert (frac - (1 - p)).abs().max() < 0.03, dim
    # the elements drawn from one generator word (64 bits for p = 0.5, four 16-bit lanes
    # otherwise) are independent: each position within a word keeps 1 - p of the time
    per_word = 64 if p == 0.5 else 4
    lanes = keep.reshape(-1, per_word).mean(0)
    assert (lanes - (1 - p)).abs().max() < 4e-3 * (per_word / 4) ** 0.5
    # neighbouring elements are uncorrelated (bits of one byte, lanes of one word)
    flat = keep.reshape(-1) - (1 - p)
    assert abs((flat[:-1] * flat[1:]).mean().item()) < 2e-3


def test_keep_mask_follows_the_input_layout():
    x = torch.randn(4, 6, 5, 3).to(memory_format=CL)
    assert keep_mask(x, 0.5).stride() == x.stride()
    assert keep_mask(x.contiguous(), 0.5).stride() == x.contiguous().stride()


@pytest.mark.parametrize("p", [0.5, 0.3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_fast_dropout_is_inverted_dropout_with_its_own_mask(p, layout):
    """Same semantics as nn.Dropout: each element is 0 or x / (1 - p), and the gradient is the
    same mask times 1 / (1 - p); expectation x."""
    torch.manual_seed(0)
    x0 = torch.randn(8, 16, 20, 25, dtype=torch.float64)
    x = {"contiguous": x0, "channels_last": x0.to(memory_format=CL), "strided": x0[:, :, ::2]}[layout]
    x = x.detach().requires_grad_(True)
    out = fast_dropout(x, p)
    kept = out != 0
    torch.testing.assert_close(out[kept], (x / (1 - p))[kept])
    assert kept.double().mean().item() == pytest.approx(1 - p, abs=0.02)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g / (1 - p), torch.zeros_like(g)))


def test_fast_dropout_matches_nn_dropout_in_distribution():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    fast, ref = FastDropout(0.5)(x), nn.Dropout(0.5)(x)
    for out in (fast, ref):
        assert set(out.unique().tolist()) == {0.0, 2.0}
    assert fast.mean().item() == pytest.approx(ref.mean().item(), abs=0.01)


def test_fast_dropout_edge_cases_and_modes():
    x = torch.randn(3, 4, requires_grad=True)
    m = FastDropout(0.5).eval()
    assert m(x) is x
    assert FastDropout(0.0)(x) is x
    zero = FastDropout(1.0)(x)
    assert torch.count_nonzero(zero) == 0 and zero.requires_grad
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        FastDropout(1.5)
    assert "p=0.5" in repr(FastDropout(0.5))


# ----------------------------------------------------------------------------- joint x channel BatchNorm

def _bn_pair(features: int, **kw):
    ref = nn.BatchNorm1d(features, **kw).double()
    fast = JointChannelBatchNorm(features, **kw).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative moving average
def test_joint_channel_batchnorm_equals_batchnorm1d(momentum):
    ref, fast = _bn_pair(75, momentum=momentum)
    assert isinstance(fast, nn.BatchNorm1d)
    for step in range(3):  # running statistics over several training steps
        x = torch.randn(40, 75, dtype=torch.float64) * (step + 1) + step
        xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        _same_step(ref(xr), fast(xf), xr, xf)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name))
    ref.eval(), fast.eval()
    x = torch.randn(7, 75, dtype=torch.float64)
    torch.testing.assert_close(fast(x), ref(x))


def test_joint_channel_batchnorm_refuses_other_shapes():
    with pytest.raises(ValueError, match="rows, features"):
        JointChannelBatchNorm(6)(torch.randn(2, 6, 3))


# ----------------------------------------------------------------------------- strided 1x1 convolution

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_subsampled_pointwise_conv_equals_the_strided_conv(layout):
    torch.manual_seed(0)
    ref = nn.Conv2d(8, 16, 1, stride=(2, 1)).double()
    fast = SubsampledPointwiseConv(8, 16, stride=(2, 1)).double()
    fast.load_state_dict(ref.state_dict())
    x0 = torch.randn(3, 8, 9, 25, dtype=torch.float64)  # odd length: ceil(9 / 2) = 5 rows either way
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    xr, xf = x0.clone().requires_grad_(True), x0.to(memory_format=fmt).requires_grad_(True)
    _same_step(ref(xr), fast(xf), xr, xf)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad)


# ----------------------------------------------------------------------------- recomputing fused blocks

def _two_steps_agree(make, x, ref_fn, fast_fn, spread_params=False):
    """Two module sets from ``make`` (same state), two training steps through ``ref_fn(mods, x, step)``
    and ``fast_fn``: outputs, input and parameter gradients, running statistics all equal."""
    torch.manual_seed(0)
    ref, fast = make().double().train(), make().double().train()
    if spread_params:  # parameters away from their initial values
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.linspace(-0.5, 1.5, p.numel(), dtype=p.dtype).view(p.shape))
    fast.load_state_dict(ref.state_dict())
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    tight = dict(rtol=1e-10, atol=1e-12)
    for step in range(2):
        out_r, out_f = ref_fn(ref, xr, step), fast_fn(fast, xf, step)
        torch.testing.assert_close(out_f, out_r, **tight)
        g = torch.randn_like(out_r)
        out_r.backward(g)
        out_f.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, **tight)
    for (n, pr), pf in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, **tight, msg=n)
    for (n, br), bf in zip(ref.named_buffers(), fast.buffers()):
        torch.testing.assert_close(bf, br, rtol=1e-12, atol=0, msg=n)  # running stats and the step count


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bn_relu_conv_equals_the_three_modules(momentum, layout):
    from module.fastops import bn_relu_conv

    x = torch.randn(4, 6, 12, 5, dtype=torch.float64)
    x = x.to(memory_format=CL) if layout == "channels_last" else x
    _two_steps_agree(lambda: nn.ModuleList([nn.BatchNorm2d(6, momentum=momentum),
                                            nn.Conv2d(6, 8, (9, 1), (2, 1), (4, 0))]), x,
                     lambda m, x, step: m[1](torch.relu(m[0](x + step))),
                     lambda m, x, step: bn_relu_conv(x + step, m[0], m[1]), spread_params=True)


@pytest.mark.parametrize("stride", [(1, 1), (2, 1)])
def test_pointwise_conv_bn_equals_the_two_modules(stride):
    from module.fastops import pointwise_conv_bn

    x = torch.randn(4, 6, 12, 5, dtype=torch.float64)
    _two_steps_agree(lambda: nn.ModuleList([nn.Conv2d(6, 8, 1, stride), nn.BatchNorm2d(8)]), x,
                     lambda m, x, step: m[1](m[0](x * (step + 1))),
                     lambda m, x, step: pointwise_conv_bn(x * (step + 1), m[0], m[1]))


@pytest.mark.parametrize("p", [0.5, 0.3])
@pytest.mark.parametrize("residual", ["conv", "identity"])
def test_bn_dropout_add_relu_equals_the_modules_with_the_same_mask(p, residual):
    from module.fastops import bn_dropout_add_relu

    x = torch.randn(4, 6, 12, 5, dtype=torch.float64).to(memory_format=CL)
    masks = [keep_mask(x, p) for _ in range(2)]

    def make():
        return nn.ModuleList([nn.BatchNorm2d(6), nn.Conv2d(6, 6, 1)])

    def res_of(m, x):
        return m[1](x) if residual == "conv" else x

    def ref(m, x, step):  # dropout written out with the same mask
        return torch.relu(m[0](x + step) * masks[step] / (1 - p) + res_of(m, x))

    _two_steps_agree(make, x, ref, lambda m, x, step: bn_dropout_add_relu(x + step, m[0], p, res_of(m, x), masks[step]),
                     spread_params=True)


def test_bn_dropout_add_relu_draws_its_own_mask_at_the_rate():
    from module.fastops import bn_dropout_add_relu

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    y = torch.randn(16, 8, 30, 25).to(memory_format=CL)
    out = bn_dropout_add_relu(y, bn, 0.5, torch.full_like(y, 100.0))  # residual 100: relu passes everything
    dropped = out == 100.0
    assert dropped.double().mean().item() == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():
        kept = ~dropped
        torch.testing.assert_close(out[kept] - 100.0, (2 * nn.functional.batch_norm(
            y, None, None, bn.weight, bn.bias, True, 0.1, bn.eps))[kept], rtol=1e-5, atol=1e-5)


def test_recomputing_blocks_refuse_what_they_do_not_cover():
    from module.fastops import bn_relu_conv, pointwise_conv_bn

    x = torch.randn(2, 4, 6, 5)
    with pytest.raises(ValueError, match="training-mode"):
        bn_relu_conv(x, nn.BatchNorm2d(4).eval(), nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="1x1 convolution"):
        pointwise_conv_bn(x, nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    from module.fastops import bn_dropout_add_relu

    with pytest.raises(ValueError, match="0 < p < 1"):
        bn_dropout_add_relu(x, nn.BatchNorm2d(4), 0.0, x)
    with pytest.raises(ValueError, match="layout of y"):
        bn_dropout_add_relu(x, nn.BatchNorm2d(4), 0.5, x, keep_mask(x.to(memory_format=CL), 0.5))
