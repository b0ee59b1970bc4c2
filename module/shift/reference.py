"""Pure-PyTorch reference of the Shift-GCN temporal shift (the spec and the CPU path).

Semantics: ``docs/SHIFT_OP.md`` (measured from the original CUDA kernel). Input ``x`` is
``(N, C, H, W)`` with H = time and W = joints; every channel ``c`` is resampled
bilinearly at the *effective* position ``(X[c], Y[c])`` (the caller adds the +0.5 of a
strided shift to Y), with stride ``s`` along H and zeros outside the input:

    out[n, c, h, w] = sum over the four corners (dy_k, dx_k) of
                      weight_k * x[n, c, h*s + floor(Y) + dy_k, w + floor(X) + dx_k]

Everything is tensor arithmetic on the inputs (no ``.item()``, no Python integers that
depend on values), so the functions trace and run on any device.

The three functions here are the backend interface ``module.shift.op`` expects
(the CUDA extension exposes the same three):

* ``forward(x, X, Y, stride)`` -> ``(N, C, H // stride, W)``
* ``input_grad(g, X, Y, stride, height)`` -> ``(N, C, height, W)``: the exact transpose
* ``position_sums(x, g, X, Y, stride)`` -> ``(sum_x, sum_y)``, each ``(C,)``: the sums over
  n, h, w of ``g * d out / d X`` and ``g * d out / d Y`` (the raw material of both the
  original's constrained position gradient and the exact one).
"""
from __future__ import annotations

import torch

# The four bilinear corners, in the original kernel's order q11, q21, q12, q22:
# (row offset from floor(Y), column offset from floor(X)).
CORNERS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))


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


def corner_weights(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(4, C) bilinear weights of the corners q11, q21, q12, q22."""
    return torch.stack(((1 - dx) * (1 - dy), dx * (1 - dy), (1 - dx) * dy, dx * dy))


def _gather_taps(src: torch.Tensor, row: torch.Tensor, col: torch.Tensor, rows_ok: torch.Tensor,
                 height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``src`` (N, C, height, width) at per-channel rows/cols, zero where invalid.

    Args:
        row: (C, P, 1) source rows; col: (C, 1, Q) source columns.
        rows_ok: (C, P, 1) extra row validity (used by the strided transpose).

    Returns:
        values (N, C, P, Q) (zeros outside) and the validity mask (C, P, Q).
    """
    n, c = src.shape[:2]
    ok = rows_ok & (row >= 0) & (row < height) & (col >= 0) & (col < width)  # (C, P, Q)
    flat = row.clamp(0, height - 1) * width + col.clamp(0, width - 1)       # (C, P, Q)
    p, q = ok.shape[1], ok.shape[2]
    vals = src.reshape(n, c, height * width).gather(2, flat.reshape(1, c, p * q).expand(n, c, p * q))
    return vals.view(n, c, p, q), ok


def forward(x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear per-channel shift: (N, C, H, W) -> (N, C, H // stride, W)."""
    _, _, h, w = x.shape
    h_out = h // stride
    x1, y1, dx, dy = corners(X, Y)
    wts = corner_weights(dx, dy)  # (4, C)
    rows = torch.arange(h_out, device=x.device) * stride  # (H_out,)
    cols = torch.arange(w, device=x.device)               # (W,)
    always = torch.ones((), dtype=torch.bool, device=x.device)
    out = None
    for k, (oy, ox) in enumerate(CORNERS):
        r = (rows[None, :] + (y1 + oy)[:, None]).unsqueeze(2)  # (C, H_out, 1)
        c = (cols[None, :] + (x1 + ox)[:, None]).unsqueeze(1)  # (C, 1, W)
        q, ok = _gather_taps(x, r, c, always, h, w)
        term = q * (wts[k][:, None, None] * ok)                # (N, C, H_out, W)
        out = term if out is None else out + term
    return out.to(x.dtype)


def input_grad(g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int, height: int) -> torch.Tensor:
    """Exact transpose of ``forward`` w.r.t. x: (N, C, H_out, W) -> (N, C, height, W).

    Input row i received output row h through corner k iff i = h*stride + y1 + oy_k, so
    grad[i, j] = sum_k weight_k * g[(i - y1 - oy_k) / stride, j - x1 - ox_k] wherever that
    row is a non-negative multiple of the stride below H_out * stride (for stride 1:
    bilinear sampling of g at (-X, -Y), as in the original kernel).
    """
    _, _, h_out, w = g.shape
    x1, y1, dx, dy = corners(X, Y)
    wts = corner_weights(dx, dy)
    rows = torch.arange(height, device=g.device)
    cols = torch.arange(w, device=g.device)
    out = None
    for k, (oy, ox) in enumerate(CORNERS):
        src = (rows[None, :] - (y1 + oy)[:, None]).unsqueeze(2)        # (C, height, 1) rows of g * stride
        on_grid = (src >= 0) & (src.remainder(stride) == 0)
        r = torch.div(src, stride, rounding_mode="floor")
        c = (cols[None, :] - (x1 + ox)[:, None]).unsqueeze(1)          # (C, 1, W)
        q, ok = _gather_taps(g, r, c, on_grid, h_out, w)
        term = q * (wts[k][:, None, None] * ok)
        out = term if out is None else out + term
    return out.to(g.dtype)


def position_sums(x: torch.Tensor, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor,
                  stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over (n, h, w) of g * d out/d X and g * d out/d Y, each (C,) in X's dtype.

    With q the four corners read from x: d out/d X = (1-dy)(q21-q11) + dy(q22-q12) and
    d out/d Y = (1-dx)(q12-q11) + dx(q22-q21) (the original kernel's val_x, val_y).
    """
    _, _, h, w = x.shape
    h_out = h // stride
    x1, y1, dx, dy = corners(X, Y)
    rows = torch.arange(h_out, device=x.device) * stride
    cols = torch.arange(w, device=x.device)
    always = torch.ones((), dtype=torch.bool, device=x.device)
    dt = X.dtype
    s = []  # per corner: sum over n, h, w of g * q_k, shape (C,)
    for oy, ox in CORNERS:
        r = (rows[None, :] + (y1 + oy)[:, None]).unsqueeze(2)
        c = (cols[None, :] + (x1 + ox)[:, None]).unsqueeze(1)
        q, ok = _gather_taps(x, r, c, always, h, w)
        s.append((q.to(dt) * ok * g.to(dt)).sum(dim=(0, 2, 3)))
    s11, s21, s12, s22 = s
    sum_x = (1 - dy) * (s21 - s11) + dy * (s22 - s12)
    sum_y = (1 - dx) * (s12 - s11) + dx * (s22 - s21)
    return sum_x, sum_y
