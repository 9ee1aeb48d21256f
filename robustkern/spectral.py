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

import builtins
import itertools
import json
import math
import operator
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

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
    nn.GELU: 1.129, nn.SiLU: 1.0998, nn.Unflatten: 1.0, nn.Mish: 1.089, nn.Hardswish: 1.5,
    nn.Hardsigmoid: 0.1667, nn.SELU: 1.7581, nn.CELU: 1.0, nn.Softsign: 1.0, nn.LogSigmoid: 1.0,
    nn.Tanhshrink: 1.0, nn.Softshrink: 1.0,
}  # fmt: skip
# The maximum slopes, rounded up: GELU 1.1289 (1.12899 with approximate="tanh"), SiLU 1.0998,
# Mish 1.0885, SELU 1.75810, Hardsigmoid 1/6. Dropout: eval mode, the identity.

# functional and Tensor-method forms of the activations above, by name
_FUNCTIONAL_ACTIVATIONS = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": nn.Hardtanh, "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus,
    "softmax": nn.Softmax, "mish": nn.Mish, "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "selu": nn.SELU, "celu": nn.CELU, "softsign": nn.Softsign,
    "logsigmoid": nn.LogSigmoid, "tanhshrink": nn.Tanhshrink, "softshrink": nn.Softshrink,
}  # fmt: skip
# rearrangements, restrictions, copies, 1-Lipschitz elementwise maps: ||f(x) - f(y)|| <= ||x - y||
_ONE_LIPSCHITZ = frozenset({
    "flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as", "view_as",
    "reshape_as", "t", "movedim", "narrow", "chunk", "split", "unbind", "neg", "abs", "clamp",
    "clamp_min", "clamp_max",
})  # fmt: skip
# outputs that depend on the input's shape only (fixed here), not on its values
_SHAPE_QUERIES = frozenset({
    "size", "dim", "numel", "nelement", "ndimension", "get_device", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand_like", "randn_like", "new_zeros", "new_ones", "new_empty",
    "new_full",
})  # fmt: skip
_NAMESPACES = (torch, F, operator, builtins)  # where the functions named above live
_SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout"})
# spellings of one operation: in-place forms, aliases
_ALIASES = {
    "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv", "div": "truediv",
    "true_divide": "truediv", "multiply": "mul", "subtract": "sub", "concat": "cat",
    "concatenate": "cat", "clip": "clamp", "negative": "neg", "dropout1d": "dropout",
    "dropout2d": "dropout", "dropout3d": "dropout",
}  # fmt: skip
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
_INPUT_NORMALISING = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm,
)  # fmt: skip


