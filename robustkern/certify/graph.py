"""The model as bound propagation walks it: torch.fx tracing (robustkern.spectral's tracer, which
keeps nn layers and ``Normalize`` whole), one recording forward for each node's shape, and each
node turned into an affine map, a ReLU or the sum of two nodes (residual blocks). Anything else
is an ``UnsupportedLayerError`` that names the layer: a bound that skipped a layer would be wrong
without a word."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from robustkern import nn as rk_nn
from robustkern.certify import layers
from robustkern.spectral.nodes import _is_shape_query, _op_name, _row_name
from robustkern.spectral.tracing import _Recorder, _trace, _Untraceable

SUPPORTED = (
    "Linear, Conv2d, ReLU, BatchNorm1d/2d in eval mode, Flatten, AvgPool2d, AdaptiveAvgPool2d, "
    "Identity, Dropout in eval mode, robustkern.nn.Normalize and the sum of two layers' outputs "
    "(residual blocks)"
)
_ALIASES = frozenset({"contiguous", "clone"})  # functions that return their input's values
_RESHAPES = frozenset({"flatten", "view", "reshape"})
_PROBE = 2  # samples in the recording forward: a reshape that mixes samples shows up


class UnsupportedLayerError(ValueError):
    """The model has a layer or operation bound propagation has no rule for."""


@dataclass
class Node:
    """One step of the graph: ``kind`` "input", "affine" (``op``), "relu" or "add"; ``inputs``
    index earlier nodes; ``shape`` is one sample's output shape; ``name`` the layer's path."""

    kind: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str
    op: layers.AffineMap | None = None


def build(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> list[Node]:
    """The nodes of ``model``'s forward in execution order (the input first, the output last),
    their weights in ``dtype``; x (N, ...) gives the input's shape."""
    _check_modes(model)
    try:
        root, graph = _trace(model)
    except _Untraceable as e:
        raise UnsupportedLayerError(f"bound propagation needs a traceable model: {e}") from None
    recorder = _Recorder(root, graph)
    with torch.no_grad():
        recorder.run(
            torch.zeros(_PROBE, *x.shape[1:], dtype=_model_dtype(model, x), device=x.device)
        )
    return _Builder(root, recorder, dtype).walk(graph)


def _model_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    return x.dtype if p is None else p.dtype


def _check_modes(model: nn.Module) -> None:
    """BatchNorm and dropout must be in eval mode: in train mode their output depends on the
    batch or on random masks, not on each input alone."""
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training:
                raise UnsupportedLayerError(
                    f"{_layer(path, m)} is in train mode (batch statistics): call model.eval()"
                )
            if m.running_mean is None:
                raise UnsupportedLayerError(
                    f"{_layer(path, m)} has track_running_stats=False and uses batch statistics "
                    "even in eval mode"
                )
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise UnsupportedLayerError(
                f"{_layer(path, m)} is in train mode (random masks): call model.eval()"
            )


def _layer(path: str, m: nn.Module) -> str:
    return f"layer {path or '(model)'!r} ({type(m).__name__})"


