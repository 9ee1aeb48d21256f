"""Conv, linear and BatchNorm layers inside the table: ``_Weighted`` (the operator of a module or
a functional call) and the rules that bound it by its operator norm, with an eval-mode BatchNorm
that alone reads its output folded into the weight, and a BatchNorm otherwise by its diagonal
scale."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import fx, nn

from robustkern.spectral.nodes import _arg, _op_name, _row_name, _Unbounded
from robustkern.spectral.norms import (
    Padding,
    Pair,
    _pair,
    conv_lower_bound,
    conv_operator_norm,
    linear_operator_norm,
)
from robustkern.spectral.rows import LayerBound


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


class _WeightedRules:
    """The graph walk's rules for conv, linear and BatchNorm layers (a base of ``_GraphBounds``,
    whose ``seen``, ``modules``, ``folded``, ``lower``, ``method`` and ``_constant`` they use)."""

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
