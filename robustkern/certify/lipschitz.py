"""Lipschitz-margin certificates (Tsuzuku, Sato & Sugiyama, "Lipschitz-Margin Training",
NeurIPS 2018): if the logits f are L-Lipschitz in L2, every difference f_y - f_j is
sqrt(2) L-Lipschitz (the row e_y - e_j has norm sqrt(2)), so no perturbation of L2 norm below
margin / (sqrt(2) L) can close the margin z_y - max_{j != y} z_j. L-inf follows from
||d||_2 <= sqrt(D) ||d||_inf over D input values: the L-inf radius is the L2 radius / sqrt(D).

L is ``lipschitz_table(model, input_shape).product``: the spectral package's bound on the L2
Lipschitz constant of the whole input-to-logits map, propagated through the traced graph
(products along a chain, sums at residual joins) from per-layer upper bounds: certified operator
norms for zero-padded convs (Gram iteration, rounding accounted), float64 SVD for linear layers
(exact to float64 rounding), BatchNorm's eval-mode scale, activations' maximal slopes, pools' and
Normalize's bounds. Each layer's bound holds for all inputs, so their composition bounds the
network globally and the radius holds for the model in eval mode (the mode used here) up to the
floating-point rounding of its own logits. A layer the table cannot bound is an error that
names it, never a radius.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.min_norm import robust_accuracy_curve
from robustkern.checks import check_choice, check_eps, check_inputs, check_logits
from robustkern.modes import eval_mode
from robustkern.spectral import lipschitz_table
from robustkern.types import Bounds, PerSample

CERTIFIED_NORMS = ("l2", "linf")


def lipschitz_bound(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """L: the certified global L2 Lipschitz bound of the model's logits on inputs of one
    sample's ``input_shape`` (the product of ``spectral.lipschitz_table``). A ValueError names
    the layers the table cannot bound."""
    table = lipschitz_table(model, input_shape)
    if not math.isfinite(table.product):
        notes = "; ".join(f"{r.name} ({r.kind}): {r.note}" for r in table.unbounded())
        raise ValueError(f"no Lipschitz certificate for this model: {notes or 'unbounded'}")
    return table.product


def lipschitz_radius(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    lipschitz: float | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """The certified radius per sample, margin / (sqrt(2) L) in L2 (divided by sqrt(D) in
    L-inf): no perturbation of smaller norm changes the model's class.

    Args:
        model: a classifier returning logits (N, classes); run in eval mode (the bound's
            mode), its mode restored after.
        x: the inputs (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,).
        norm: "l2" or "linf".
        lipschitz: L, when already known (``lipschitz_bound``); default: computed here.
        bounds: (lo, hi) the inputs must lie in (the radius ignores the box: it holds on the
            whole ball, so on its part inside the box too).

    Returns:
        float64 (N,) in the inputs' units; 0 where the model misclassifies (or ties).
    """
    labels = check_inputs(x, y, bounds)
    check_choice(norm, CERTIFIED_NORMS, "norm")
    if lipschitz is None:
        lipschitz = lipschitz_bound(model, tuple(x.shape[1:]))
    elif not (lipschitz >= 0 and math.isfinite(lipschitz)):
        raise ValueError(f"lipschitz must be a finite bound >= 0, got {lipschitz}")
    with eval_mode(model), torch.no_grad():
        logits = model(x)
    check_logits(logits, x.shape[0], labels)
    z = logits.double()  # the margin without float32 rounding
    others = z.scatter(1, y[:, None], -math.inf).amax(1)
    gap = (z.gather(1, y[:, None]).squeeze(1) - others).clamp_min(0)
    scale = math.sqrt(2) * lipschitz * (math.sqrt(x[0].numel()) if norm == "linf" else 1.0)
    return gap / scale if scale > 0 else torch.where(gap > 0, math.inf, 0.0)


def lipschitz_verified(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "l2",
    lipschitz: float | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """bool (N,): the model provably keeps class y everywhere in the ``norm`` ball of radius
    ``eps`` (a number or (N,) per-sample radii, inputs' units) around each sample: its
    certified radius exceeds eps. Other arguments as for ``lipschitz_radius``."""
    eps = check_eps(eps, x.shape[0])
    radius = lipschitz_radius(model, x, y, norm=norm, lipschitz=lipschitz, bounds=bounds)
    return radius > (eps.to(radius) if isinstance(eps, torch.Tensor) else eps)


def certified_curve(
    radius: torch.Tensor, eps_grid: list[float] | torch.Tensor
) -> list[tuple[float, float]]:
    """(eps, certified accuracy) for each eps of the grid from per-sample certified radii (0
    where misclassified): a sample counts at eps when its radius exceeds eps. The lower twin
    of ``attacks.robust_accuracy_curve`` on an attack's distances, and the same computation."""
    return robust_accuracy_curve(radius, eps_grid)
