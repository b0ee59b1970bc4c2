"""Fast formulations of small building blocks, each equal in distribution or value to a
straightforward PyTorch formulation (parity tests: ``tests/unit/test_fastops.py``).

* ``FastDropout``: inverted dropout whose mask comes from 16-bit lanes of 64-bit random
  words (one generator call per four elements) and is kept as a ``bool`` tensor. Same
  semantics as ``nn.Dropout`` (an element is zeroed with probability ``p``, the rest are
  scaled by ``1 / (1 - p)``, identity in eval mode); a different random stream, so a
  seeded run does not reproduce ``nn.Dropout``'s masks. On the CPU ``F.dropout`` spends
  most of its time in the random generator (docs/speed.md).
* ``JointChannelBatchNorm``: ``BatchNorm1d(V·C)`` over ``(N·T, V·C)`` rows, computed on a
  channels-last 4-D view of the same memory, which uses PyTorch's vectorised
  channels-last kernels. Same parameters, buffers, running statistics and eval mode;
  it *is* a ``BatchNorm1d``, so checkpoints are interchangeable.
* ``SubsampledPointwiseConv``: a strided 1x1 ``nn.Conv2d`` computed as the stride-1
  convolution of the subsampled input (the same sums). Needed, not just faster: in
  PyTorch 2.13 the backward of a *strided* 1x1 convolution on channels-last input
  corrupts the heap for some small shapes (e.g. input (3, 8, 8, 25), 16 output
  channels, stride (2, 1) -> "double free or corruption"), while stride 1 is fine.
* ``bn_relu_conv``: ``conv(relu(bn(y)))`` in training mode that keeps only ``y`` for the
  backward and recomputes the normalised, rectified tensor there (two cheap elementwise
  passes): ST-GCN otherwise holds both the BatchNorm input and the convolution input
  of every block (about 17% of its activation memory). ``pointwise_conv_bn``: the same
  for a residual branch ``bn(conv1x1(x))``, recomputing the convolution from ``x``
  (which the next layers hold anyway).
* ``channels_last``: the activation layout the fast backbones use. oneDNN convolutions
  run channels-last without reordering, and every elementwise op then sees operands of
  one layout (mixing layouts sends PyTorch to its slow strided loops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # a 16-bit lane takes this many equally likely values
_BYTE_COPIES = 0x0101010101010101             # b * this: b in every byte of an int64
_BIT_PER_BYTE = 0x8040201008040201 - (1 << 64)  # bit j of byte j (as a signed int64)

# The backbones' ``formulation`` config key: the fast one (default) or the straightforward
# one it is tested and benchmarked against. Both have the same parameters.
FORMULATIONS = ("fast", "plain")


def check_formulation(formulation: str) -> str:
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r}; choose one of {FORMULATIONS}")
    return formulation


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in channels-last memory (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if its memory is one dense block in some dimension order, else a contiguous copy."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _subsample(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``x[:, :, ::sh, ::sw]`` as a dense tensor in ``x``'s own layout (a strided slice of a
    channels-last tensor is neither layout, and a convolution of it returns contiguous
    format, which sends the next BatchNorm's backward to a ~20x slower mixed-layout path)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return x
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    return x[:, :, ::sh, ::sw].contiguous(memory_format=fmt)


def pool_persons(x: torch.Tensor, n: int, m: int, fast: bool) -> torch.Tensor:
    """``(N·M, D, T, V)`` features -> ``(N, D)``: global average over T and V, then over persons.

    ``fast``: pool through the channels-last view, so the gradient reaching the last layer is
    laid out like its output (``x.mean(dim=(2, 3))`` would hand back an NCHW gradient)."""
    if fast:
        x = x.permute(0, 2, 3, 1).reshape(n * m, -1, x.shape[1]).mean(dim=1)  # (N·M, D)
    else:
        x = x.mean(dim=(2, 3))  # (N·M, D)
    return x.view(n, m, -1).mean(dim=1)


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bool tensor shaped and laid out like ``x`` (dense): True with probability ``1 - p``.

    ``p = 0.5`` (the papers' value) takes one random bit per element, 64 per generator word.
    Other multiples of 2^-16 (0.25, ...) compare one uniform 16-bit lane per element, four
    lanes per 64-bit random word; either way the probability is exact. Any other ``p``
    compares a ``torch.rand`` float (24-bit resolution, like PyTorch's own).
    """
    x = _dense(x)
    if p == 0.5:  # one random bit per element, 64 per generator word
        n = x.numel()
        nbytes = (n + 7) // 8
        words = torch.empty((nbytes + 7) // 8, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        # each random byte copied into the 8 bytes of an int64, byte j keeping only bit j
        spread = words.view(torch.uint8)[:nbytes].to(torch.int64).mul_(_BYTE_COPIES).bitwise_and_(_BIT_PER_BYTE)
        return (spread.view(torch.uint8)[:n] != 0).as_strided(x.shape, x.stride())
    level = p * _LANES
    if level == int(level):
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        lanes = words.view(torch.int16)[:n]  # uniform on [-32768, 32767]
        # lane >= thr has probability (32768 - thr) / 65536 = 1 - p
        return lanes.as_strided(x.shape, x.stride()) >= int(level) - _LANES // 2
    return torch.rand_like(x) >= p


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        x = _dense(x)
        keep = keep_mask(x, p)
        ctx.save_for_backward(keep)  # 1 byte per element
        ctx.scale = 1.0 / (1.0 - p)
        return torch.mul(x, keep.view(torch.uint8)).mul_(ctx.scale)  # x uint8: faster than x bool

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(g, keep.view(torch.uint8)).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with ``nn.Dropout``'s semantics (see the module docstring).

    CPU tensors use the cheap mask; other devices use ``F.dropout`` (already a fused
    kernel there), so the distribution is the same everywhere.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (no parameters, same ``p`` attribute) with a cheap CPU mask."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SubsampledPointwiseConv(nn.Conv2d):
    """``nn.Conv2d(in, out, 1, stride)`` (same parameters) run as a stride-1 convolution of
    ``x[:, :, ::sh, ::sw]`` (module docstring: avoids a heap corruption in PyTorch's
    channels-last strided 1x1 backward)."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int] = (1, 1), bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(_subsample(x, self.stride), self.weight, self.bias)


def _bn_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics factor of one training step, counting the step as ``_BatchNorm.forward`` does."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative moving average
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


class _BNReLUConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, bn_w, bn_b, conv_w, conv_b, running_mean, running_var, factor, eps, stride, padding):
        r, mean, invstd = torch.ops.aten.native_batch_norm(y, bn_w, bn_b, running_mean, running_var, True, factor, eps)
        r = r.relu_()
        out = F.conv2d(r, conv_w, conv_b, stride, padding)
        ctx.save_for_backward(y, bn_w, bn_b, conv_w, running_mean, running_var, mean, invstd)
        ctx.eps, ctx.stride, ctx.padding = eps, stride, padding
        ctx.has_conv_bias = conv_b is not None
        return out

    @staticmethod
    def backward(ctx, g):
        y, bn_w, bn_b, conv_w, running_mean, running_var, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        # the forward's rectified BatchNorm output, again: relu(y * alpha + beta)
        alpha = invstd * bn_w
        beta = bn_b - mean * alpha
        r = torch.addcmul(beta[None, :, None, None], y, alpha[None, :, None, None]).relu_()
        bias_sizes = [conv_w.shape[0]] if ctx.has_conv_bias else None
        gr, gcw, gcb = torch.ops.aten.convolution_backward(
            g, r, conv_w, bias_sizes, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
            [need[0] or need[1] or need[2], need[3], need[4] and ctx.has_conv_bias])
        gy = gbw = gbb = None
        if need[0] or need[1] or need[2]:
            gr = torch.ops.aten.threshold_backward(gr, r, 0)
            gy, gbw, gbb = torch.ops.aten.native_batch_norm_backward(
                gr, y, bn_w, running_mean, running_var, mean, invstd, True, ctx.eps, [need[0], need[1], need[2]])
        return gy, gbw, gbb, gcw, gcb, None, None, None, None, None, None


def bn_relu_conv(y: torch.Tensor, bn: nn.BatchNorm2d, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(relu(bn(y)))`` with ``bn`` in training mode, keeping only ``y`` for the backward.

    The same arithmetic as the three modules (BatchNorm's batch statistics, its running
    statistics and step count, ReLU, the convolution); the backward recomputes
    ``relu(bn(y))`` from ``y`` and the batch statistics instead of keeping it."""
    if not (bn.training and bn.track_running_stats and bn.affine and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and isinstance(conv.padding, tuple)):
        raise ValueError("bn_relu_conv covers a training-mode, affine, tracking BatchNorm and a plain convolution")
    factor = _bn_factor(bn)
    return _BNReLUConv.apply(y, bn.weight, bn.bias, conv.weight, conv.bias, bn.running_mean, bn.running_var,
                             factor, bn.eps, conv.stride, conv.padding)


class _PointwiseConvBN(torch.autograd.Function):
    @staticmethod
    def _conv(x, conv_w, conv_b, stride):
        return F.conv2d(_subsample(x, stride), conv_w, conv_b)

    @staticmethod
    def forward(ctx, x, conv_w, conv_b, bn_w, bn_b, running_mean, running_var, factor, eps, stride):
        c = _PointwiseConvBN._conv(x, conv_w, conv_b, stride)
        out, mean, invstd = torch.ops.aten.native_batch_norm(c, bn_w, bn_b, running_mean, running_var, True, factor, eps)
        ctx.save_for_backward(x, conv_w, conv_b, bn_w, running_mean, running_var, mean, invstd)
        ctx.eps, ctx.stride = eps, stride
        return out

    @staticmethod
    def backward(ctx, g):
        x, conv_w, conv_b, bn_w, running_mean, running_var, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        sh, sw = ctx.stride
        xs = _dense(_subsample(x, (sh, sw)))
        c = F.conv2d(xs, conv_w, conv_b)  # the forward's convolution, again
        gc, gbw, gbb = torch.ops.aten.native_batch_norm_backward(
            g, c, bn_w, running_mean, running_var, mean, invstd, True, ctx.eps, [True, need[3], need[4]])
        del c
        bias_sizes = [conv_w.shape[0]] if conv_b is not None else None
        gxs, gcw, gcb = torch.ops.aten.convolution_backward(
            gc, xs, conv_w, bias_sizes, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [need[0], need[1], need[2] and conv_b is not None])
        gx = None
        if need[0]:
            if (sh, sw) != (1, 1):  # the subsampled rows get the gradient, the others zero
                gx = torch.zeros_like(x)
                gx[:, :, ::sh, ::sw] = gxs
            else:
                gx = gxs
        return gx, gcw, gcb, gbw, gbb, None, None, None, None, None


def pointwise_conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))`` for a 1x1 ``conv`` (any stride) and ``bn`` in training mode, keeping
    only ``x`` for the backward (the convolution is recomputed there); same arithmetic
    as the two modules, running statistics included."""
    if not (bn.training and bn.track_running_stats and bn.affine and tuple(conv.kernel_size) == (1, 1)
            and conv.groups == 1 and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)):
        raise ValueError("pointwise_conv_bn covers a 1x1 convolution and a training-mode, affine, tracking BatchNorm")
    factor = _bn_factor(bn)
    return _PointwiseConvBN.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                  factor, bn.eps, tuple(conv.stride))


class _BNDropoutAddReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, bn_w, bn_b, res, keep, running_mean, running_var, factor, eps, scale):
        # dropout's 1 / (1 - p) folded into BatchNorm's affine: bn(y) * scale in one pass
        w, b = bn_w * scale, bn_b * scale
        z, mean, invstd = torch.ops.aten.native_batch_norm(y, w, b, running_mean, running_var, True, factor, eps)
        out = torch.addcmul(res, z, keep.view(torch.uint8)).relu_()
        ctx.save_for_backward(y, w, running_mean, running_var, mean, invstd, keep, out)
        ctx.eps, ctx.scale = eps, scale
        return out

    @staticmethod
    def backward(ctx, g):
        y, w, running_mean, running_var, mean, invstd, keep, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = torch.ops.aten.threshold_backward(g, out, 0)
        gy = gw = gb = None
        if need[0] or need[1] or need[2]:
            gz = torch.mul(g, keep.view(torch.uint8))
            gy, gw, gb = torch.ops.aten.native_batch_norm_backward(
                gz, y, w, running_mean, running_var, mean, invstd, True, ctx.eps, [need[0], need[1], need[2]])
            gw = None if gw is None else gw * ctx.scale
            gb = None if gb is None else gb * ctx.scale
        return gy, gw, gb, (g if need[3] else None), None, None, None, None, None, None


def bn_dropout_add_relu(y: torch.Tensor, bn: nn.BatchNorm2d, p: float, res: torch.Tensor,
                        keep: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(dropout(bn(y)) + res)`` with ``bn`` in training mode and ``0 < p < 1``: the end of
    an ST-GCN block in four passes over the activations instead of seven (the dropout scale
    rides on BatchNorm's affine, mask and residual are applied by one ``addcmul``).

    Same arithmetic as the modules (batch and running statistics, step count, inverted
    dropout); ``keep`` (a bool tensor laid out like ``y``; default: a fresh ``keep_mask``)
    is the dropout mask, kept (1 byte per element) for the backward with the output."""
    if not (bn.training and bn.track_running_stats and bn.affine and 0.0 < p < 1.0):
        raise ValueError("bn_dropout_add_relu covers a training-mode, affine, tracking BatchNorm and 0 < p < 1")
    y = _dense(y)
    if keep is None:
        keep = keep_mask(y, p)
    elif keep.dtype != torch.bool or keep.shape != y.shape or keep.stride() != y.stride():
        raise ValueError("keep must be a bool tensor with the shape and layout of y")
    factor = _bn_factor(bn)
    return _BNDropoutAddReLU.apply(y, bn.weight, bn.bias, res, keep, bn.running_mean, bn.running_var,
                                   factor, bn.eps, 1.0 / (1.0 - p))


class JointChannelBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d(num_features)`` on ``(R, F)`` rows, run as ``BatchNorm2d`` on the
    ``(1, F, R, 1)`` channels-last view of the same memory (per-feature statistics over
    the R rows either way, so running statistics and eval mode are unchanged)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected (rows, features) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"JointChannelBatchNorm expects (rows, features), got shape {tuple(x.shape)}")
        r, f = x.shape
        view = x.contiguous().view(1, r, 1, f).permute(0, 3, 1, 2)  # (1, F, R, 1), channels-last
        return super().forward(view).permute(0, 2, 3, 1).reshape(r, f)
