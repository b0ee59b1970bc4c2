"""Pure-PyTorch reference of the Shift-GCN temporal shift (the spec; ``dwconv.py`` is the fast CPU path).

Semantics: ``docs/shift_op.md`` (those of the original CUDA kernel). Input ``x`` is
``(N, C, H, W)`` with H = time and W = joints; every channel ``c`` is resampled
bilinearly at its *effective* position ``(X[c], Y[c])`` (the caller adds the +0.5 of a
strided shift to Y), with stride ``s`` along H and zeros outside the input:

    out[n, c, h, w] = q11 (1-dx)(1-dy) + q21 dx (1-dy) + q12 (1-dx) dy + q22 dx dy,
    q_ab = x[n, c, h*s + y1 + (b-1), w + x1 + (a-1)]   (0 outside [0, H) x [0, W)),
    x1, y1 = floor(X), floor(Y) (taken in float32), dx, dy = X - x1, Y - y1.

Bilinear sampling separates into the two axes, so per channel the op is a product of
two small matrices with the input plane:

    out[n, c] = A_c @ x[n, c] @ B_c^T,
    A_c (H_out, H): row h holds 1-dy at column h*s + y1 and dy at column h*s + y1 + 1,
    B_c (W, W):     row w holds 1-dx at column w + x1 and dx at column w + x1 + 1,

where a tap outside the input simply has no column (it reads zero). The input gradient
is then exactly ``A_c^T @ g @ B_c``. Batched matrix products compute this faster on a CPU
than gathering the four taps element by element (docs/speed.md), although most matrix
entries are zero. The one observable difference from the
kernel: a non-finite input value also reaches outputs that weight it by zero
(0 * inf = nan), where the original kernel never reads it.

Everything is tensor arithmetic on the inputs (no ``.item()``, no Python numbers that
depend on values), so the functions trace/export and run on any device.

Functions (the CUDA extension exposes the first three with the same signatures):

* ``forward(x, X, Y, stride)`` -> ``(N, C, H // stride, W)``
* ``input_grad(g, X, Y, stride, height)`` -> ``(N, C, height, W)``, the exact transpose
* ``position_sums(x, g, X, Y, stride)`` -> ``(sum_x, sum_y)``, each ``(C,)``: the sums over
  n, h, w of ``g * d out / d X`` and ``g * d out / d Y``, the raw material of both the
  original's constrained position gradient and the exact one;
* ``backward(x, g, X, Y, stride, height, need_input)``: both of the last two at once,
  sharing their common product (what ``module.shift.op`` calls).
"""
from __future__ import annotations

import torch


