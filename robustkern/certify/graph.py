"""The model as bound propagation walks it: torch.fx tracing (robustkern.spectral's tracer, which
keeps nn layers and ``Normalize`` whole), one recording forward for each node's shape, and each
node turned into an affine map, a ReLU or the sum of two nodes (residual blocks). Anything else
is an ``UnsupportedLayerError`` that names the layer: a bound that skipped a layer would be wrong
without a word.

Tracing costs about half a forward of a small network, and certified training bounds the same
model at every step, so the traced plan (each node's kind, inputs, shape and the module its map
reads) is kept per model, input shape and device while the model's structure stays the same
(``_structure``); every ``build`` still makes the affine maps afresh from the modules' current
parameters and buffers, so bounds follow the weights as they train."""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
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
_SCALARS = frozenset({bool, int, float, str, type(None)})
_PLANS_PER_MODEL = 8  # input shapes and devices kept per model before its plans are dropped


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
    their weights in ``dtype`` read from the model now; x (N, ...) gives the input's shape.

    The trace behind them is reused while the model's submodules, their plain attributes and
    their parameters' shapes stay the same (``_structure``). A forward whose control flow
    depends on anything else (a global, a monkey-patched method) is not re-traced when that
    changes: bound a copy of the model instead."""
    _check_modes(model)
    plan = _plan(model, x)
    return [Node(n.kind, n.inputs, n.shape, n.name, make and make(dtype)) for n, make in plan]


_Plan = list[tuple[Node, Callable[[torch.dtype], layers.AffineMap] | None]]
# model -> {(input shape, device): (its _structure, plan)}; weak keys: the plans hold the
# model's submodules, never the model itself, so a model no longer used frees its plans
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(model: nn.Module, x: torch.Tensor) -> _Plan:
    """The traced plan for inputs shaped like x's samples, from the cache where it is valid."""
    structure, key = _structure(model), (x.shape[1:], x.device)
    plans = _plans.get(model, {})
    if key in plans and plans[key][0] == structure:
        return plans[key][1]
    try:
        root, graph = _trace(model)
    except _Untraceable as e:
        raise UnsupportedLayerError(f"bound propagation needs a traceable model: {e}") from None
    recorder = _Recorder(root, graph)
    with torch.no_grad():
        recorder.run(
            torch.zeros(_PROBE, *x.shape[1:], dtype=_model_dtype(model, x), device=x.device)
        )
    plan = _Builder(root, recorder).walk(graph)
    if root is model:  # a one-layer model is traced inside a wrapper that its plan would keep
        plans = _plans.setdefault(model, {})
        if len(plans) >= _PLANS_PER_MODEL:
            plans.clear()
        plans[key] = structure, plan
    return plan


def _structure(model: nn.Module) -> tuple:
    """What a traced plan depends on besides the forward's code: every submodule's identity, type
    (a freed module's id can be reused) and plain attributes (a convolution's stride, a user's
    flag; not the train/eval mode, which ``_check_modes`` reads at every call) and its
    parameters' and buffers' shapes."""
    return tuple(
        (path, id(m), type(m),
         [(k, v) for k, v in vars(m).items() if k != "training" and _plain(v)],
         [(k, None if t is None else t.shape)
          for k, t in (*m._parameters.items(), *m._buffers.items())])
        for path, m in model.named_modules()
    )  # fmt: skip


def _plain(v) -> bool:
    """A number, string, None or tuple of them: compared by value (tensors are not)."""
    t = type(v)
    return t in _SCALARS or (t is tuple and all(map(_plain, v)))


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


def _same(op: layers.AffineMap) -> Callable[[torch.dtype], layers.AffineMap]:
    """The maker of a map without parameters (pooling, reshapes): the same map in every dtype."""
    return lambda dtype: op


def _normalize_map(m: rk_nn.Normalize, shape, dtype: torch.dtype) -> layers.ScaleShift:
    std = m.std.to(dtype)
    return layers.ScaleShift(1 / std, -m.mean.to(dtype) / std, shape)


class _Builder:
    """The plan: nodes without maps, each affine one beside the maker of its map from the live
    module in a dtype (module-level functions and partials: a plan must not hold the builder,
    whose root may be the model itself)."""

    def __init__(self, root: nn.Module, recorder: _Recorder) -> None:
        self.root, self.recorder = root, recorder
        self.nodes: list[Node] = []
        self.makers: list[Callable | None] = []
        self.index: dict[fx.Node, int] = {}  # fx node -> the node holding its value

    def walk(self, graph: fx.Graph) -> _Plan:
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
            self.nodes.append(Node("affine", (i,), shape, "output"))
            self.makers.append(_same(layers.Reshape(shape, shape)))
        if len(self.nodes[-1].shape) != 1:
            raise UnsupportedLayerError(
                f"the model returns {(_PROBE, *self.nodes[-1].shape)} for {_PROBE} inputs; "
                "bound propagation needs logits (N, classes)"
            )
        return list(zip(self.nodes, self.makers, strict=True))

    def _add(self, n: fx.Node, kind: str, inputs, make=None) -> None:
        shape = self.recorder.shapes[n][1:]
        self.index[n] = len(self.nodes)
        self.nodes.append(Node(kind, tuple(inputs), shape, _row_name(n)))
        self.makers.append(make)

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
            return self._add(n, "relu", (src,))
        if isinstance(m, nn.Linear):
            make = functools.partial(layers.LinearMap, m, shape_in, shape_out)
        elif isinstance(m, nn.Conv2d):
            make = functools.partial(layers.ConvMap, m, shape_in, shape_out)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            make = functools.partial(layers.batchnorm_map, m, shape_in)
        elif isinstance(m, rk_nn.Normalize):
            make = functools.partial(_normalize_map, m, shape_in)
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            make = _same(layers.PoolMap(m, shape_in, shape_out))
        elif isinstance(m, nn.Flatten):
            make = _same(self._reshape(n, shape_in, shape_out))
        else:
            raise self._unsupported(n, "no rule for this layer")
        self._add(n, "affine", (src,), make)

    def _function(self, n: fx.Node) -> None:
        name = _op_name(n)
        if _is_shape_query(n) or not any(a in self.index for a in n.all_input_nodes):
            return  # shapes and constants: arguments of the operations below
        if name == "add" and len(n.args) == 2 and not n.kwargs:
            return self._add(n, "add", [self._source(n, a) for a in n.args])
        src = self._source(n, n.args[0] if n.args else None)
        if name in _ALIASES:
            self.index[n] = src
        elif name == "relu":
            self._add(n, "relu", (src,))
        elif name in _RESHAPES:
            self._add(n, "affine", (src,), _same(self._reshape(n, *self._shapes(n, src))))
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
