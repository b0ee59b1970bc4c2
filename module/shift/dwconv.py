"""The temporal shift as one depthwise convolution (the fast CPU backend, any device).

Same semantics as ``module/shift/reference.py`` (the spec). Per channel, the bilinear
sample at ``(h*s + Y[c], w + X[c])`` reads four taps weighted
``(1-dy)(1-dx), (1-dy) dx, dy (1-dx), dy dx`` at rows ``h*s + y1, +1`` and columns
``w + x1, +1`` (zeros outside the input). That is a depthwise convolution with stride
``(s, 1)`` whose per-channel kernel holds those four weights at offsets ``(y1, x1)``
inside one window that covers every channel's taps (padded symmetrically, so that
conv2d's own zero padding supplies the zeros outside the input). oneDNN runs
it in one pass over the input in either memory layout (channels-last stays
channels-last), faster on a CPU than the banded matrix products of the reference
(docs/speed.md).

Gradients: the input gradient is the convolution's own transposed pass (the exact
transpose of the forward); the position sums come from the kernel gradient
``gW[c, j, i] = sum_{n,h,w} g * x_tap``: with ``W = a ⊗ b`` (a: the two row weights,
b: the two column weights), ``sum_y = <gW, a' ⊗ b>`` and ``sum_x = <gW, a ⊗ b'>``, where
a', b' are -1 at the first tap and +1 at the second (the derivative of the weights).

The window spans the channels' integer offsets (clamped to where a tap can see the
input), so its cost grows with the spread of the positions: Shift-GCN's initial
positions give a 3 x 3 window (4 x 3 for stride 2). As in the reference, a non-finite input value reaches
outputs that weight it by zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from module.shift.reference import corners


def _taps(start: torch.Tensor, frac: torch.Tensor, lo: int, size: int, dtype: torch.dtype,
          derivative: bool = False) -> torch.Tensor:
    """(C, size): 1 - frac at column start - lo, frac at the next (derivative: -1 and +1).

    A tap outside the window is left out (the window covers every input position a tap
    can see, so such a tap would read zeros)."""
    c = start.shape[0]
    f = frac.to(dtype)
    first, second = (-torch.ones_like(f), torch.ones_like(f)) if derivative else (1 - f, f)
    out = torch.zeros(c, size + 1, dtype=dtype, device=start.device)  # spare last column: taps outside
    for offset, value in ((0, first), (1, second)):
        col = start - lo + offset
        col = torch.where((col >= 0) & (col < size), col, size)
        out.scatter_(1, col.unsqueeze(1), value.unsqueeze(1))
    return out[:, :size]


def _window(lo: int, hi: int, n_in: int, n_out: int, stride: int) -> int:
    """Symmetric padding P of a window over integer offsets [lo, hi] (taps at offset and offset + 1).

    Output o reads inputs o*stride + lo' + j, j < k, from an input padded by P on both
    sides, with lo' = -P; P is the least value that keeps every tap of every offset inside
    the window and makes the output exactly ``n_out`` long. Offsets are first clamped to
    where a tap can still see the input (further out it reads zeros either way)."""
    lo, hi = max(lo, -n_in - 1), min(hi, n_in)
    return max(-lo, (n_out - 1) * stride + hi + 2 - n_in, 0)


class _Geometry:
    """The kernel window and padding of one call. Host-side integers: the window size is
    the convolution's shape, so it cannot stay on the device."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, height: int, width: int, stride: int, dtype: torch.dtype):
        self.x1, self.y1, self.dx, self.dy = corners(X, Y)
        y_lo, y_hi, x_lo, x_hi = torch.stack([self.y1.min(), self.y1.max(), self.x1.min(), self.x1.max()]).tolist()
        h_out = height // stride
        self.pad_h = _window(y_lo, y_hi, height, h_out, stride)
        self.pad_w = _window(x_lo, x_hi, width, width, 1)
        # window rows -P .. (n_out-1)*s + k - 1 - P must end at the last padded input row
        self.kh = height + 2 * self.pad_h - (h_out - 1) * stride
        self.kw = 2 * self.pad_w + 1
        self.stride, self.dtype = stride, dtype

    def kernel(self, dy_derivative: bool = False, dx_derivative: bool = False) -> torch.Tensor:
        """(C, 1, kh, kw) depthwise kernel a ⊗ b (or a' ⊗ b, a ⊗ b')."""
        a = _taps(self.y1, self.dy, -self.pad_h, self.kh, self.dtype, dy_derivative)  # (C, kh)
        b = _taps(self.x1, self.dx, -self.pad_w, self.kw, self.dtype, dx_derivative)  # (C, kw)
        return (a[:, :, None] * b[:, None, :]).unsqueeze(1)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t if it is one dense block (contiguous or channels-last), else a contiguous copy."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def forward(x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear per-channel shift: (N, C, H, W) -> (N, C, H // stride, W), in x's memory layout."""
    x = _dense(x)
    geo = _Geometry(X, Y, x.shape[2], x.shape[3], stride, x.dtype)
    return F.conv2d(x, geo.kernel(), stride=(stride, 1), padding=(geo.pad_h, geo.pad_w), groups=x.shape[1])


def backward(x: torch.Tensor | None, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int, height: int,
             need_input: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The input gradient and/or the position sums (``reference.backward``'s contract).

    Args:
        x: the forward's input (N, C, height, W), or None when only the input gradient is wanted.
        g: (N, C, height // stride, W) gradient of the output.
    """
    g = _dense(g)
    n, c, _, w = g.shape
    geo = _Geometry(X, Y, height, w, stride, g.dtype)
    fmt = torch.channels_last if g.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    # without x only its shape and layout matter: an unwritten tensor stands in
    inp = _dense(x) if x is not None else torch.empty((n, c, height, w), dtype=g.dtype, device=g.device,
                                                      memory_format=fmt)
    grad_x, gw, _ = torch.ops.aten.convolution_backward(
        g, inp, geo.kernel(), None, [stride, 1], [geo.pad_h, geo.pad_w], [1, 1], False, [0, 0], c,
        [need_input, x is not None, False])
    sum_x = sum_y = None
    if x is not None:
        gw = gw.reshape(c, -1)
        sum_y = (gw * geo.kernel(dy_derivative=True).reshape(c, -1)).sum(1).to(X.dtype)
        sum_x = (gw * geo.kernel(dx_derivative=True).reshape(c, -1)).sum(1).to(X.dtype)
    return (grad_x if need_input else None), sum_x, sum_y
