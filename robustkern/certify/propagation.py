"""Certified bounds on a model's logits over an input set: ``bounds`` (each logit's range),
``margin_bounds`` (logit_y - logit_j) and ``verified`` (no input of the set changes the class).

Methods:

* ``"ibp"``: interval bound propagation (Gowal et al. 2018); one pass, about the cost of three
  forwards.
* ``"crown"``: CROWN (Zhang et al. 2018) as published: every ReLU's input bounds by CROWN itself,
  a backward pass from each such layer with one row per neuron (chunked to ``max_elements``),
  then one from the logits. Its cost grows with the neurons times the layer sizes: fine for
  fully connected nets and small images, slow for wide convolutional layers on 28x28 inputs.
* ``"crown-ibp"``: the ReLUs' input bounds by IBP, the logits by one CROWN backward pass (the
  bound of Zhang et al.'s CROWN-IBP, 2020): one backward matrix of (N, classes, *layer) per
  layer.

The CROWN bounds (intermediate and final) are intersected with IBP's, so they are never looser.
Everything runs in ``dtype`` (float64 by default: the bounds are sound in exact arithmetic, and
float64 keeps rounding far below any margin that matters) and stays differentiable in the
model's parameters (certified training).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustkern.certify import graph, interval, linear
from robustkern.certify.inputs import InputSet
from robustkern.certify.lipschitz import lipschitz_verified
from robustkern.checks import (
    check_choice,
    check_eps,
    check_finite,
    check_inputs,
    check_labels,
    out_of_bounds_hint,
    warn_unusual_eps,
)
from robustkern.types import Bounds, PerSample

METHODS = ("ibp", "crown", "crown-ibp")
NORMS = ("linf", "l2")
MAX_ELEMENTS = 1 << 24  # entries of one backward matrix (samples x rows x layer): 128 MiB float64


def bounds(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    method: str = "crown",
    bounds: Bounds = (0.0, 1.0),
    dtype: torch.dtype | None = torch.float64,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on every logit over {x' : ||x' - x||_norm <= eps} within ``bounds``.

    Args:
        model: a classifier returning logits (N, classes), built from the supported layers
            (``graph.SUPPORTED``), in eval mode; any other layer is an ``UnsupportedLayerError``
            naming it.
        x: the inputs (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        eps: the radius in the inputs' units, a number or a 1-D tensor (N,) of per-sample radii.
        norm: "linf" or "l2".
        method: "ibp", "crown" or "crown-ibp" (see the module's docstring).
        bounds: (lo, hi) of valid inputs; the set is the ball intersected with this box.
        dtype: the computation's dtype (float64 by default); None: x's dtype (training).
        max_elements: the largest backward matrix (samples x rows x layer size) built at once;
            samples and neurons are processed in chunks to stay below it.

    Returns:
        (lower, upper), each (N, classes) in ``dtype``: lower <= model(x')_j <= upper for every
        x' of the set. Differentiable in the model's parameters: call under ``torch.no_grad()``
        when no gradient is wanted (the backward matrices are then freed as soon as used).
    """
    nodes, inputs = _prepare(model, x, eps, norm, method, bounds, dtype)
    classes = nodes[-1].shape[0]
    lowers, uppers = [], []
    for part in _chunks(nodes, inputs, 2 * classes, max_elements):
        ibp = interval.propagate(nodes, part)
        lower, upper = ibp.bounds[-1]
        if method != "ibp":
            eye = torch.eye(classes, dtype=part.x.dtype, device=part.x.device)
            spec = torch.cat([eye, -eye])[None]  # the same rows for every sample
            both = _crown(nodes, ibp, part, spec, method, max_elements)
            lower = torch.maximum(lower, both[:, :classes])
            upper = torch.minimum(upper, -both[:, classes:])
        lowers.append(lower)
        uppers.append(upper)
    return _cat(lowers, classes, inputs), _cat(uppers, classes, inputs)


def margin_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    method: str = "crown",
    bounds: Bounds = (0.0, 1.0),
    dtype: torch.dtype | None = torch.float64,
    max_elements: int = MAX_ELEMENTS,
) -> torch.Tensor:
    """Lower bounds (N, classes) on logit_y - logit_j over the input set, 0 at j = y.

    The differences are the specification propagated back from the logits (folded into the
    last layer), much tighter than ``lower_y - upper_j`` from ``bounds``; minus the result is the
    worst-case logit vector the certified-training losses take. Arguments as for ``bounds``, and
    y: int64 labels (N,).
    """
    nodes, inputs = _prepare(model, x, eps, norm, method, bounds, dtype)
    classes = nodes[-1].shape[0]
    check_labels(check_inputs(x, y, bounds), classes)
    margins, start = [], 0
    for part in _chunks(nodes, inputs, classes, max_elements):
        labels = y[start : start + len(part.x)]
        start += len(part.x)
        ibp = interval.propagate(nodes, part)
        one_hot = F.one_hot(labels, classes).to(part.x.dtype)
        spec = one_hot[:, None, :] - torch.eye(classes, dtype=part.x.dtype, device=x.device)
        lower, upper = ibp.bounds[-1]
        worst = lower.gather(1, labels[:, None]) - upper  # lower_y - upper_j
        margin = torch.maximum(worst, linear.interval_lower(nodes, spec, ibp.bounds))
        if method != "ibp":
            margin = torch.maximum(margin, _crown(nodes, ibp, part, spec, method, max_elements))
        margins.append(margin.masked_fill(one_hot.bool(), 0.0))
    return _cat(margins, classes, inputs)


