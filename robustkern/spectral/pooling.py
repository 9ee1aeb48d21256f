"""Bounds of 2-D pooling layers, modules or functional calls: max pooling sqrt(the most windows
one input falls in), average pooling the Schur bound."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustkern.spectral.nodes import _Unbounded
from robustkern.spectral.norms import _pair
from robustkern.spectral.rows import LayerBound

# the functional pools and their arguments after the input, in order
_POOLS = {
    "max_pool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                  "return_indices")),
    "avg_pool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                  "count_include_pad", "divisor_override")),
    "adaptive_avg_pool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "adaptive_max_pool2d": (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
}  # fmt: skip
_POOL_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _pool_module(node: fx.Node, name: str) -> nn.Module:
    """The module twin of a functional pool call (F.max_pool2d(x, 2) -> nn.MaxPool2d(2))."""
    cls, names = _POOLS[name]
    kwargs = dict(zip(names, node.args[1:], strict=False))
    kwargs |= {k: v for k, v in node.kwargs.items() if k in names}
    return cls(**kwargs)


def _pool_gain(m: nn.Module, shape: tuple, row: LayerBound) -> float:
    if getattr(m, "return_indices", False):
        raise _Unbounded("pooling that returns indices (integers, not a continuous map)")
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        row.note = "sqrt(max windows per input)"
        return _maxpool_bound(m, shape)
    row.note = "Schur bound, exact if windows tile"
    return _avgpool_bound(m, shape)


def _maxpool_bound(m: nn.Module, shape: tuple) -> float:
    """||maxpool(x) - maxpool(y)||^2 <= sum over windows of the window's squared differences, so
    the bound is sqrt(the largest number of windows one input falls in)."""
    h, w = shape[-2:]
    if isinstance(m, nn.AdaptiveMaxPool2d):
        out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
        return math.sqrt(_adaptive_overlap(h, out[0] or h) * _adaptive_overlap(w, out[1] or w))
    k, s = _pair(m.kernel_size, "kernel"), _pair(m.stride or m.kernel_size, "stride")
    p, d = _pair(m.padding, "padding"), _pair(m.dilation, "dilation")
    extra = (s[0] - 1, s[1] - 1) if m.ceil_mode else (0, 0)  # over-counting only loosens
    ones = torch.ones(1, 1, h + 2 * p[0] + extra[0], w + 2 * p[1] + extra[1], dtype=torch.float64)
    cols = F.unfold(ones, k, dilation=d, stride=s)
    counts = F.fold(cols, ones.shape[-2:], k, dilation=d, stride=s)
    return math.sqrt(float(counts.max()))


def _adaptive_overlap(n: int, out: int) -> int:
    """The most adaptive-pooling windows (start floor(i n / out), end ceil((i + 1) n / out))
    that one of n positions falls in."""
    windows = [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]
    return max(sum(a <= j < b for a, b in windows) for j in range(n))


def _avgpool_bound(m: nn.Module, shape: tuple) -> float:
    """Schur test for the nonnegative averaging matrix P: ||P|| <= sqrt(max row sum * max
    column sum); row sums are P 1, column sums P^T 1 (a vector-Jacobian product)."""
    x = torch.ones(1, 1, *shape[-2:], dtype=torch.float64, requires_grad=True)
    rows = m(x)
    (cols,) = torch.autograd.grad(rows.sum(), x)
    return math.sqrt(float(rows.detach().max()) * float(cols.max()))
