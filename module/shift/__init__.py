"""Shift-GCN's learnable temporal shift: a CUDA extension and its pure-PyTorch reference.

``temporal_shift`` / ``TemporalShift`` pick the implementation with
``impl="auto"|"cuda"|"dwconv"|"ref"`` (``module/shift/op.py``): ``module/shift/reference.py`` is
the spec (semantics: ``docs/shift_op.md``), ``module/shift/dwconv.py`` the same op as one
depthwise convolution (the CPU path of ``auto``), ``csrc/`` the CUDA source built just in time
by ``module/shift/build.py``.
"""
from module.shift.op import IMPLS, POS_GRADS, TemporalShift, constrain, temporal_shift

__all__ = ["IMPLS", "POS_GRADS", "TemporalShift", "constrain", "temporal_shift"]
