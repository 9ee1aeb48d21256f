"""The affine layers bound propagation sees: x -> linear(x) + bias on one sample's shape, applied
to a batch along the leading dimension. Each map knows its linear part, the same with absolute
weights (interval radii), its transpose (backward linear bounds) and, where every input
coordinate enters each output at most once, the linear part with squared weights (the exact L2
norm of each output's row)."""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn


class AffineMap:
    """x (B, *in_shape) -> linear(x) + bias (B, *out_shape).

    Subclasses set ``in_shape``, ``out_shape`` and ``bias`` (broadcastable to ``out_shape``, or
    None) and implement ``linear``; ``abs_linear`` defaults to ``linear`` (non-negative weights)
    and ``transpose`` to the vector-Jacobian product of ``linear``.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    bias: torch.Tensor | None = None
    diagonal = False  # each output is one input coordinate, scaled: ball images stay exact
    separable = False  # each input coordinate enters each output at most once: sq_linear exists

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return z if self.bias is None else z + self.bias

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part with every weight replaced by its absolute value."""
        return self.linear(x)

    def sq_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part with squared weights (``separable`` maps only)."""
        raise NotImplementedError

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        """a (B, *out_shape) -> a W (B, *in_shape): the linear part's transpose."""
        z = a.new_zeros((a.shape[0], *self.in_shape)).requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.linear(z), z, a, create_graph=a.requires_grad)
        return g

    def bias_dot(self, a: torch.Tensor) -> torch.Tensor:
        """a (B, K, *out_shape) -> (B, K): each row of a times the bias."""
        if self.bias is None:
            return a.new_zeros(a.shape[:2])
        return a.flatten(2) @ self.bias.expand(self.out_shape).flatten()


class LinearMap(AffineMap):
    """nn.Linear on the last dimension."""

    separable = True

    def __init__(self, m: nn.Linear, in_shape, out_shape, dtype: torch.dtype) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape
        self.weight = m.weight.to(dtype)
        self.bias = None if m.bias is None else m.bias.to(dtype)

    def __call__(self, x):  # the bias added by the matrix product itself: one pass less
        return F.linear(x, self.weight, self.bias)

    def linear(self, x):
        return F.linear(x, self.weight)

    @cached_property
    def abs_weight(self) -> torch.Tensor:  # once per map: bounds() applies it to every chunk
        return self.weight.abs()

    def abs_linear(self, x):
        return F.linear(x, self.abs_weight)

    def sq_linear(self, x):
        return F.linear(x, self.weight.square())

    def transpose(self, a):
        return a @ self.weight


class ConvMap(AffineMap):
    """nn.Conv2d, any stride, padding, dilation, groups and padding mode."""

    def __init__(self, m: nn.Conv2d, in_shape, out_shape, dtype: torch.dtype) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape
        self.module = m
        self.weight = m.weight.to(dtype)
        self.channel_bias = None if m.bias is None else m.bias.to(dtype)
        self.bias = None if m.bias is None else self.channel_bias.view(-1, 1, 1)
        # Zero padding with explicit sizes: a plain convolution, whose transpose is one call and
        # whose rows meet each input pixel at most once. Other padding modes repeat pixels.
        self.separable = m.padding_mode == "zeros" and not isinstance(m.padding, str)

    def __call__(self, x):  # the bias added by the convolution itself: one pass less
        return self.module._conv_forward(x, self.weight, self.channel_bias)

    def linear(self, x):
        return self.module._conv_forward(x, self.weight, None)

    @cached_property
    def abs_weight(self) -> torch.Tensor:  # once per map: bounds() applies it to every chunk
        return self.weight.abs()

    def abs_linear(self, x):
        return self.module._conv_forward(x, self.abs_weight, None)

    def sq_linear(self, x):
        return self.module._conv_forward(x, self.weight.square(), None)

    def transpose(self, a):
        if not self.separable:
            return super().transpose(a)
        m = self.module
        return torch.nn.grad.conv2d_input(
            (a.shape[0], *self.in_shape), self.weight, a, m.stride, m.padding, m.dilation, m.groups
        )


class ScaleShift(AffineMap):
    """x * scale + shift per channel: BatchNorm in eval mode, robustkern.nn.Normalize."""

    diagonal = separable = True

    def __init__(self, scale, shift, shape) -> None:
        self.in_shape = self.out_shape = shape
        view = (-1,) + (1,) * (len(shape) - 1)  # channels first, broadcast over the rest
        self.scale, self.bias = scale.reshape(view), shift.reshape(view)

    def __call__(self, x):
        return torch.addcmul(self.bias, x, self.scale)

    def linear(self, x):
        return x * self.scale

    def abs_linear(self, x):
        return x * self.scale.abs()

    def sq_linear(self, x):
        return x * self.scale.square()

    def transpose(self, a):
        return a * self.scale


class PoolMap(AffineMap):
    """nn.AvgPool2d or nn.AdaptiveAvgPool2d: non-negative weights, so abs_linear is itself."""

    def __init__(self, m: nn.Module, in_shape, out_shape) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape
        self.linear = m


class Reshape(AffineMap):
    """Flatten, view, reshape: the sample's values in another shape."""

    diagonal = separable = True

    def __init__(self, in_shape, out_shape) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    def linear(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    sq_linear = linear

    def transpose(self, a):
        return a.reshape(a.shape[0], *self.in_shape)


def batchnorm_map(m: nn.modules.batchnorm._BatchNorm, shape, dtype: torch.dtype) -> ScaleShift:
    """BatchNorm with its running statistics (eval mode) as a per-channel scale and shift."""
    var, mean = m.running_var.to(dtype), m.running_mean.to(dtype)
    scale = torch.rsqrt(var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.to(dtype)
    shift = -mean * scale
    if m.bias is not None:
        shift = shift + m.bias.to(dtype)
    return ScaleShift(scale, shift, shape)
