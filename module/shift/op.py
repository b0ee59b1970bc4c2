"""The temporal-shift op: one autograd Function over two interchangeable backends.

``temporal_shift(x, xpos, ypos, stride, impl=..., pos_grad=...)``

* ``impl="ref"``: the pure-PyTorch reference (``module/shift/reference.py``), any device.
* ``impl="dwconv"``: the same op as one depthwise convolution (``module/shift/dwconv.py``),
  any device; faster than the reference on a CPU (docs/speed.md) and keeps channels-last
  inputs channels-last.
* ``impl="cuda"``: the CUDA extension (``module/shift/csrc``), built just in time on first
  use. CPU tensors or a failed build raise an error naming the cause (with the
  compiler's output); there is no fallback.
* ``impl="auto"``: CUDA tensors use the extension, everything else ``dwconv``. If
  the extension cannot be built, ``auto`` warns once (with the compiler's message) and
  uses ``dwconv``; ask for ``impl="cuda"`` to make that an error.

Position gradients (``pos_grad``):

* ``"constrained"`` (default) reproduces the original kernel: raw = the batch *mean*
  of the position derivative, then ``grad_y = 0.01 * raw_y / sqrt(raw_y^2)`` and
  ``grad_x = raw_x / sqrt(raw_y^2) * 0`` (a signed zero) where ``raw_y^2 != 0``, else
  ``grad_y = 1e-4`` and ``grad_x = 0``. So xpos only moves by weight decay and ypos takes
  fixed-size sign steps. This is not a derivative of anything.
* ``"exact"``: the true derivative of the output (summed over the batch), for
  experiments and ``gradcheck``.

The input gradient is the exact transpose of the forward under both settings.
"""
from __future__ import annotations

import threading
import warnings
from types import ModuleType
from typing import Protocol

import torch
from torch.autograd.function import once_differentiable

from module.shift import dwconv, reference

IMPLS = ("auto", "cuda", "dwconv", "ref")
POS_GRADS = ("constrained", "exact")


class ShiftBackend(Protocol):
    """What an implementation provides (``module/shift/reference.py`` documents the semantics)."""

    def forward(self, x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int) -> torch.Tensor: ...

    def backward(self, x: torch.Tensor | None, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int,
                 height: int, need_input: bool = True) -> tuple[torch.Tensor | None, ...]: ...


class CudaBackend:
    """The compiled extension behind the backend interface."""

    def __init__(self, ext: ModuleType):
        self.ext = ext

    def forward(self, x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int) -> torch.Tensor:
        return self.ext.forward(x.contiguous(), X, Y, stride)

    def backward(self, x: torch.Tensor | None, g: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int,
                 height: int, need_input: bool = True) -> tuple[torch.Tensor | None, ...]:
        # the kernels index NCHW-contiguous memory
        x = x.contiguous() if x is not None else None
        g = g.contiguous()
        grad_x = self.ext.input_grad(g, X, Y, stride, height) if need_input else None
        sum_x, sum_y = self.ext.position_sums(x, g, X, Y, stride) if x is not None else (None, None)
        return grad_x, sum_x, sum_y


