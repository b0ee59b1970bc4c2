"""The temporal-shift op: the reference against a direct loop evaluation of SHIFT_OP.md,
gradcheck, the constrained position gradient, impl selection, tracing.

CUDA parity and the kernel build are in tests/test_shift_cuda.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from module.shift import TemporalShift, constrain, temporal_shift
from module.shift import reference
from module.shift.build import ShiftBuildError, load_extension

# Per-channel positions (C = 4): (xpos, ypos).
POSITIONS = {
    "integer": ([0.0, 1.0, -1.0, 2.0], [0.0, 1.0, -2.0, 3.0]),
    "fractional": ([0.3, -0.7, 1.25, -1.6], [0.4, -1.3, 2.7, -0.2]),
    # partly and wholly outside the input (H <= 7, W = 5)
    "out_of_range": ([7.5, -9.2, 0.1, 30.0], [20.3, -15.0, 3.5, -8.6]),
    # the original initialisation: |xpos| ~ 1e-8 (negative ones floor to -1), ypos in (-1, 1)
    "original_init": ([3e-9, -7e-9, 1e-8, -2e-9], [0.83, -0.41, 0.05, -0.97]),
}
SHAPES = [(2, 4, 6, 5), (2, 4, 7, 5)]  # even and odd time lengths


# ----------------------------------------------------------------------------- the oracle
# A direct, loop-by-loop reading of SHIFT_OP.md in float64 (independent of the reference:
# scalar loops, the input gradient by scattering, not by gathering).

def _corner(xpos: float, ypos: float, stride: int):
    X = xpos
    Y = ypos + (0.5 if stride != 1 else 0.0)
    x1 = math.floor(np.float32(X))  # floor taken in float32
    y1 = math.floor(np.float32(Y))
    return x1, y1, X - x1, Y - y1


def _taps(x1, y1, dx, dy, h, w, stride):
    """[(row, col, weight)] of q11, q21, q12, q22 for output (h, w)."""
    r, c = h * stride + y1, w + x1
    return [(r, c, (1 - dx) * (1 - dy)), (r, c + 1, dx * (1 - dy)), (r + 1, c, (1 - dx) * dy), (r + 1, c + 1, dx * dy)]


def oracle(x: np.ndarray, xpos, ypos, stride: int, g: np.ndarray):
    """Forward, input gradient (for output gradient g) and the raw (batch-mean) position gradients."""
    n_, c_, h_, w_ = x.shape
    ho = h_ // stride
    out = np.zeros((n_, c_, ho, w_))
    gin = np.zeros_like(x)
    raw_x, raw_y = np.zeros(c_), np.zeros(c_)

    def read(n, c, r, col):
        return x[n, c, r, col] if 0 <= r < h_ and 0 <= col < w_ else 0.0

    for c in range(c_):
        x1, y1, dx, dy = _corner(xpos[c], ypos[c], stride)
        for n in range(n_):
            for h in range(ho):
                for w in range(w_):
                    taps = _taps(x1, y1, dx, dy, h, w, stride)
                    q11, q21, q12, q22 = (read(n, c, r, col) for r, col, _ in taps)
                    out[n, c, h, w] = sum(read(n, c, r, col) * wt for r, col, wt in taps)
                    for r, col, wt in taps:
                        if 0 <= r < h_ and 0 <= col < w_:
                            gin[n, c, r, col] += g[n, c, h, w] * wt
                    raw_x[c] += g[n, c, h, w] * ((1 - dy) * (q21 - q11) + dy * (q22 - q12)) / n_
                    raw_y[c] += g[n, c, h, w] * ((1 - dx) * (q12 - q11) + dx * (q22 - q21)) / n_
    return out, gin, raw_x, raw_y


def oracle_constrained(raw_x: np.ndarray, raw_y: np.ndarray):
    """SHIFT_OP.md: grad_y = 0.01 sign(raw_y), grad_x = a zero (signed like raw_x); 1e-4 and 0 where raw_y == 0."""
    gx = np.where(raw_y != 0, np.copysign(0.0, raw_x), 0.0)
    gy = np.where(raw_y != 0, 0.01 * np.sign(raw_y), 1e-4)
    return gx, gy


def _inputs(shape, name, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    xpos, ypos = (torch.tensor(v, dtype=dtype) for v in POSITIONS[name])
    return x, xpos, ypos, gen


# ----------------------------------------------------------------------------- reference vs oracle

@pytest.mark.parametrize("shape", SHAPES, ids=["H6", "H7"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list(POSITIONS))
def test_reference_matches_the_spec(shape, stride, name):
    x, xpos, ypos, gen = _inputs(shape, name)
    g = torch.randn(shape[0], shape[1], shape[2] // stride, shape[3], generator=gen, dtype=torch.float64)
    want_out, want_gin, raw_x, raw_y = oracle(x.numpy(), xpos.tolist(), ypos.tolist(), stride, g.numpy())

    x.requires_grad_(True)
    xp, yp = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    out = temporal_shift(x, xp, yp, stride, impl="ref")
    assert out.shape == (shape[0], shape[1], shape[2] // stride, shape[3])
    torch.testing.assert_close(out, torch.from_numpy(want_out), rtol=1e-12, atol=1e-12)
    out.backward(g)
    torch.testing.assert_close(x.grad, torch.from_numpy(want_gin), rtol=1e-12, atol=1e-12)

    # the constrained position gradient: exact values, signed zeros included
    gx, gy = oracle_constrained(raw_x, raw_y)
    assert torch.equal(yp.grad, torch.from_numpy(gy)), (yp.grad, gy, raw_y)
    assert torch.equal(xp.grad, torch.from_numpy(gx))
    assert torch.equal(torch.signbit(xp.grad), torch.from_numpy(np.signbit(gx)))

    # the exact option: the true derivative, i.e. the batch sum of the same terms
    xp2, yp2 = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    temporal_shift(x.detach(), xp2, yp2, stride, impl="ref", pos_grad="exact").backward(g)
    torch.testing.assert_close(xp2.grad, torch.from_numpy(raw_x * shape[0]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(yp2.grad, torch.from_numpy(raw_y * shape[0]), rtol=1e-10, atol=1e-12)


def test_out_of_range_channels_read_zeros_and_get_the_fallback_step():
    x, xpos, ypos, _ = _inputs((2, 4, 7, 5), "out_of_range")
    xp, yp = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    out = temporal_shift(x, xp, yp, 1, impl="ref")
    # channels 0 (x = 7.5 >= W), 1 (y = -15), 3 (x = 30) see nothing of the input
    assert torch.count_nonzero(out[:, [0, 1, 3]]) == 0 and torch.count_nonzero(out[:, 2]) > 0
    out.sum().backward()
    # raw_y == 0 for those channels: the original then steps ypos by 1e-4 and xpos by 0
    torch.testing.assert_close(yp.grad[[0, 1, 3]], torch.full((3,), 1e-4, dtype=torch.float64))
    assert torch.equal(xp.grad[[0, 1, 3]], torch.zeros(3, dtype=torch.float64))


def test_float32_reference_matches_the_spec():
    x64, xpos, ypos, gen = _inputs((3, 4, 8, 5), "fractional")
    g = torch.randn(3, 4, 4, 5, generator=gen, dtype=torch.float64)
    want_out, want_gin, _, _ = oracle(x64.numpy(), xpos.tolist(), ypos.tolist(), 2, g.numpy())
    x = x64.float().requires_grad_(True)
    out = temporal_shift(x, xpos.float(), ypos.float(), 2, impl="ref")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), torch.from_numpy(want_out), rtol=1e-5, atol=1e-5)
    out.backward(g.float())
    torch.testing.assert_close(x.grad.double(), torch.from_numpy(want_gin), rtol=1e-5, atol=1e-5)


def test_floor_is_taken_in_float32():
    # 0.99999999999 is 1.0 in float32: the corner is 1 and the fraction slightly negative,
    # as in the original kernel (floorf on a double).
    X = torch.tensor([0.99999999999], dtype=torch.float64)
    x1, _, dx, _ = reference.corners(X, X)
    assert x1.item() == 1 and dx.item() < 0


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("stride,height", [(1, 6), (1, 7), (2, 6), (2, 7), (3, 8)])
@pytest.mark.parametrize("name", ["fractional", "out_of_range", "integer"])
def test_gradcheck_input(stride, height, name):
    x, xpos, ypos, _ = _inputs((2, 4, height, 5), name)
    x.requires_grad_(True)
    assert gradcheck(lambda t: temporal_shift(t, xpos, ypos, stride, impl="ref"), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_exact_position_gradient(stride):
    # positions away from integers (finite differences must not cross a floor)
    x, xpos, ypos, _ = _inputs((2, 4, 7, 5), "fractional")
    x.requires_grad_(True)
    xp, yp = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    fn = lambda t, a, b: temporal_shift(t, a, b, stride, impl="ref", pos_grad="exact")  # noqa: E731
    assert gradcheck(fn, (x, xp, yp), eps=1e-6, atol=1e-8)


def test_constrained_position_gradient_is_not_the_derivative():
    x, xpos, ypos, _ = _inputs((2, 4, 7, 5), "fractional")
    xp, yp = xpos.clone().requires_grad_(True), ypos.clone().requires_grad_(True)
    fn = lambda a, b: temporal_shift(x, a, b, 1, impl="ref")  # noqa: E731
    assert not gradcheck(fn, (xp, yp), eps=1e-6, atol=1e-8, raise_exception=False)


def test_constraint_edge_cases_follow_the_kernel_arithmetic():
    raw_x = torch.tensor([2.0, -3.0, 5.0, 1.0, 0.0])
    raw_y = torch.tensor([-4.0, 1e-3, 0.0, 1e-30, 0.0])  # 1e-30**2 underflows in float32: dr == 0
    gx, gy = constrain(raw_x, raw_y)
    torch.testing.assert_close(gy, torch.tensor([-0.01, 0.01, 1e-4, 1e-4, 1e-4]))
    assert torch.equal(gx, torch.zeros(5))
    assert torch.signbit(gx).tolist() == [False, True, False, False, False]


# ----------------------------------------------------------------------------- module, impls, tracing

def test_module_parameters_initialisation_and_dtype():
    torch.manual_seed(0)
    m = TemporalShift(64, stride=2, init_scale=1.0)
    assert set(dict(m.named_parameters())) == {"xpos", "ypos"} and not list(m.buffers())
    assert m.xpos.abs().max() <= 1e-8 and m.ypos.abs().max() <= 1.0 and m.ypos.std() > 0.3
    m = m.double()
    out = m(torch.randn(2, 64, 9, 3, dtype=torch.float64))
    assert out.shape == (2, 64, 4, 3) and out.dtype == torch.float64


def test_module_trains_ypos_by_fixed_steps():
    torch.manual_seed(0)
    m = TemporalShift(8, impl="ref")
    before = m.ypos.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m(torch.randn(4, 8, 10, 5)).square().mean().backward()
    opt.step()
    torch.testing.assert_close((m.ypos.detach() - before).abs(), torch.full((8,), 0.01))


def test_cuda_impl_on_cpu_tensors_is_an_error():
    x = torch.randn(1, 2, 4, 3)
    with pytest.raises(ValueError, match="impl='cuda' needs a CUDA tensor"):
        temporal_shift(x, torch.zeros(2), torch.zeros(2), impl="cuda")


def test_unknown_impl_and_pos_grad_and_bad_shapes():
    x = torch.randn(1, 2, 4, 3)
    with pytest.raises(ValueError, match="unknown temporal shift impl 'triton'"):
        temporal_shift(x, torch.zeros(2), torch.zeros(2), impl="triton")
    with pytest.raises(ValueError, match="unknown pos_grad 'true'"):
        temporal_shift(x, torch.zeros(2), torch.zeros(2), pos_grad="true")
    with pytest.raises(ValueError, match=r"positions must have shape \(2,\)"):
        temporal_shift(x, torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        temporal_shift(x[:, :, :1], torch.zeros(2), torch.zeros(2), stride=2)
    with pytest.raises(ValueError, match="unknown temporal shift impl"):
        TemporalShift(4, impl="gpu")


def test_auto_on_cpu_matches_the_reference():  # auto runs the dwconv backend there
    x, xpos, ypos, _ = _inputs((2, 4, 6, 5), "fractional")
    torch.testing.assert_close(temporal_shift(x, xpos, ypos, 2), temporal_shift(x, xpos, ypos, 2, impl="ref"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_building_without_cuda_is_a_clear_error():
    with pytest.raises(ShiftBuildError, match="needs a CUDA build of PyTorch and a GPU"):
        load_extension()


def test_reference_exports_without_baking_in_the_positions():
    """No value-dependent Python numbers: the exported graph takes new positions as inputs."""

    class Shift(torch.nn.Module):
        def forward(self, x, X, Y):
            return reference.forward(x, X, Y, 2)

    x, xpos, ypos, _ = _inputs((2, 4, 8, 5), "fractional")
    exported = torch.export.export(Shift(), (x, xpos, ypos)).module()
    x2, xpos2, ypos2, _ = _inputs((2, 4, 8, 5), "out_of_range", seed=1)
    torch.testing.assert_close(exported(x2, xpos2, ypos2), reference.forward(x2, xpos2, ypos2, 2))