def corners(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer corner and fractional part of the per-channel positions.

    The floor is taken in float32, as the original kernel's ``floorf`` does even for
    double inputs; the fraction is then computed in the positions' own dtype.

    Returns:
        ``x1, y1`` (C,) int64 and ``dx, dy`` (C,) in the dtype of X / Y.
    """
    x1 = torch.floor(X.float()).to(torch.int64)
    y1 = torch.floor(Y.float()).to(torch.int64)
    return x1, y1, X - x1.to(X.dtype), Y - y1.to(Y.dtype)


def _scatter_rows(start: torch.Tensor, value: torch.Tensor, n_out: int, n_in: int, step: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Add ``value[c]`` at column o*step + start[c] of every row o, in (C, n_out, n_in).

    Columns outside [0, n_in) go to a spare last column that is cut off (the tap reads zero).
    """
    c = start.shape[0]
    col = torch.arange(n_out, device=start.device)[None, :] * step + start[:, None]  # (C, n_out)
    col = torch.where((col >= 0) & (col < n_in), col, n_in)
    if out is None:
        out = torch.zeros(c, n_out, n_in + 1, dtype=value.dtype, device=start.device)
    out.scatter_add_(2, col.unsqueeze(2), value[:, None, None].expand(c, n_out, 1))
    return out


def _interp(start: torch.Tensor, frac: torch.Tensor, n_out: int, n_in: int, step: int, dtype: torch.dtype,
            derivative: bool = False) -> torch.Tensor:
    """(C, n_out, n_in) linear-interpolation matrices: (1 - frac) at the start column, frac at the next.

    With ``derivative``: their derivative w.r.t. frac, -1 at the start column and +1 at the next.
    """
    f = frac.to(dtype)
    lo, hi = (-torch.ones_like(f), torch.ones_like(f)) if derivative else (1 - f, f)
    m = _scatter_rows(start, lo, n_out, n_in, step)
    return _scatter_rows(start + 1, hi, n_out, n_in, step, out=m)[:, :, :n_in]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (C, H, N*W): each channel's planes side by side, so one bmm per channel."""
    n, c, h, w = t.shape
    return t.permute(1, 2, 0, 3).reshape(c, h, n * w)


def _unrows(t: torch.Tensor, n: int) -> torch.Tensor:
    """(C, H, N*W) -> (N, C, H, W)."""
    c, h, nw = t.shape
    return t.view(c, h, n, nw // n).permute(2, 0, 1, 3).contiguous()


def forward(x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear per-channel shift: (N, C, H, W) -> (N, C, H // stride, W)."""
    n, c, h, w = x.shape
    h_out = h // stride
    x1, y1, dx, dy = corners(X, Y)
    A = _interp(y1, dy, h_out, h, stride, x.dtype)  # (C, H_out, H)
    B = _interp(x1, dx, w, w, 1, x.dtype)           # (C, W, W)
    t = torch.bmm(A, _rows(x))                      # (C, H_out, N*W): along time
    t = torch.bmm(t.view(c, h_out * n, w), B.transpose(1, 2))  # (C, H_out*N, W): along joints
    return _unrows(t.view(c, h_out, n * w), n)


def input_grad(g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int, height: int) -> torch.Tensor:
    """Exact transpose of ``forward`` w.r.t. x: A^T (g B), (N, C, H_out, W) -> (N, C, height, W)."""
    return backward(None, g, X, Y, stride, height)[0]


def position_sums(x: torch.Tensor, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor,
                  stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over (n, h, w) of g * d out/d X and g * d out/d Y, each (C,) in X's dtype."""
    _, sum_x, sum_y = backward(x, g, X, Y, stride, x.shape[2], need_input=False)
    return sum_x, sum_y


def backward(x: torch.Tensor | None, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int, height: int,
             need_input: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The input gradient and/or the position sums, sharing g B between them.

    Input gradient: A^T (g B). Position sums: out = A x B^T is linear in dy through A and in
    dx through B, so with A' = dA/d dy and B' = dB/d dx (-1 at the first tap, +1 at the second)
        sum_y = sum_n <g, A' x B^T> = sum_n <g B, A' x>,   sum_x = sum_n <g B', A x>,
    which expand to the original kernel's per-element terms
    val_y = (1-dx)(q12-q11) + dx(q22-q21) and val_x = (1-dy)(q21-q11) + dy(q22-q12).

    Args:
        x: the forward's input (N, C, height, W), or None when only the input gradient is wanted.
        g: (N, C, H_out, W) gradient of the output.

    Returns:
        ``(grad_x or None, sum_x or None, sum_y or None)``.
    """
    n, c, h_out, w = g.shape
    x1, y1, dx, dy = corners(X, Y)
    dt = g.dtype
    gr = _rows(g).view(c, h_out * n, w)
    gb = torch.bmm(gr, _interp(x1, dx, w, w, 1, dt))                   # g B: (C, H_out*N, W)
    grad_x = sum_x = sum_y = None
    if need_input:
        a_t = _interp(y1, dy, h_out, height, stride, dt).transpose(1, 2)  # A^T: (C, height, H_out)
        grad_x = _unrows(torch.bmm(a_t, gb.view(c, h_out, n * w)), n)
    if x is not None:
        A2 = torch.cat([_interp(y1, dy, h_out, height, stride, dt),
                        _interp(y1, dy, h_out, height, stride, dt, derivative=True)], 1)
        ax = torch.bmm(A2, _rows(x)).view(c, 2, h_out * n * w)      # A x and A' x
        gdb = torch.bmm(gr, _interp(x1, dx, w, w, 1, dt, derivative=True))  # g B'
        # per-channel dot products as (1 x L) @ (L x 1) products
        sum_x = torch.bmm(gdb.view(c, 1, -1), ax[:, 0].unsqueeze(2)).view(c).to(X.dtype)
        sum_y = torch.bmm(gb.view(c, 1, -1), ax[:, 1].unsqueeze(2)).view(c).to(X.dtype)
    return grad_x, sum_x, sum_y
