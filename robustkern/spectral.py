"""Operator norms (upper Lipschitz constants) of conv and linear layers, the per-layer table of
Szegedy et al. (2014, section 4.3, Table 5) for a whole model, and a differentiable penalty.

Padding semantics (they matter: the circular norm at size n is NOT an upper bound for a
zero-padded layer; 5-point Laplacian, 'same' zero padding, n=9: 7.8042 zero-padded, 7.7588
circular):

* ``padding="circular"``: the exact norm of the circular layer on an ``input_size`` torus (which
  must be a multiple of the stride).
* an int, a pair, ``"same"`` or ``"valid"``: PyTorch's zero padding. The layer is a restriction of
  the circular layer on a torus of N >= n + total padding (rounded up to a multiple of the
  stride), whose norm is therefore a certified upper bound; ``conv_lower_bound`` (power iteration
  on the real operator) brackets it from below.

Results are float64 for float64 weights, float32 otherwise (float16/bfloat16 weights included).
``method="gram"`` (default) returns certified upper bounds: Gram iteration with rescaling
(Delattre et al. 2023), frequencies that cannot hold the maximum pruned, the computed value times
``1 + 16 sqrt(d) eps`` for rounding (d the smaller matrix side, eps the compute type's). Iteration
stops when the bound is within ``tol`` of a Rayleigh-quotient lower bound. ``method="exact"``:
eigenvalues per frequency (no certificate beyond LAPACK's accuracy). float32 matmuls run at full
precision inside the op whatever TF32 / oneDNN settings are active.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustkern import _C  # noqa: F401  (registers torch.ops.robustkern)
from robustkern import nn as rk_nn

Pair = int | tuple[int, int]
Padding = str | int | tuple[int, int]
METHODS = ("gram", "exact")

__all__ = [
    "LipschitzTable",
    "conv_lower_bound",
    "conv_operator_norm",
    "conv_singular_values",
    "linear_operator_norm",
    "lipschitz_penalty",
    "lipschitz_table",
]


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
    """The torus on which the circular layer's norm is the answer (see the module docstring)."""
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    w = _as_batch(weight)
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    n = fft_size(input_size, w.shape[-2:], s, padding, d)
    sigma, norm = torch.ops.robustkern.conv_singular_values(
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


# --- the per-layer table -------------------------------------------------------------------------

ACTIVATION_CONSTANTS = {
    nn.ReLU: 1.0, nn.Sigmoid: 0.25, nn.Tanh: 1.0, nn.Identity: 1.0, nn.Flatten: 1.0,
    nn.Dropout: 1.0, nn.Softmax: 1.0, nn.ReLU6: 1.0, nn.Hardtanh: 1.0, nn.Softplus: 1.0,
    nn.GELU: 1.129, nn.SiLU: 1.0998, nn.Unflatten: 1.0,
}  # fmt: skip
# GELU and SiLU: the maximum slopes, 1.1289 and 1.0998, rounded up.


@dataclass
class LayerBound:
    """One row of the table. ``upper`` is inf for a layer robustkern cannot bound."""

    name: str
    kind: str
    weight_shape: tuple[int, ...] | None
    stride: tuple[int, int] | None
    input_size: tuple[int, ...]
    upper: float
    lower: float | None = None
    note: str = ""


@dataclass
class LipschitzTable:
    """Per-layer upper Lipschitz bounds (L2) and their product, the network's bound."""

    rows: list[LayerBound] = field(default_factory=list)
    product: float = 1.0
    input_shape: tuple[int, ...] = ()

    def __str__(self) -> str:
        head = ["layer", "kind", "weight", "stride", "input", "upper", "lower", "note"]
        body = [
            [
                r.name,
                r.kind,
                "x".join(map(str, r.weight_shape)) if r.weight_shape else "",
                "x".join(map(str, r.stride)) if r.stride else "",
                "x".join(map(str, r.input_size)),
                f"{r.upper:.4g}",
                "" if r.lower is None else f"{r.lower:.4g}",
                r.note,
            ]
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row).rstrip() for row in body]
        lines.append(f"\nproduct of the bounds (network Lipschitz upper bound): {self.product:.4g}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {"input_shape": self.input_shape, "product": self.product,
             "rows": [asdict(r) for r in self.rows]},
            indent=2,
        )  # fmt: skip