class _Builder:
    def __init__(self, root: nn.Module, recorder: _Recorder, dtype: torch.dtype) -> None:
        self.root, self.recorder, self.dtype = root, recorder, dtype
        self.nodes: list[Node] = []
        self.index: dict[fx.Node, int] = {}  # fx node -> the node holding its value

    def walk(self, graph: fx.Graph) -> list[Node]:
        for n in graph.nodes:
            if n.op == "placeholder":
                if self.nodes:
                    raise UnsupportedLayerError(
                        f"the model's forward takes a second input {n.name!r}; bound "
                        "propagation bounds models of one input"
                    )
                self._add(n, "input", (), None)
            elif n.op == "output":
                return self._output(n)
            elif n.op == "call_module":
                self._module(n, self.root.get_submodule(n.target))
            elif n.op in ("call_function", "call_method"):
                self._function(n)
            else:  # get_attr: a parameter used by functional code
                raise self._unsupported(n, "no rule for this operation")
        raise UnsupportedLayerError("the traced graph has no output")

    def _output(self, n: fx.Node) -> list[Node]:
        out = n.args[0]
        if not isinstance(out, fx.Node) or out not in self.index:
            raise UnsupportedLayerError("the model must return one tensor of logits (N, classes)")
        i = self.index[out]
        if i != len(self.nodes) - 1:  # keep "the output is the last node"
            shape = self.nodes[i].shape
            self.nodes.append(Node("affine", (i,), shape, "output", layers.Reshape(shape, shape)))
        if len(self.nodes[-1].shape) != 1:
            raise UnsupportedLayerError(
                f"the model returns {(_PROBE, *self.nodes[-1].shape)} for {_PROBE} inputs; "
                "bound propagation needs logits (N, classes)"
            )
        return self.nodes

    def _add(self, n: fx.Node, kind: str, inputs, op, name: str | None = None) -> None:
        shape = self.recorder.shapes[n][1:]
        self.index[n] = len(self.nodes)
        self.nodes.append(Node(kind, tuple(inputs), shape, name or _row_name(n), op))

    def _source(self, n: fx.Node, arg) -> int:
        """The node index of a tensor argument that depends on the input."""
        if not isinstance(arg, fx.Node) or arg not in self.index:
            raise self._unsupported(n, "an operand is a constant, not a layer's output")
        return self.index[arg]

    def _shapes(self, n: fx.Node, src: int) -> tuple[tuple, tuple]:
        return self.nodes[src].shape, self.recorder.shapes[n][1:]

    def _module(self, n: fx.Node, m: nn.Module) -> None:
        src = self._source(n, n.args[0] if n.args else None)
        shape_in, shape_out = self._shapes(n, src)
        if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)):
            self.index[n] = src  # Dropout: eval mode (checked), the identity
            return
        if isinstance(m, nn.ReLU):
            return self._add(n, "relu", (src,), None)
        if isinstance(m, nn.Linear):
            op = layers.LinearMap(m, shape_in, shape_out, self.dtype)
        elif isinstance(m, nn.Conv2d):
            op = layers.ConvMap(m, shape_in, shape_out, self.dtype)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            op = layers.batchnorm_map(m, shape_in, self.dtype)
        elif isinstance(m, rk_nn.Normalize):
            std = m.std.to(self.dtype)
            op = layers.ScaleShift(1 / std, -m.mean.to(self.dtype) / std, shape_in)
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            op = layers.PoolMap(m, shape_in, shape_out)
        elif isinstance(m, nn.Flatten):
            op = self._reshape(n, shape_in, shape_out)
        else:
            raise self._unsupported(n, "no rule for this layer")
        self._add(n, "affine", (src,), op)

    def _function(self, n: fx.Node) -> None:
        name = _op_name(n)
        if _is_shape_query(n) or not any(a in self.index for a in n.all_input_nodes):
            return  # shapes and constants: arguments of the operations below
        if name == "add" and len(n.args) == 2 and not n.kwargs:
            return self._add(n, "add", [self._source(n, a) for a in n.args], None)
        src = self._source(n, n.args[0] if n.args else None)
        if name in _ALIASES:
            self.index[n] = src
        elif name == "relu":
            self._add(n, "relu", (src,), None)
        elif name in _RESHAPES:
            self._add(n, "affine", (src,), self._reshape(n, *self._shapes(n, src)))
        else:
            raise self._unsupported(n, "no rule for this operation")

    def _reshape(self, n: fx.Node, shape_in, shape_out) -> layers.Reshape:
        if self.recorder.shapes[n][0] != _PROBE or math.prod(shape_in) != math.prod(shape_out):
            raise self._unsupported(n, "the reshape mixes samples of the batch")
        return layers.Reshape(shape_in, shape_out)

    def _unsupported(self, n: fx.Node, why: str) -> UnsupportedLayerError:
        if n.op == "call_module":
            what = _layer(n.target, self.root.get_submodule(n.target))
        else:
            what = f"operation {_row_name(n)!r} ({_op_name(n) or n.target})"
        return UnsupportedLayerError(
            f"bound propagation cannot bound {what}: {why}. Supported: {SUPPORTED}"
        )
