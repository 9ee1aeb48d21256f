"""Operator norms of conv and linear layers: ``conv_singular_values`` and ``conv_operator_norm``
(the op ``torch.ops.robustkern.conv_singular_values`` on the torus ``fft_size`` chooses),
``conv_lower_bound`` (power iteration on the real layer) and ``linear_operator_norm``; the padding
and method semantics are in the package docstring (``robustkern.spectral``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustkern import ops
from robustkern.checks import check_choice

Pair = int | tuple[int, int]
Padding = str | int | tuple[int, int]
BOUND_METHODS = ("gram", "exact")


def _pair(v: Pair, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= 0 for i in t):
        raise ValueError(f"{name} must be an int >= 0 or a pair of them, got {v!r}")
    return t  # type: ignore[return-value]


def _total_padding(padding: Padding, kernel: tuple[int, int], dilation: tuple[int, int]):
    """Zeros added per axis (both sides together) for PyTorch's zero-padding forms."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple(d * (k - 1) for k, d in zip(kernel, dilation, strict=True))
    return tuple(2 * p for p in _pair(padding, "padding"))


def fft_size(
    input_size: Pair,
    kernel_size: Pair,
    stride: Pair = 1,
    padding: Padding = "circular",
    dilation: Pair = 1,
) -> tuple[int, int]:
    """The torus on which the circular layer's norm is the answer (see the package docstring)."""
    n, s = _pair(input_size, "input_size"), _pair(stride, "stride")
    if min(n) < 1 or min(s) < 1:
        raise ValueError(f"input_size and stride must be >= 1, got {input_size} and {stride}")
    if padding == "circular":
        if n[0] % s[0] or n[1] % s[1]:
            raise ValueError(
                f"circular padding needs an input_size {n} divisible by the stride {s}"
            )
        return n
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'circular', 'same', 'valid' or ints, got {padding!r}")
    pad = _total_padding(padding, _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation"))
    return tuple(-(-(ni + pi) // si) * si for ni, pi, si in zip(n, pad, s, strict=True))


def _as_batch(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (4, 5):
        raise ValueError(
            "weight must be a conv weight (C_out, C_in / groups, kh, kw) or a batch of equal "
            f"ones (B, C_out, C_in / groups, kh, kw), got {getattr(weight, 'shape', weight)}"
        )
    return weight if weight.dim() == 5 else weight[None]


def conv_singular_values(
    weight: torch.Tensor,
    input_size: Pair,
    stride: Pair = 1,
    padding: Padding = "circular",
    dilation: Pair = 1,
    groups: int = 1,
    *,
    method: str = "gram",
    prune: bool = False,
    max_iters: int = 16,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Per-frequency largest singular value (max over groups) on the rfft2 half-grid of the
    stride-reduced torus, (Mh, Mw // 2 + 1) or (B, ...) for a batch of layers: a heat map of
    where the layer amplifies. The other half is the mirror image (real kernels). With
    ``prune=True`` frequencies that cannot hold the maximum keep a looser (still valid) bound."""
    args = (input_size, stride, padding, dilation, groups, method, max_iters, tol)
    return _run_op(weight, *args, prune=prune)[0]


def conv_operator_norm(
    weight: torch.Tensor,
    input_size: Pair,
    stride: Pair = 1,
    padding: Padding = "circular",
    dilation: Pair = 1,
    groups: int = 1,
    *,
    method: str = "gram",
    transposed: bool = False,
    output_padding: Pair = 0,
    max_iters: int = 16,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Operator (L2) norm of a conv layer on ``input_size`` inputs: a 0-dim tensor, or (B,) for a
    batch of equal layers (one launch). ``padding="circular"``: the circular layer's exact norm;
    zero padding (int, pair, "same", "valid"): a certified upper bound. ``transposed``: the
    ConvTranspose2d with this weight (C_in, C_out / groups, kh, kw), whose norm is that of the
    conv it is the adjoint of, taken on its output size."""
    size = _pair(input_size, "input_size")
    if transposed:
        s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
        kernel = _as_batch(weight).shape[-2:]
        size = _transposed_output_size(size, kernel, s, padding, d, output_padding)
    args = (size, stride, padding, dilation, groups, method, max_iters, tol)
    return _run_op(weight, *args, prune=True)[1]


def _run_op(weight, input_size, stride, padding, dilation, groups, method, max_iters, tol, prune):
    """(per-frequency sigma, norm) from the op, for one layer (4-D weight) or a batch (5-D)."""
    check_choice(method, BOUND_METHODS, "method")
    w = _as_batch(weight)
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    n = fft_size(input_size, w.shape[-2:], s, padding, d)
    sigma, norm = ops.conv_singular_values(
        w.detach(), n, s, d, groups, method, max_iters, tol, prune
    )
    return (sigma, norm) if weight.dim() == 5 else (sigma[0], norm[0])


def _transposed_output_size(size, kernel, stride, padding, dilation, output_padding):
    if padding == "circular":
        return tuple(n * s for n, s in zip(size, stride, strict=True))
    if isinstance(padding, str):
        raise ValueError(f"ConvTranspose2d padding must be an int or pair, got {padding!r}")
    p, op = _pair(padding, "padding"), _pair(output_padding, "output_padding")
    return tuple(
        (n - 1) * s - 2 * pi + d * (k - 1) + o + 1
        for n, s, pi, d, k, o in zip(size, stride, p, dilation, kernel, op, strict=True)
    )


def linear_operator_norm(weight: torch.Tensor) -> torch.Tensor:
    """Largest singular value of a (out, in) matrix, exact (computed in float64)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a 2-D (out, in) matrix, got {getattr(weight, 'shape', weight)}"
        )
    if weight.numel() == 0:
        return weight.new_zeros(())
    return torch.linalg.matrix_norm(weight.detach().double(), ord=2).to(weight.dtype)


def _conv_operator(weight, stride, padding, dilation, groups, transposed, output_padding):
    """The real layer as a function (what power iteration runs on)."""
    if transposed:
        return lambda x: F.conv_transpose2d(
            x, weight, None, stride, padding, output_padding, groups, dilation
        )
    if padding == "circular":  # wrap the far edge by the kernel's extent: output n / stride
        extent = [
            dd * (k - 1) for k, dd in zip(weight.shape[-2:], _pair(dilation, "d"), strict=True)
        ]
        pad = (0, extent[1], 0, extent[0])
        return lambda x: F.conv2d(
            F.pad(x, pad, mode="circular"), weight, None, stride, 0, dilation, groups
        )
    return lambda x: F.conv2d(x, weight, None, stride, padding, dilation, groups)


def conv_lower_bound(
    weight: torch.Tensor,
    input_size: Pair,
    stride: Pair = 1,
    padding: Padding = "circular",
    dilation: Pair = 1,
    groups: int = 1,
    *,
    transposed: bool = False,
    output_padding: Pair = 0,
    iters: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A lower bound on the layer's norm: ``iters`` steps of power iteration on the real operator
    (F.conv2d / conv_transpose2d with the layer's own padding), ||op(x)|| / ||x|| at the end."""
    if transposed and padding == "circular":
        raise ValueError("conv_lower_bound supports circular padding for Conv2d only")
    w = weight.detach().double()
    c_in = w.shape[0] if transposed else w.shape[1] * groups
    op = _conv_operator(w, stride, padding, dilation, groups, transposed, output_padding)
    x = torch.randn(
        1, c_in, *_pair(input_size, "input_size"), generator=generator, dtype=torch.float64
    )
    x = x.to(w.device)
    for _ in range(iters):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(op(x).square().sum() / 2, x)  # op^T op x
        norm = grad.norm()
        if norm == 0:
            return w.new_zeros(()).to(weight.dtype)
        x = grad / norm
    with torch.no_grad():
        return op(x).norm().to(weight.dtype)