def constrain(raw_x: torch.Tensor, raw_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original kernel's ``applyShiftConstraint`` on batch-mean position gradients (C,).

    Written as the kernel computes it (``dr = sqrt(dy*dy)``), so the edge cases match too:
    a raw_y whose square underflows counts as zero, NaN stays NaN.
    """
    dr = torch.sqrt(raw_y * raw_y)
    nonzero = dr != 0
    grad_x = torch.where(nonzero, raw_x / dr * 0.0, torch.zeros_like(raw_x))
    grad_y = torch.where(nonzero, raw_y / dr * 0.01, torch.full_like(raw_y, 1e-4))
    return grad_x, grad_y


def effective_positions(xpos: torch.Tensor, ypos: torch.Tensor, stride: int,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y) the kernel samples at: a strided shift samples half a step later along H.

    The +0.5 exists only here; gradients flow to ``ypos`` itself."""
    X, Y = xpos.to(dtype), ypos.to(dtype)
    return X, (Y + 0.5 if stride != 1 else Y)


def position_dtype(x: torch.Tensor) -> torch.dtype:
    """Positions and weights are computed in float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _TemporalShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, stride: int, pos_grad: str,
                backend: ShiftBackend) -> torch.Tensor:
        # any memory layout: each backend takes what it needs (channels-last stays so with dwconv)
        ctx.save_for_backward(x, X, Y)
        ctx.stride, ctx.pos_grad, ctx.backend = stride, pos_grad, backend
        return backend.forward(x, X, Y, stride)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, X, Y = ctx.saved_tensors
        need_x, need_X, need_Y = ctx.needs_input_grad[:3]
        need_pos = need_X or need_Y
        grad_x, sum_x, sum_y = ctx.backend.backward(x if need_pos else None, g, X, Y, ctx.stride, x.shape[2],
                                                    need_input=need_x)
        grad_X = grad_Y = None
        if need_pos:
            if ctx.pos_grad == "exact":
                grad_X, grad_Y = sum_x, sum_y
            else:  # the original: batch mean, then the sign-step constraint
                grad_X, grad_Y = constrain(sum_x / x.shape[0], sum_y / x.shape[0])
        return grad_x, grad_X, grad_Y, None, None, None


# ----------------------------------------------------------------------------- backends

_warned_auto = False
_warn_lock = threading.Lock()


def _cuda_backend() -> CudaBackend:
    from module.shift.build import load_extension  # deferred: importing it never compiles

    return CudaBackend(load_extension())


def resolve_backend(x: torch.Tensor, impl: str) -> ShiftBackend:
    """The backend that runs ``x`` under ``impl`` (see the module docstring)."""
    global _warned_auto
    if impl == "ref":
        return reference
    if impl == "dwconv":
        return dwconv
    if impl == "cuda":
        if not x.is_cuda:
            raise ValueError(f"temporal shift impl='cuda' needs a CUDA tensor, got one on {x.device}; "
                             "use impl='auto' (dwconv on the CPU), impl='dwconv' or impl='ref'")
        return _cuda_backend()
    if impl == "auto":
        if not x.is_cuda:
            return dwconv
        from module.shift.build import ShiftBuildError

        try:
            return _cuda_backend()
        except ShiftBuildError as exc:
            with _warn_lock:
                if not _warned_auto:
                    _warned_auto = True
                    warnings.warn(f"temporal shift impl='auto': the CUDA extension is unavailable, using the "
                                  f"depthwise-convolution formulation (slower, same results). Set impl='cuda' to "
                                  f"make this an error, impl='dwconv' to silence it. Cause: {exc}", RuntimeWarning,
                                  stacklevel=3)
            return dwconv
    raise ValueError(f"unknown temporal shift impl {impl!r}; choose one of {IMPLS}")


def temporal_shift(x: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor, stride: int = 1, *,
                   impl: str = "auto", pos_grad: str = "constrained") -> torch.Tensor:
    """Shift-GCN's learnable temporal shift.

    Args:
        x: (N, C, H, W) features, H = time, W = joints.
        xpos, ypos: (C,) learnable positions along W and H.
        stride: temporal stride (output height H // stride; a strided shift samples at ypos + 0.5).
        impl: "auto" | "cuda" | "dwconv" | "ref" (see the module docstring).
        pos_grad: "constrained" (the original's sign steps) | "exact" (the true derivative).

    Returns:
        (N, C, H // stride, W).
    """
    if x.dim() != 4:
        raise ValueError(f"temporal shift expects (N, C, H, W) input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if xpos.shape != (c,) or ypos.shape != (c,):
        raise ValueError(f"temporal shift positions must have shape ({c},) for {c} channels, "
                         f"got xpos {tuple(xpos.shape)} and ypos {tuple(ypos.shape)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"temporal shift stride must be a positive int, got {stride!r}")
    if x.shape[2] < stride:
        raise ValueError(f"temporal shift with stride {stride} needs at least {stride} frames, got {x.shape[2]}")
    if pos_grad not in POS_GRADS:
        raise ValueError(f"unknown pos_grad {pos_grad!r}; choose one of {POS_GRADS}")
    backend = resolve_backend(x, impl)
    X, Y = effective_positions(xpos, ypos, stride, position_dtype(x))
    return _TemporalShift.apply(x, X, Y, stride, pos_grad, backend)


class TemporalShift(torch.nn.Module):
    """The learnable temporal shift of Shift-GCN's temporal blocks.

    ``xpos`` starts in U(-1e-8, 1e-8) and ``ypos`` in U(-init_scale, init_scale), as in
    the original. Both are ordinary parameters created on the default device.
    """

    def __init__(self, channels: int, stride: int = 1, init_scale: float = 1.0, impl: str = "auto",
                 pos_grad: str = "constrained"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown temporal shift impl {impl!r}; choose one of {IMPLS}")
        if pos_grad not in POS_GRADS:
            raise ValueError(f"unknown pos_grad {pos_grad!r}; choose one of {POS_GRADS}")
        self.stride, self.impl, self.pos_grad = stride, impl, pos_grad
        self.xpos = torch.nn.Parameter(torch.empty(channels).uniform_(-1e-8, 1e-8))
        self.ypos = torch.nn.Parameter(torch.empty(channels).uniform_(-init_scale, init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.xpos, self.ypos, self.stride, impl=self.impl, pos_grad=self.pos_grad)

    def extra_repr(self) -> str:
        return f"channels={self.xpos.numel()}, stride={self.stride}, impl={self.impl!r}, pos_grad={self.pos_grad!r}"
