"""Backward linear bounds (CROWN: Zhang et al. 2018, "Efficient Neural Network Robustness
Certification with General Activation Functions").

A specification ``spec . z_t`` of a node t (K rows per sample) is carried back to the input as a
linear function ``A . x' + c`` that lower-bounds it on the input set: through an affine node
``A -> A W`` (and ``c += A b``), through a sum to both operands, through a ReLU with input bounds
[l, u] by its linear relaxation (upper: the chord u / (u - l) (z - l); lower: slope 1 where
u >= -l, else 0; exact where the ReLU is stable), choosing for each coefficient the side that
keeps the bound below. The input set's ``min_linear`` then turns ``A . x' + c`` into a number.
An upper bound is minus the lower bound of ``-spec``.
"""

from __future__ import annotations

import torch

from robustkern.certify.graph import Node
from robustkern.certify.inputs import InputSet
from robustkern.certify.interval import Interval


def lower_bound(
    nodes: list[Node],
    target: int,
    spec: torch.Tensor,
    relu_bounds: dict[int, Interval],
    inputs: InputSet,
) -> torch.Tensor:
    """A lower bound (B, K) on ``spec . z_target`` over ``inputs``, for spec (B or 1, K,
    *shape of the target): a leading 1 is shared by the batch until a ReLU makes the rows
    per-sample. ``relu_bounds[j]``: the bounds of node j for every ReLU whose input j is an
    ancestor of the target."""
    pending = {target: spec}
    const = spec.new_zeros(inputs.x.shape[0], spec.shape[1])
    for i in range(target, 0, -1):  # reverse execution order: every consumer comes first
        a = pending.pop(i, None)
        if a is None:
            continue
        node = nodes[i]
        if node.kind == "affine":
            const = const + node.op.bias_dot(a)
            _send(pending, node.inputs[0], _transpose(node, a))
        elif node.kind == "add":
            for j in node.inputs:
                _send(pending, j, a)
        else:
            a, c = _relu(a, *relu_bounds[node.inputs[0]])
            const = const + c
            _send(pending, node.inputs[0], a)
    if 0 not in pending:  # the target does not depend on the input
        pending[0] = spec.new_zeros(1, spec.shape[1], *inputs.x.shape[1:])
    return inputs.min_linear(pending[0], const)


def _send(pending: dict[int, torch.Tensor], j: int, a: torch.Tensor) -> None:
    pending[j] = pending[j] + a if j in pending else a


def _transpose(node: Node, a: torch.Tensor) -> torch.Tensor:
    """a (B, K, *out) -> (B, K, *in) through the node's linear part."""
    b, k = a.shape[:2]
    return node.op.transpose(a.reshape(b * k, *node.op.out_shape)).reshape(b, k, *node.op.in_shape)


def _relu(a: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """a (B or 1, K, *S) through relu(z), l <= z <= u (B, *S): the new coefficients on z and
    the constant (B, K) the upper relaxation's intercept adds."""
    neg_l, pos_u = lower.clamp_max(0), upper.clamp_min(0)
    tiny = torch.finfo(a.dtype).tiny
    # upper line s z - s l, s = u / (u - l) where unstable; 1 (l >= 0) or 0 (u <= 0) otherwise
    slope_up = pos_u / (pos_u - neg_l).clamp_min(tiny)
    # lower line: slope 1 or 0, whichever leaves the smaller area (u >= -l: 1); exact if stable
    slope_low = ((upper + lower >= 0) & (upper > 0)).to(a.dtype)
    new = a * torch.where(a >= 0, slope_low[:, None], slope_up[:, None])
    intercept = (-slope_up * neg_l).flatten(1)[..., None]  # (B, D, 1)
    const = (a.clamp(max=0).flatten(2) @ intercept).squeeze(-1)
    return new, const


def interval_lower(nodes: list[Node], spec: torch.Tensor, bounds: list[Interval]) -> torch.Tensor:
    """A lower bound (B, K) on ``spec . z_out`` from the nodes' intervals, with the spec folded
    into the last layer when it is affine (Gowal et al.'s elision of the last layer: tighter than
    combining the output's intervals)."""
    last = nodes[-1]
    a, const, (lower, upper) = spec, 0, bounds[-1]
    if last.kind == "affine":
        a, const, (lower, upper) = (
            _transpose(last, spec),
            last.op.bias_dot(spec),
            bounds[last.inputs[0]],
        )
    a = a.flatten(2)
    mid, rad = (
        ((upper + lower) / 2).flatten(1)[..., None],
        ((upper - lower) / 2).flatten(1)[..., None],
    )
    return (a @ mid - a.abs() @ rad).squeeze(-1) + const
