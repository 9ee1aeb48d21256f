"""Interval bound propagation (Gowal et al. 2018): each node's elementwise lower and upper bound
over the input set, layer by layer, kept as the interval's centre and width: an affine map moves
the centre (with its bias) and scales the width by the absolute weights (two maps, no arithmetic
around them; non-negative maps such as pooling and reshapes take the width through themselves);
a ReLU with input upper bound u = centre + width / 2 and width w has upper bound relu(u) and
width min(relu(u), w) = relu(u) - relu(u - w), four elementwise passes in all.

While a node is a diagonal image of the input (the input itself, then per-channel scales such as
``Normalize`` and BatchNorm, and reshapes), its interval is exact. For an L2 input set the first
layer that mixes coordinates (Linear, Conv2d with zero padding) also gets each output's exact
range over the ball, ``centre +- eps * ||row||_2`` (the row norms by the same layer with squared
weights applied to the squared scales), intersected with the interval propagated from the box;
both contain every output, so their intersection does too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from robustkern.certify.graph import Node
from robustkern.certify.inputs import InputSet

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Intervals:
    """``centres[i]`` and ``widths[i]``: node i's interval, each (B, *shape); ``bounds[i]``: its
    (lower, upper), made when first read (most callers read a few nodes, IBP the last one);
    ``exact``: the nodes whose interval is the exact range of each coordinate over the input
    set."""

    centres: list[torch.Tensor] = field(default_factory=list)
    widths: list[torch.Tensor] = field(default_factory=list)
    exact: set[int] = field(default_factory=set)
    known: dict[int, Interval] = field(default_factory=dict)  # bounds made or given

    @property
    def bounds(self) -> _Bounds:
        return _Bounds(self)

    def add(self, centre: torch.Tensor, width: torch.Tensor) -> None:
        self.centres.append(centre)
        self.widths.append(width)


class _Bounds(Sequence):
    """The nodes' (lower, upper) as a list, each made from the centre and width on first use."""

    def __init__(self, intervals: Intervals) -> None:
        self.intervals = intervals

    def __len__(self) -> int:
        return len(self.intervals.centres)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i, ivs = range(len(self))[i], self.intervals
        if i not in ivs.known:
            centre, width = ivs.centres[i], ivs.widths[i]
            ivs.known[i] = torch.sub(centre, width, alpha=0.5), torch.add(centre, width, alpha=0.5)
        return ivs.known[i]


def propagate(nodes: list[Node], inputs: InputSet) -> Intervals:
    """Every node's interval over ``inputs``."""
    out = Intervals()
    # node -> (c, d): its value is c + d * (x' - x) (reshaped), c its value at x' = x
    diagonal: dict[int, Interval] = {}
    for i, node in enumerate(nodes):
        if node.kind == "input":
            lower, upper = inputs.lower, inputs.upper
            out.add(torch.add(lower, upper).mul_(0.5), upper - lower)
            out.known[i] = lower, upper
            diagonal[i] = inputs.x, torch.ones_like(inputs.x[:1])
            out.exact.add(i)
            continue
        j = node.inputs[0]
        if node.kind == "relu":
            top = torch.add(out.centres[j], out.widths[j], alpha=0.5).relu_()  # relu(upper)
            width = torch.minimum(top, out.widths[j])  # relu(u) - relu(l), l = u - width
            # without autograd the centre may overwrite relu(u): one new tensor less
            sub = torch.Tensor.sub_ if not top.requires_grad else torch.sub
            out.add(sub(top, width, alpha=0.5), width)
        elif node.kind == "add":
            k = node.inputs[1]
            out.add(out.centres[j] + out.centres[k], out.widths[j] + out.widths[k])
        else:
            out.add(node.op(out.centres[j]), node.op.abs_linear(out.widths[j]))
            if j in diagonal and node.op.diagonal:
                centre, scale = diagonal[j]
                diagonal[i] = node.op(centre), node.op.linear(scale)
                out.exact.add(i)
            elif j in diagonal and node.op.separable:
                if inputs.norm == "l2":
                    lower, upper = intersect(out.bounds[i], _ball(node, *diagonal[j], inputs.eps))
                    out.centres[i], out.widths[i] = (lower + upper) / 2, upper - lower
                    out.known[i] = lower, upper
                else:  # a box through one separable affine map: each row's range, exactly
                    out.exact.add(i)
    return out


def _ball(node: Node, centre: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor) -> Interval:
    """The range of each output over the L2 ball of radius eps (B,): the image of ``centre``
    plus or minus eps times its row's norm (the map's rows scaled by ``scale``, the diagonal map
    before it)."""
    tiny = torch.finfo(scale.dtype).tiny  # keeps sqrt's gradient finite at an all-zero row
    row_norm = node.op.sq_linear(scale.square()).clamp_min(tiny).sqrt()
    eps = eps.view(-1, *(1,) * len(node.shape))
    centre = node.op(centre)
    return centre - eps * row_norm, centre + eps * row_norm


def intersect(a: Interval, b: Interval) -> Interval:
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])
