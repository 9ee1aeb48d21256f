"""The differentiable penalty: ``layer_penalty`` (a conv layer's norm as a function of its weight,
through the winning frequency's matrix ``_matrices_at``) and ``lipschitz_penalty`` (their sum or
max over a model's Conv2d and Linear layers)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustkern.spectral.norms import _pair, conv_singular_values, fft_size
from robustkern.spectral.tracing import _input_shapes


def _matrices_at(weight, n, stride, dilation, groups, freq):
    """A(xi) at one output frequency xi, differentiably, straight from the definition:
    (1 / sqrt(sh sw)) [K^(xi + l M)]_l, K^ the kernel's N-point DFT (no polyphase, no FFT)."""
    c_out, c_in, kh, kw = weight.shape
    (nh, nw), (sh, sw), (dh, dw) = n, stride, dilation
    mh, mw = nh // sh, nw // sw
    eta_h = freq[0] + mh * torch.arange(sh, dtype=torch.float64)  # the aliases xi + l M
    eta_w = freq[1] + mw * torch.arange(sw, dtype=torch.float64)
    ph = torch.exp(-2j * math.pi * eta_h[:, None] * (torch.arange(kh) * dh)[None] / nh)
    pw = torch.exp(-2j * math.pi * eta_w[:, None] * (torch.arange(kw) * dw)[None] / nw)
    w = weight.to(torch.complex128 if weight.dtype == torch.float64 else torch.complex64)
    blocks = torch.einsum("ocab,ia,jb->oicj", w, ph.to(w.dtype), pw.to(w.dtype))
    a = blocks.reshape(groups, c_out // groups, c_in * sh * sw) / math.sqrt(sh * sw)
    return a


def layer_penalty(weight, input_size, stride=1, padding="circular", dilation=1, groups=1):
    """The layer's norm as a differentiable function of its weight: the winning frequency is
    found without gradients, then sigma_max there is recomputed with autograd (the gradient of
    the max flows through that frequency only)."""
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    n = fft_size(input_size, weight.shape[-2:], s, padding, d)
    sigma = conv_singular_values(weight, n, s, "circular", d, groups, prune=True)
    flat = int(sigma.argmax())
    freq = divmod(flat, sigma.shape[-1])
    a = _matrices_at(weight, n, s, d, groups, freq)
    return torch.linalg.matrix_norm(a, ord=2).amax().to(weight.dtype)


def lipschitz_penalty(
    model: nn.Module, input_shape: Sequence[int], reduction: str = "sum"
) -> torch.Tensor:
    """Differentiable sum (or max) of the norms of every Conv2d and Linear weight in ``model``
    (Szegedy et al. suggest penalising each layer's bound), for use in a training loop. Conv
    norms use the layer's own padding semantics; BatchNorm is not folded in here (its training
    statistics change every step)."""
    if reduction not in ("sum", "max"):
        raise ValueError(f"reduction must be 'sum' or 'max', got {reduction!r}")
    shapes = _input_shapes(model, tuple(input_shape))
    terms = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            terms.append(torch.linalg.matrix_norm(m.weight, ord=2))
        elif isinstance(m, nn.Conv2d) and m in shapes:
            padding = "circular" if m.padding_mode == "circular" else m.padding
            terms.append(
                layer_penalty(m.weight, shapes[m][-2:], m.stride, padding, m.dilation, m.groups)
            )
    if not terms:
        raise ValueError("the model has no Conv2d or Linear layer to penalise")
    stacked = torch.stack([t.to(terms[0].dtype) for t in terms])
    return stacked.sum() if reduction == "sum" else stacked.amax()