@dataclass
class LayerBound:
    """One row of the table. ``upper`` is the layer's own bound (for a residual addition or a
    concatenation: relative to the branch point), inf for a layer robustkern cannot bound."""

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
    """Per-layer upper Lipschitz bounds (L2) and ``product``, the network's bound: the bounds
    propagated through the model's graph (their product along a chain, L_a + L_b where a
    residual branch joins)."""

    rows: list[LayerBound] = field(default_factory=list)
    product: float = 1.0
    input_shape: tuple[int, ...] = ()

    def unbounded(self) -> list[LayerBound]:
        """The rows robustkern could not bound (each note says why)."""
        return [r for r in self.rows if r.note.startswith("cannot bound")]

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
        lines.append(
            "\nproduct of the bounds through the graph (sums at residual additions), the network "
            f"Lipschitz upper bound: {self.product:.4g}"
        )
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
    """Upper bounds (L2) on the Lipschitz constant of each layer of ``model`` and of the whole
    network; ``input_shape`` is one sample's (C, H, W) or (features,).

    The forward is traced with torch.fx (torch.nn layers and ``robustkern.nn.Normalize`` kept
    whole) and one eval-mode forward on zeros gives every node's shape. Each node then gets a
    bound on the map from the model input to its output; the output node's is ``product``.
    Functions count whatever their spelling (F.relu, torch.relu, x.relu_(), and the aten ops of
    a torch.export graph):

    * Conv2d / ConvTranspose2d / Linear (modules, F.conv2d, F.linear): the operator norm, a
      certified upper bound for zero padding (``method``, see the module docstring); with
      ``lower_bound`` also a lower bound (power iteration). An eval-mode BatchNorm that alone
      reads the layer's output is folded into the weight (tighter than the product).
    * BatchNorm otherwise: max |gamma / sqrt(var + eps)|, the eval-mode diagonal scale.
    * activations (modules, functional and Tensor forms): their maximum slope
      (``ACTIVATION_CONSTANTS``; LeakyReLU, ELU, PReLU from their parameters); log-softmax
      over n: sqrt(2 (n - 1)); dropout: 1 in eval mode (1 / (1 - p) when forced on).
    * pools: max pooling sqrt(the most windows one input falls in); average pooling the Schur
      bound; ``Normalize``: 1 / min(std).
    * shape changes, copies, slicing (flatten, view, permute, getitem, ...): 1; size and shape
      queries are constants; mean / sum of k values: 1 / sqrt(k) / sqrt(k); constant padding: 1.
    * a + b, a - b: L_a + L_b (the row: relative to the branch point, 1 + L_branch for an
      identity shortcut); x + c: L_x. torch.cat / stack: sqrt(sum L_i^2). x * c, x / c for a
      number or a constant tensor c: max |c|, 1 / min |c|. Broadcasting a tensor k times
      multiplies its bound by sqrt(k).

    Not bounded (a row with upper inf whose note names the reason, which makes the network's
    bound inf; nothing is skipped silently): products or quotients of two input-dependent
    tensors (x * x, attention, squeeze-and-excitation), normalisation by the input's own
    statistics (LayerNorm, GroupNorm, BatchNorm without running statistics), non-zero padding
    modes, advanced indexing, upsampling, 1-D / 3-D convs and pools, and any other layer or
    operation without a rule. A forward torch.fx cannot trace (data-dependent control flow,
    TorchScript) gives one such row for the model. An ``input_shape`` the model cannot take is a
    ValueError."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    shape = tuple(input_shape)
    table = LipschitzTable(input_shape=shape)
    with _eval_mode(model):
        try:
            seen = _run_once(*_trace(model), model, shape)
        except _Untraceable as e:
            _input_shapes(model, shape)  # an input_shape the model cannot take: the ValueError
            table.rows = [
                LayerBound("(model)", type(model).__name__, None, None, shape, math.inf,
                           note=f"cannot bound: {e}")
            ]  # fmt: skip
            table.product = math.inf
            return table
        bounds = _GraphBounds(seen, lower_bound, method)
        table.product = bounds.propagate()
    table.rows = bounds.rows
    return table


class _Untraceable(Exception):
    """torch.fx could not trace the model, or the traced graph does not run."""


class _Unbounded(Exception):
    """A node robustkern cannot bound; the message says why (it becomes the row's note)."""


class _Tracer(fx.Tracer):
    """Keeps torch.nn layers (the default) and robustkern's Normalize whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, rk_nn.Normalize) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> tuple[nn.Module, fx.Graph]:
    """(the module the graph's targets name, the graph of its forward)."""
    tracer = _Tracer()
    root = model
    if tracer.is_leaf_module(model, ""):  # tracing a layer itself would open up its forward
        root = nn.Sequential(OrderedDict([("(model)", model)]))
    try:
        return root, tracer.trace(root)
    except Exception as e:  # the user's forward ran on proxies: any failure means "untraceable"
        raise _Untraceable(
            f"torch.fx cannot trace {type(model).__name__}.forward ({type(e).__name__}: "
            f"{_first_line(e)})"
        ) from e


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps each node's output shape, and the output itself where
    it cannot depend on the input's values (parameters, buffers, shape arithmetic): the constants
    that multiply, divide or weight the input."""

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        super().__init__(root, graph=graph)
        self.input = next(iter(graph.nodes), None)  # the first placeholder
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.values: dict[fx.Node, object] = {}
        self.varies: set[fx.Node] = set()

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n] = tuple(out.shape)
        if n is self.input or any(a in self.varies for a in n.all_input_nodes):
            self.varies.add(n)
        if n not in self.varies or not _holds_tensor(out):
            self.values[n] = out
        return out


def _holds_tensor(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def _run_once(root: nn.Module, graph: fx.Graph, model: nn.Module, input_shape: tuple) -> _Recorder:
    recorder = _Recorder(root, graph)
    try:
        with torch.no_grad():
            recorder.run(_probe(model, input_shape))
    except Exception as e:  # the shape, or a graph that differs from the eager forward
        raise _Untraceable(
            f"the traced forward of {type(model).__name__} does not run ({type(e).__name__}: "
            f"{_first_line(e)})"
        ) from e
    return recorder


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode (BatchNorm's running statistics, dropout off) for the block; every submodule's
    own mode is restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _probe(model: nn.Module, input_shape: tuple) -> torch.Tensor:
    """A batch of one zero input on the model's device, in its floating dtype."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    p = next((t for t in tensors if t.is_floating_point()), None)
    if p is None:
        return torch.zeros(1, *input_shape)
    return torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """Each submodule's input shape (without batch), from one forward on zeros in eval mode."""
    shapes: dict[nn.Module, tuple] = {}

    def record(module, args):
        shapes.setdefault(module, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with _eval_mode(model), torch.no_grad():
            try:
                model(_probe(model, input_shape))
            except RuntimeError as e:
                raise ValueError(
                    f"input_shape {input_shape} (one sample, e.g. (C, H, W)) does not fit the "
                    f"model: {e}"
                ) from e
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _op_name(node: fx.Node) -> str:
    """One name per operation whatever its spelling: 'relu' for F.relu, torch.relu and
    Tensor.relu_ and aten.relu, 'add' for a + b, a += b and torch.add; '' for a module or an
    unknown callable."""
    if node.op == "call_method":
        name = node.target
    elif isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten":
        name = node.target.overloadpacket.__name__  # torch.export's graphs: the same arguments
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if not any(getattr(space, name, None) is node.target for space in _NAMESPACES):
            return ""  # a user's function that happens to share a name
    else:
        return ""
    name = name.rstrip("_") if not name.startswith("_") else name
    return _ALIASES.get(name, name)


def _is_shape_query(node: fx.Node) -> bool:
    name = _op_name(node)
    if name == "getattr":
        return node.args[1] in _SHAPE_ATTRIBUTES
    return name in _SHAPE_QUERIES


def _arg(node: fx.Node, index: int, name: str, default=None):
    """An argument by position (the input counts as 0) or by keyword."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _row_name(node: fx.Node) -> str:
    """A layer's qualified name; for a function, the module whose forward calls it and the
    node's name ('layer1.0.add')."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    scope = list(stack.values())[-1][0] if stack else ""
    return f"{scope}.{node.name}" if scope else node.name


def _times(gain: float, bound: float) -> float:
    return 0.0 if gain == 0 else gain * bound  # a constant map stays 0 after an unbounded one


@dataclass
class _Weighted:
    """A conv or linear operator, from a module or a functional call."""

    weight: torch.Tensor
    kind: str  # "linear", "conv" or "conv_transpose"
    stride: Pair = 1
    padding: Padding = 0
    dilation: Pair = 1
    groups: int = 1
    output_padding: Pair = 0
    padding_mode: str = "zeros"

    @classmethod
    def of_module(cls, m: nn.Module) -> _Weighted:
        w = m.weight.detach()
        if isinstance(m, nn.Linear):
            return cls(w, "linear")
        kind = "conv_transpose" if isinstance(m, nn.ConvTranspose2d) else "conv"
        return cls(w, kind, tuple(m.stride), m.padding, tuple(m.dilation), m.groups,
                   getattr(m, "output_padding", 0), m.padding_mode)  # fmt: skip

    def out_channels(self) -> int:
        if self.kind == "conv_transpose":
            return self.weight.shape[1] * self.groups
        return self.weight.shape[0]

    def scaled(self, scale: torch.Tensor) -> _Weighted:
        """The layer followed by a per-output-channel scale (a folded BatchNorm)."""
        w = self.weight.double()
        if self.kind == "linear":
            w = scale[:, None] * w
        elif self.kind == "conv":
            w = w * scale.view(-1, 1, 1, 1)
        else:  # (C_in, C_out / groups, kh, kw): output channel g * C_out / groups + j
            g = self.groups
            w = (w.view(g, -1, *w.shape[1:]) * scale.view(g, 1, -1, 1, 1)).view(w.shape)
        return replace(self, weight=w.to(self.weight.dtype))


class _GraphBounds:
    """Walks the traced graph in order. ``bound[n]``: an upper bound on the L2 Lipschitz
    constant of the map from the model input to n's output (to each tensor of it, for a tuple),
    or None where n's output does not depend on the input's values. ``idom[n]``: the latest node
    every path from the input to n passes through (a residual block's branch point)."""

    def __init__(self, seen: _Recorder, lower: bool, method: str):
        self.seen, self.lower, self.method = seen, lower, method
        self.modules = dict(seen.module.named_modules())
        self.order = {n: i for i, n in enumerate(seen.graph.nodes)}
        self.bound: dict[fx.Node, float | None] = {}
        self.idom: dict[fx.Node, fx.Node] = {}
        self.folded: set[fx.Node] = set()
        self.rows: list[LayerBound] = []

    def propagate(self) -> float:
        """Fills the rows; returns the bound at the output."""
        for node in self.seen.graph.nodes:
            if node.op == "output":
                return self._output(node)
            self.bound[node] = self._visit(node)
        return 0.0

    def _visit(self, node: fx.Node) -> float | None:
        if node.op == "placeholder":
            if node is not self.seen.input:
                return None  # a further argument, left at its default
            self.idom[node] = node
            return 1.0
        deps = [n for n in node.all_input_nodes if self.bound.get(n) is not None]
        if not deps or _is_shape_query(node):
            return None
        self.idom[node] = self._branch_point(deps)
        if node in self.folded:  # its conv / linear row carries it
            return self.bound[deps[0]]
        row = LayerBound(_row_name(node), self._kind(node), None, None,
                         self.seen.shapes.get(deps[0], (None,))[1:], math.inf)  # fmt: skip
        try:
            bound = self._bound(node, deps, row)
        except _Unbounded as e:
            row.upper, row.note, bound = math.inf, f"cannot bound: {e}", math.inf
        except Exception as e:  # a rule met a call it cannot read: a row that says so, no crash
            row.upper, bound = math.inf, math.inf
            row.note = f"cannot bound: {row.kind} ({type(e).__name__}: {_first_line(e)})"
        self.rows.append(row)
        return bound

    def _branch_point(self, deps: list[fx.Node]) -> fx.Node:
        """The nearest common dominator of the inputs (Cooper, Harvey and Kennedy's walk up the
        dominator tree, graph order standing in for depth)."""
        point = deps[0]
        for other in deps[1:]:
            while point is not other:
                while self.order[point] > self.order[other]:
                    point = self.idom[point]
                while self.order[other] > self.order[point]:
                    other = self.idom[other]
        return point

    def _kind(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        return getattr(node.target, "__name__", str(node.target))

    def _output(self, node: fx.Node) -> float:
        """sqrt(sum of squares) over the returned tensors (one, usually)."""
        returned: list[fx.Node] = []
        fx.node.map_arg(node.args[0], lambda n: returned.append(n) or n)
        bounds = [self.bound[n] for n in returned if self.bound.get(n) is not None]
        return math.sqrt(sum(b * b for b in bounds))

    def _bound(self, node: fx.Node, deps: list[fx.Node], row: LayerBound) -> float:
        """The node's bound from its inputs'; fills the row (its own bound, notes)."""
        name = _op_name(node)
        if name in ("add", "sub"):
            return self._sum(node, row, name)
        if name in ("cat", "stack"):
            return self._concat(node, row)
        if name in ("mul", "truediv"):
            return self._scale(node, row, name)
        main = _arg(node, 0, "input")
        if len(deps) > 1 or main is not deps[0]:
            others = ", ".join(d.name for d in deps if d is not main)
            raise _Unbounded(f"{row.kind} of input-dependent {others} (no rule)")
        row.upper = self._gain(node, main, name, row)
        return _times(row.upper, self.bound[main])

    def _shape(self, node) -> tuple[int, ...]:
        if node not in self.seen.shapes:
            raise _Unbounded(f"{node.name} is not a tensor")
        return self.seen.shapes[node]

    def _constant(self, arg):
        """A number or a tensor that does not depend on the input."""
        if not isinstance(arg, fx.Node):
            return arg
        if self.bound.get(arg) is not None:
            raise _Unbounded(f"{arg.name} depends on the input (no rule for that)")
        return self.seen.values[arg]

    def _spread(self, node: fx.Node, operand: fx.Node) -> float:
        """sqrt(how many times broadcasting repeats the operand in the node's output)."""
        return math.sqrt(math.prod(self._shape(node)) / max(1, math.prod(self._shape(operand))))

    def _term(self, node: fx.Node, operand) -> float:
        """An operand's share of an elementwise result's bound: 0 for a constant."""
        if not isinstance(operand, fx.Node) or self.bound.get(operand) is None:
            return 0.0
        return _times(self._spread(node, operand), self.bound[operand])

    def _relative(self, node: fx.Node, bound: float) -> tuple[float, float, str]:
        """(the branch point's bound, the node's bound relative to it, the branch point's name):
        the row of a join shows the block's own bound, 1 + L_branch for an identity shortcut."""
        point = self.idom[node]
        base = self.bound[point]
        if not 0 < base < math.inf:
            return 1.0, bound, "the input"
        where = "the input" if point.op == "placeholder" else _row_name(point)
        return base, bound / base, where

    def _varying(self, *operands) -> list[fx.Node]:
        return [v for v in operands if isinstance(v, fx.Node) and self.bound.get(v) is not None]

    def _sum(self, node: fx.Node, row: LayerBound, name: str) -> float:
        a, b = _arg(node, 0, "input"), _arg(node, 1, "other")
        alpha = abs(self._constant(node.kwargs.get("alpha", 1)))
        varies = self._varying(a, b)
        if len(varies) == 1:  # x + c: a translation
            row.upper = self._spread(node, varies[0]) * (alpha if varies[0] is b else 1.0)
            row.note = "plus a constant" if name == "add" else "minus a constant"
            return _times(row.upper, self.bound[varies[0]])
        la, lb = self._term(node, a), _times(alpha, self._term(node, b))
        base, row.upper, where = self._relative(node, la + lb)
        what = "residual addition" if name == "add" else "subtraction"
        row.note = (
            f"{what}: L_a + L_b = {la / base:.4g} + {lb / base:.4g} = {row.upper:.4g} "
            f"(relative to {where})"
        )
        return la + lb

    def _concat(self, node: fx.Node, row: LayerBound) -> float:
        parts: list[fx.Node] = []
        fx.node.map_arg(_arg(node, 0, "tensors"), lambda n: parts.append(n) or n)
        bound = math.sqrt(sum(self.bound[p] ** 2 for p in parts if self.bound.get(p) is not None))
        _, row.upper, where = self._relative(node, bound)
        row.note = f"concatenation: sqrt(sum L_i^2), relative to {where}"
        return bound

    def _scale(self, node: fx.Node, row: LayerBound, name: str) -> float:
        a, b = _arg(node, 0, "input"), _arg(node, 1, "other")
        varies = self._varying(a, b)
        what = "product" if name == "mul" else "quotient"
        if len(varies) != 1 or (name == "truediv" and varies[0] is not a):
            raise _Unbounded(f"{what} of input-dependent tensors is not globally Lipschitz")
        if node.kwargs.get("rounding_mode") is not None:
            raise _Unbounded("division with rounding is not continuous")
        c = self._constant(b if varies[0] is a else a)
        size = c.detach().abs().double() if isinstance(c, torch.Tensor) else torch.tensor(abs(c))
        if size.numel() == 0:
            raise _Unbounded(f"{what} with an empty tensor")
        if name == "mul":
            factor, row.note = float(size.max()), "times a constant: max |c|"
        elif float(size.min()) == 0:
            raise _Unbounded("division by a constant that holds 0")
        else:
            factor, row.note = 1 / float(size.min()), "divided by a constant: 1 / min |c|"
        row.upper = factor * self._spread(node, varies[0])
        return _times(row.upper, self.bound[varies[0]])

    def _gain(self, node: fx.Node, main: fx.Node, name: str, row: LayerBound) -> float:
        """The Lipschitz constant of a layer or operation of one input-dependent tensor, main."""
        if node.op == "call_module":
            return self._module_gain(node, self.modules[node.target], self._shape(main), row)
        if name in _FUNCTIONAL_ACTIVATIONS:
            return ACTIVATION_CONSTANTS[_FUNCTIONAL_ACTIVATIONS[name]]
        if name in _ONE_LIPSCHITZ:
            return 1.0
        shape = self.seen.shapes.get(main, ())
        if name in _POOLS:
            return _pool_gain(_pool_module(node, name), shape, row)
        if name in ("linear", "conv2d"):
            return self._weighted(node, self._functional_weighted(node, name), row)
        if name == "leaky_relu":
            return max(1.0, abs(self._constant(_arg(node, 1, "negative_slope", 0.01))))
        if name == "elu":
            return max(1.0, abs(self._constant(_arg(node, 1, "alpha", 1.0))))
        if name == "log_softmax":
            return _log_softmax_gain(shape, _arg(node, 1, "dim"), row)
        if name in ("mean", "sum"):
            k = math.prod(shape) / max(1, math.prod(self._shape(node)))
            row.note = f"{name} of {k:g} values"
            return math.sqrt(k) if name == "sum" else 1 / math.sqrt(k)
        return self._argument_gain(node, main, name, row)

    def _argument_gain(self, node: fx.Node, main: fx.Node, name: str, row: LayerBound) -> float:
        """The operations whose constant depends on how they are called."""
        if name == "dropout":
            p = self._constant(_arg(node, 1, "p", 0.5))
            on = _arg(node, 2, "training", node.kwargs.get("train", True))
            if not self._constant(on):
                return 1.0
            row.note = "dropout on (training=True): 1 / (1 - p)"
            return 0.0 if p == 1 else 1 / (1 - p)
        if name == "getitem":
            index = node.args[1]
            if main in self.seen.shapes and not _basic_index(index):
                raise _Unbounded("indexing with a tensor or list may repeat elements")
            return 1.0  # a restriction, or one tensor of a tuple
        if name == "pad":
            mode = _arg(node, 2, "mode", "constant")
            if mode != "constant":
                raise _Unbounded(f"{mode!r} padding repeats input values")
            return 1.0
        if name == "getattr" and node.args[1] in ("T", "mT", "data"):
            return 1.0
        if name == "batch_norm":
            row.note = "diagonal scale (eval statistics)"
            scale = self._functional_batchnorm_scale(node)
            return float(scale.abs().max()) if scale.numel() else 0.0
        raise _Unbounded(f"{row.kind} (no rule for this operation)")

    def _functional_batchnorm_scale(self, node: fx.Node) -> torch.Tensor:
        """F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps), or
        aten.batch_norm(x, weight, bias, running_mean, running_var, training, ...) as exported."""
        aten = isinstance(node.target, torch._ops.OpOverload)
        names = ["running_mean", "running_var", "weight", "bias"]
        names = (names[2:] + names[:2] if aten else names) + ["training", "momentum", "eps"]
        given = {key: self._constant(_arg(node, i + 1, key)) for i, key in enumerate(names)}
        if given["training"] or given["running_var"] is None:
            raise _Unbounded("batch normalisation by the batch's own statistics")
        eps = 1e-5 if given["eps"] is None else given["eps"]
        return _norm_scale(given["weight"], given["running_var"], eps)

    def _module_gain(self, node: fx.Node, m: nn.Module, shape: tuple, row: LayerBound) -> float:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            return self._weighted(node, _Weighted.of_module(m), row)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            row.note = "diagonal scale (eval statistics)"
            return _batchnorm_gain(m)
        if type(m) in ACTIVATION_CONSTANTS or isinstance(m, nn.modules.dropout._DropoutNd):
            return ACTIVATION_CONSTANTS.get(type(m), 1.0)  # dropout: the identity in eval mode
        if isinstance(m, nn.LeakyReLU):
            return max(1.0, abs(m.negative_slope))
        if isinstance(m, nn.ELU):
            return max(1.0, abs(m.alpha))
        if isinstance(m, nn.PReLU):
            return max(1.0, float(m.weight.detach().abs().max()))
        if isinstance(m, nn.LogSoftmax):
            return _log_softmax_gain(shape, m.dim, row)
        if isinstance(m, rk_nn.Normalize):
            return float(1 / m.std.min())
        if isinstance(m, _POOL_MODULES):
            return _pool_gain(m, shape, row)
        if isinstance(m, _INPUT_NORMALISING):
            raise _Unbounded(
                f"{type(m).__name__} divides by the input's own statistics (not globally Lipschitz)"
            )
        raise _Unbounded(f"{type(m).__name__} (no rule for this layer)")

    def _functional_weighted(self, node: fx.Node, name: str) -> _Weighted:
        weight = self._constant(_arg(node, 1, "weight"))
        if name == "linear":
            return _Weighted(weight.detach(), "linear")
        keys = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))  # after the bias
        args = [
            self._constant(_arg(node, i + 3, k, default)) for i, (k, default) in enumerate(keys)
        ]
        return _Weighted(weight.detach(), "conv", *args)

    def _weighted(self, node: fx.Node, layer: _Weighted, row: LayerBound) -> float:
        """The operator norm; a BatchNorm that alone reads the output is folded in."""
        bn = self._foldable_batchnorm(node, layer)
        if bn is not None:
            layer = layer.scaled(bn[1])
            self.folded.add(bn[0])
        row.weight_shape = tuple(layer.weight.shape)
        if layer.kind == "linear":
            upper = float(linear_operator_norm(layer.weight))
            row.lower = upper if self.lower else None
        else:
            upper = self._conv_norm(layer, row)
        if bn is not None:
            row.note += f"{', ' if row.note else ''}BatchNorm {_row_name(bn[0])} folded in"
        return upper

    def _foldable_batchnorm(self, node: fx.Node, layer: _Weighted):
        """(the eval-mode BatchNorm that alone reads the layer's output, its channel scale), or
        None: a module, F.batch_norm, or aten.batch_norm as torch.export writes it."""
        users = list(node.users)
        if len(users) != 1 or _arg(users[0], 0, "input") is not node:
            return None
        user = users[0]
        if user.op == "call_module":
            bn = self.modules[user.target]
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
                return None
            scale = _bn_scale(bn)
        elif _op_name(user) == "batch_norm":
            try:
                scale = self._functional_batchnorm_scale(user)
            except _Unbounded:
                return None
        else:
            return None
        # per output channel: dim 1 of a linear's (N, F) output or a conv's (N, C, H, W) output
        rank = 2 if layer.kind == "linear" else 4
        if len(scale) != layer.out_channels() or len(self.seen.shapes.get(node, ())) != rank:
            return None
        return user, scale

    def _conv_norm(self, layer: _Weighted, row: LayerBound) -> float:
        row.stride = _pair(layer.stride, "stride")
        if layer.padding_mode not in ("zeros", "circular"):
            raise _Unbounded(f"padding_mode={layer.padding_mode!r}")
        padding = "circular" if layer.padding_mode == "circular" else layer.padding
        kwargs = dict(stride=layer.stride, padding=padding, dilation=layer.dilation,
                      groups=layer.groups)  # fmt: skip
        if layer.kind == "conv_transpose":
            kwargs |= dict(transposed=True, output_padding=layer.output_padding)
        size = row.input_size[-2:]
        upper = float(conv_operator_norm(layer.weight, size, method=self.method, **kwargs))
        row.note = "exact (circular)" if padding == "circular" else "zero padding: certified bound"
        if self.lower:
            row.lower = float(conv_lower_bound(layer.weight, size, **kwargs))
        return upper


def _basic_index(index) -> bool:
    """Ints, slices, None and Ellipsis select each element at most once."""
    if isinstance(index, tuple):
        return all(_basic_index(i) for i in index)
    return index is None or index is Ellipsis or isinstance(index, (int, slice))


def _log_softmax_gain(shape: tuple, dim, row: LayerBound) -> float:
    """The Jacobian I - 1 p^T has row sums 2 (1 - p_i) <= 2 and column sums 1 + (n - 2) p_j <=
    n - 1, so its norm is at most sqrt(2 (n - 1)) (Hoelder); without a dim, the largest one."""
    n = shape[dim] if dim is not None else max(shape[1:], default=1)
    row.note = f"log-softmax over {n}: sqrt(2 (n - 1))"
    return math.sqrt(2 * (n - 1)) if n > 1 else 0.0


def _batchnorm_gain(bn: nn.modules.batchnorm._BatchNorm) -> float:
    if bn.running_var is None:
        raise _Unbounded("BatchNorm without running statistics divides by the batch's own")
    return float(_bn_scale(bn).abs().max()) if bn.num_features else 0.0


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The eval-mode BatchNorm's per-channel multiplier gamma / sqrt(var + eps)."""
    return _norm_scale(bn.weight, bn.running_var, bn.eps)


def _norm_scale(weight: torch.Tensor | None, var: torch.Tensor, eps: float) -> torch.Tensor:
    scale = 1 / torch.sqrt(var.detach().double() + eps)
    return scale * weight.detach().double() if weight is not None else scale


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
