"""``lipschitz_table``: the per-layer Lipschitz bounds of a model and the network's bound, by a
walk of its traced graph in order that propagates each node's bound from its inputs' (products
along a chain, sums where a residual branch joins, relative rows at joins) and fills the rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import fx, nn

from robustkern.checks import check_choice
from robustkern.modes import eval_mode
from robustkern.spectral.nodes import _arg, _is_shape_query, _op_name, _row_name, _Unbounded
from robustkern.spectral.norms import BOUND_METHODS
from robustkern.spectral.rows import LayerBound, LipschitzTable
from robustkern.spectral.rules import _LayerRules
from robustkern.spectral.tracing import (
    _first_line,
    _input_shapes,
    _Recorder,
    _run_once,
    _trace,
    _Untraceable,
)


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
      certified upper bound for zero padding (``method``, see the package docstring); with
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
    check_choice(method, BOUND_METHODS, "method")
    shape = tuple(input_shape)
    table = LipschitzTable(input_shape=shape)
    with eval_mode(model):
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


def _times(gain: float, bound: float) -> float:
    return 0.0 if gain == 0 else gain * bound  # a constant map stays 0 after an unbounded one


class _GraphBounds(_LayerRules):
    """Walks the traced graph in order. ``bound[n]``: an upper bound on the L2 Lipschitz
    constant of the map from the model input to n's output (to each tensor of it, for a tuple),
    or None where n's output does not depend on the input's values. ``idom[n]``: the latest node
    every path from the input to n passes through (a residual block's branch point). The joins
    (sums, concatenations, scaling by a constant) are bounded here, single-input nodes by the
    rules of its bases (``rules._LayerRules``, ``weighted._WeightedRules``)."""

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