def lipschitz_table(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    lower_bound: bool = False,
    method: str = "gram",
) -> LipschitzTable:
    """Walks ``model`` (Sequential containers, residual blocks as 1 + L for identity shortcuts
    or L_shortcut + L_branch) and bounds each layer; ``input_shape`` is one sample's (C, H, W)
    or (features,). BatchNorm in eval form is folded into the conv/linear before it, else listed
    as its own diagonal scale. Layers it cannot bound are listed with an infinite bound, which
    makes the product infinite: nothing is skipped silently."""
    shapes = _input_shapes(model, tuple(input_shape))
    table = LipschitzTable(input_shape=tuple(input_shape))
    walker = _Walker(shapes, table.rows, lower_bound, method)
    table.product = walker.bound(model, "")
    return table


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """Each submodule's input shape (without batch), from one forward on zeros in eval mode."""
    shapes: dict[nn.Module, tuple] = {}

    def record(module, args):
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    p = next(iter(model.parameters()), None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            try:
                model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
            except RuntimeError as e:
                raise ValueError(
                    f"input_shape {input_shape} (one sample, e.g. (C, H, W)) does not fit the "
                    f"model: {e}"
                ) from e
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The eval-mode BatchNorm's per-channel multiplier gamma / sqrt(var + eps)."""
    scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale * bn.weight.double() if bn.weight is not None else scale


class _Walker:
    def __init__(self, shapes, rows, lower, method):
        self.shapes, self.rows, self.lower, self.method = shapes, rows, lower, method

    def bound(self, m: nn.Module, name: str) -> float:
        if isinstance(m, nn.Sequential):
            return self.sequence(list(m.named_children()), name)
        if _is_residual(m):
            return self.residual(m, name)
        return self.leaf(m, name, None)

    def sequence(self, children, prefix: str) -> float:
        total, i = 1.0, 0
        while i < len(children):
            child_name, child = children[i]
            full = f"{prefix}.{child_name}" if prefix else child_name
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(child, (nn.Conv2d, nn.Linear)) and isinstance(
                nxt, nn.modules.batchnorm._BatchNorm
            ):
                total *= self.leaf(child, full, nxt)
                i += 2
                continue
            total *= self.bound(child, full)
            i += 1
        return total

    def residual(self, m: nn.Module, name: str) -> float:
        branch, shortcut, after = _residual_parts(m)
        first = len(self.rows)
        lb = self.sequence(branch, name)
        if shortcut is None:
            ls, how = 1.0, "1 + L_branch"
        else:
            ls, how = self.bound(shortcut, f"{name}.shortcut"), "L_shortcut + L_branch"
        total = (lb + ls) * self.sequence(after, name)
        self.rows.insert(first, LayerBound(
            name or "(model)", f"residual {type(m).__name__}", None, None,
            self.shapes.get(m, ()), lb + ls, note=f"{how} = {ls:.4g} + {lb:.4g}",
        ))  # fmt: skip
        return total

    def leaf(self, m: nn.Module, name: str, bn) -> float:
        shape = self.shapes.get(m, ())
        row = LayerBound(name or "(model)", type(m).__name__, None, None, shape, math.inf)
        if bn is not None:
            row.note = "BatchNorm folded in"
        if not self.shapes.get(m) and not isinstance(m, (nn.Identity,)):
            row.note = "never called in forward"
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            self.conv(m, row, bn)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().double()
            if bn is not None:
                w = _bn_scale(bn)[:, None] * w
            row.weight_shape = tuple(m.weight.shape)
            row.upper = float(linear_operator_norm(w))
            row.lower = row.upper if self.lower else None
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            row.upper = float(_bn_scale(m).abs().max()) if m.num_features else 0.0
            row.note = "diagonal scale (eval statistics)"
        elif type(m) in ACTIVATION_CONSTANTS:
            row.upper = ACTIVATION_CONSTANTS[type(m)]
        elif isinstance(m, nn.LeakyReLU):
            row.upper = max(1.0, abs(m.negative_slope))
        elif isinstance(m, nn.ELU):
            row.upper = max(1.0, m.alpha)
        elif isinstance(m, rk_nn.Normalize):
            row.upper = float(1 / m.std.min())
        elif isinstance(m, nn.MaxPool2d):
            row.upper, row.note = _maxpool_bound(m, shape), "sqrt(max windows per input)"
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            row.upper, row.note = _avgpool_bound(m, shape), "Schur bound, exact if windows tile"
        else:
            row.note = "cannot bound: unknown layer (its forward is not analysed)"
        self.rows.append(row)
        return row.upper

    def conv(self, m, row: LayerBound, bn) -> None:
        transposed = isinstance(m, nn.ConvTranspose2d)
        w = m.weight.detach()
        if bn is not None:  # fold: the channel scale multiplies the conv's output channels
            w = (w.double() * _bn_scale(bn).view(-1, 1, 1, 1)).to(w.dtype)
        row.weight_shape, row.stride = tuple(m.weight.shape), tuple(m.stride)
        padding: Padding = m.padding
        if m.padding_mode == "circular":
            padding = "circular"
        elif m.padding_mode != "zeros":
            row.note = f"cannot bound: padding_mode={m.padding_mode!r}"
            return
        size = row.input_size[-2:]
        kwargs = dict(stride=m.stride, padding=padding, dilation=m.dilation, groups=m.groups)
        if transposed:
            kwargs |= dict(transposed=True, output_padding=m.output_padding)
        try:
            row.upper = float(conv_operator_norm(w, size, method=self.method, **kwargs))
        except ValueError as e:
            row.note = f"cannot bound: {e}"
            return
        row.note = (
            "exact (circular)" if padding == "circular" else "zero padding: certified bound"
        ) + (", BatchNorm folded in" if bn is not None else "")
        if self.lower:
            row.lower = float(conv_lower_bound(w, size, **kwargs))


def _maxpool_bound(m: nn.MaxPool2d, shape: tuple) -> float:
    """||maxpool(x) - maxpool(y)||^2 <= sum over windows of the window's squared differences, so
    the bound is sqrt(the largest number of windows one input falls in)."""
    k, s = _pair(m.kernel_size, "kernel"), _pair(m.stride or m.kernel_size, "stride")
    p, d = _pair(m.padding, "padding"), _pair(m.dilation, "dilation")
    h, w = shape[-2:]
    extra = (s[0] - 1, s[1] - 1) if m.ceil_mode else (0, 0)  # over-counting only loosens
    ones = torch.ones(1, 1, h + 2 * p[0] + extra[0], w + 2 * p[1] + extra[1], dtype=torch.float64)
    cols = F.unfold(ones, k, dilation=d, stride=s)
    counts = F.fold(cols, ones.shape[-2:], k, dilation=d, stride=s)
    return math.sqrt(float(counts.max()))


def _avgpool_bound(m: nn.Module, shape: tuple) -> float:
    """Schur test for the nonnegative averaging matrix P: ||P|| <= sqrt(max row sum * max
    column sum); row sums are P 1, column sums P^T 1 (a vector-Jacobian product)."""
    x = torch.ones(1, 1, *shape[-2:], dtype=torch.float64, requires_grad=True)
    rows = m(x)
    (cols,) = torch.autograd.grad(rows.sum(), x)
    return math.sqrt(float(rows.detach().max()) * float(cols.max()))


def _is_residual(m: nn.Module) -> bool:
    return _residual_parts(m) is not None


def _residual_parts(m: nn.Module):
    """(branch layers, shortcut module or None for identity, layers after the sum) for
    robustkern's BasicBlock and torchvision's BasicBlock / Bottleneck; None otherwise."""
    from robustkern import models

    if isinstance(m, models.BasicBlock):
        shortcut = None if isinstance(m.shortcut, nn.Identity) else m.shortcut
        return list(m.body.named_children()), shortcut, [("relu", m.relu)]
    if type(m).__name__ in ("BasicBlock", "Bottleneck") and hasattr(m, "conv1"):
        names = ["conv1", "bn1", "relu", "conv2", "bn2"]
        if hasattr(m, "conv3"):
            names += ["relu", "conv3", "bn3"]
        return (
            [(n, getattr(m, n)) for n in names],
            getattr(m, "downsample", None),
            [("relu", m.relu)],
        )
    return None


# --- the penalty ---------------------------------------------------------------------------------


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
