"""The graph walk's rules for a layer or operation of one input-dependent tensor: activations
(their maximum slope, ``ACTIVATION_CONSTANTS``), shape changes and copies, reductions, indexing,
padding, dropout, log-softmax, ``Normalize``, and the dispatch to the conv / linear / BatchNorm
and pooling rules."""

from __future__ import annotations

import math

from torch import fx, nn

from robustkern import nn as rk_nn
from robustkern.spectral.nodes import _arg, _Unbounded
from robustkern.spectral.pooling import _POOL_MODULES, _POOLS, _pool_gain, _pool_module
from robustkern.spectral.rows import LayerBound
from robustkern.spectral.weighted import _batchnorm_gain, _Weighted, _WeightedRules

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
_INPUT_NORMALISING = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm,
)  # fmt: skip


class _LayerRules(_WeightedRules):
    """The rules for single-input nodes (a base of ``_GraphBounds``, whose ``seen``,
    ``modules``, ``_constant`` and ``_shape`` they use)."""

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
