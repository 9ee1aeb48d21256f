"""Interval bound propagation (Gowal et al. 2018): each node's elementwise lower and upper bound
over the input set, layer by layer; an affine map moves the interval's centre and scales its
radius by the absolute weights (two maps), and one with non-negative weights (pooling, reshapes)
takes the lower bound to the lower and the upper to the upper (two maps, no arithmetic around
them).

While a node is a diagonal image of the input (the input itself, then per-channel scales such as
``Normalize`` and BatchNorm, and reshapes), its interval is exact. For an L2 input set the first
layer that mixes coordinates (Linear, Conv2d with zero padding) also gets each output's exact
range over the ball, ``centre +- eps * ||row||_2`` (the row norms by the same layer with squared
weights applied to the squared scales), intersected with the interval propagated from the box;
both contain every output, so their intersection does too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustkern.certify.graph import Node
from robustkern.certify.inputs import InputSet
from robustkern.certify.layers import AffineMap

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Intervals:
    """``bounds[i]``: node i's (lower, upper), each (B, *shape); ``exact``: the nodes whose
    interval is the exact range of each coordinate over the input set."""

    bounds: list[Interval]
    exact: set[int] = field(default_factory=set)


def propagate(nodes: list[Node], inputs: InputSet) -> Intervals:
    """Every node's interval over ``inputs``."""
    out = Intervals([])
    # node -> (c, d): its value is c + d * (x' - x) (reshaped), c its value at x' = x
    diagonal: dict[int, Interval] = {}
    for i, node in enumerate(nodes):
        if node.kind == "input":
            out.bounds.append((inputs.lower, inputs.upper))
            diagonal[i] = inputs.x, torch.ones_like(inputs.x[:1])
            out.exact.add(i)
            continue
        ins = [out.bounds[j] for j in node.inputs]
        if node.kind == "relu":
            out.bounds.append((ins[0][0].clamp_min(0), ins[0][1].clamp_min(0)))
        elif node.kind == "add":
            out.bounds.append((ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]))
        else:
            out.bounds.append(_affine(node, *ins[0]))
            j = node.inputs[0]
            if j in diagonal and node.op.diagonal:
                centre, scale = diagonal[j]
                diagonal[i] = node.op(centre), node.op.linear(scale)
                out.exact.add(i)
            elif j in diagonal and node.op.separable:
                if inputs.norm == "l2":
                    ball = _ball(node, *diagonal[j], inputs.eps)
                    out.bounds[i] = intersect(out.bounds[i], ball)
                else:  # a box through one separable affine map: each row's range, exactly
                    out.exact.add(i)
    return out


def _affine(node: Node, lower: torch.Tensor, upper: torch.Tensor) -> Interval:
    if type(node.op).abs_linear is AffineMap.abs_linear:  # the contract: non-negative weights
        return node.op(lower), node.op(upper)
    centre, radius = node.op((upper + lower) / 2), node.op.abs_linear((upper - lower) / 2)
    return centre - radius, centre + radius


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
