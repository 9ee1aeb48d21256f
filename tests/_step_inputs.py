"""Inputs shared by the step-op families' tests (projected_step, l1_projection): every dtype,
odd shapes with N = 0, and the layouts the ops must keep."""

import math

import torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(4, 3, 8, 8), (5, 3, 7, 9), (0, 3, 4, 4), (1, 70_000), (3, 1), (2, 3, 5)]
LAYOUTS = ["contiguous", "channels_last", "strided", "mixed"]


def make(shape, dtype, device, layout="contiguous"):
    """x_nat in [0, 1], x_adv near it, grad with a NaN and an inf; laid out as asked."""
    x = torch.rand(shape, dtype=torch.float64)
    xa = (x + 0.2 * torch.randn(shape, dtype=torch.float64)).clamp(0, 1)
    g = torch.randn(shape, dtype=torch.float64)
    if g.numel() > 2:
        g.view(-1)[0], g.view(-1)[-1] = math.nan, math.inf
    x, xa, g = (t.to(dtype=dtype, device=device) for t in (x, xa, g))
    if layout == "mixed":  # x_adv contiguous, the others channels_last or strided
        return xa, make_layout(x, "channels_last"), make_layout(g, "strided")
    return make_layout(xa, layout), make_layout(x, layout), make_layout(g, layout)


def make_layout(t, layout):
    """channels_last (4-D only), strided (every other element of a wider buffer) or as is."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t