def verified(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    method: str = "crown",
    bounds: Bounds = (0.0, 1.0),
    dtype: torch.dtype | None = torch.float64,
    max_elements: int = MAX_ELEMENTS,
) -> torch.Tensor:
    """bool (N,): the model classifies x as y, and no input of the set changes the class.

    With a bound-propagation method, every margin lower bound of ``margin_bounds`` is positive;
    with ``method="lipschitz"``, the Lipschitz-margin radius exceeds eps
    (``lipschitz.lipschitz_verified``; dtype and max_elements do not apply). Other arguments as
    for ``margin_bounds``.
    """
    check_choice(method, (*METHODS, "lipschitz"), "method")
    if method == "lipschitz":
        return lipschitz_verified(model, x, y, eps=eps, norm=norm, bounds=bounds)
    with torch.no_grad():
        lower = margin_bounds(model, x, y, eps=eps, norm=norm, method=method, bounds=bounds,
                              dtype=dtype, max_elements=max_elements)  # fmt: skip
        correct = model(x).argmax(1) == y
    others = lower.masked_fill(F.one_hot(y, lower.shape[1]).bool(), math.inf)
    return (others > 0).all(1) & correct


def _prepare(model, x, eps, norm, method, box, dtype) -> tuple[list[graph.Node], InputSet]:
    """The checked arguments: the model's graph and the input set in the computation's dtype."""
    check_choice(norm, NORMS, "norm")
    check_choice(method, METHODS, "method")
    _check_x(x, box)
    eps = check_eps(eps, len(x), finite=True)
    warn_unusual_eps(eps, norm, box, x[0].numel() if len(x) else 0)
    dtype = dtype or x.dtype
    nodes = graph.build(model, x, dtype)
    eps = torch.as_tensor(eps, dtype=dtype, device=x.device).expand(len(x))
    return nodes, InputSet.around(x.detach().to(dtype), eps, norm, box)


def _check_x(x: torch.Tensor, box: Bounds) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x must be a floating tensor (N, ...), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    if not (box[0] <= box[1]):
        raise ValueError(f"bounds=(lo, hi) needs lo <= hi, got {box}")
    if x.numel():
        # one pass and one sync: NaN and inf show in the extremes (aminmax propagates NaN)
        lo, hi = torch.stack(torch.aminmax(x)).double().tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(x)  # raises, naming the rows
        if not (box[0] <= lo and hi <= box[1]):
            raise ValueError(
                f"x must lie within bounds={tuple(box)}, got values in [{lo:.6g}, {hi:.6g}]: "
                + out_of_bounds_hint(lo, hi, box)
            )


def _chunks(nodes, inputs: InputSet, rows: int, max_elements: int):
    """The input set in parts of samples whose backward matrices (rows x the largest layer per
    sample) fit in ``max_elements``."""
    per_sample = rows * max(math.prod(n.shape) for n in nodes)
    size = max(1, max_elements // per_sample)
    for start in range(0, len(inputs.x), size):
        part = slice(start, start + size)
        yield InputSet(inputs.x[part], inputs.eps[part], inputs.norm, inputs.lower[part],
                       inputs.upper[part])  # fmt: skip


def _cat(parts: list[torch.Tensor], classes: int, inputs: InputSet) -> torch.Tensor:
    if not parts:  # no samples
        return inputs.x.new_zeros(0, classes)
    return torch.cat(parts)


def _crown(nodes, ibp: interval.Intervals, inputs: InputSet, spec, method, max_elements):
    """CROWN's lower bound (B, K) on spec . logits, spec (B or 1, K, classes)."""
    relu_bounds = {}
    for j in sorted({n.inputs[0] for n in nodes if n.kind == "relu"}):
        relu_bounds[j] = ibp.bounds[j]
        if method == "crown" and j not in ibp.exact:
            relu_bounds[j] = _tighten(nodes, j, relu_bounds, inputs, max_elements)
    return linear.lower_bound(nodes, len(nodes) - 1, spec, relu_bounds, inputs)


def _tighten(nodes, j: int, relu_bounds, inputs: InputSet, max_elements: int):
    """Node j's IBP bounds (B, *shape) intersected with CROWN's where they can matter: the
    neurons IBP leaves unstable (l < 0 < u) in some sample. A stable ReLU's relaxation is the
    ReLU itself whatever its bounds, so tighter bounds there change nothing. One backward row
    per neuron and sign, in chunks that keep the backward matrices within ``max_elements``."""
    lower, upper = (b.flatten(1) for b in relu_bounds[j])
    neurons = ((lower < 0) & (upper > 0)).any(0).nonzero().squeeze(1)
    widest = max(math.prod(n.shape) for n in nodes[: j + 1])
    step = max(1, max_elements // (2 * len(lower) * widest))
    lower, upper = lower.clone(), upper.clone()
    for rows in neurons.split(step):
        unit = lower.new_zeros(len(rows), lower.shape[1])
        unit[torch.arange(len(rows), device=rows.device), rows] = 1
        spec = torch.cat([unit, -unit]).view(1, 2 * len(rows), *nodes[j].shape)
        both = linear.lower_bound(nodes, j, spec, relu_bounds, inputs)
        lower[:, rows] = torch.maximum(lower[:, rows], both[:, : len(rows)])
        upper[:, rows] = torch.minimum(upper[:, rows], -both[:, len(rows) :])
    shape = (len(lower), *nodes[j].shape)
    return lower.view(shape), upper.view(shape)
