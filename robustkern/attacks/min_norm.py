"""Minimum-norm adversarial examples: the fast minimum-norm attack (FMN, Pintor et al., "Fast
Minimum-norm Adversarial Attacks through Adaptive Norm Constraints", NeurIPS 2021), L-inf, L2,
L1 and L0, and the measures built on its per-sample distances: the robust-accuracy-vs-eps curve
from one run, and Szegedy et al.'s average minimum distortion.

FMN walks along the normalised gradient of the logit margin while a per-sample radius shrinks
towards the decision boundary (by a factor 1 - gamma after an adversarial iterate, never above
the best norm found) or grows (by 1 + gamma once something was found, or to 1 + gamma times the
linearised distance to the boundary before that: the paper's estimate without the factor lands
exactly on the boundary of a locally linear model, a point that is not yet adversarial, and
stays there); every iterate is projected onto the radius with the
fused projection op and clipped to the bounds. gamma and the step decay on a cosine schedule.

L1 uses the box-aware L1 projection (``ops.l1_project_``) and the L-inf norm of the gradient
for the distance estimate. L0 counts changed coordinates (elements of x; ``sparse_rs`` counts
pixels instead) and follows the paper's integer radius: it starts at 1, drops by at least one
(and by the factor 1 - gamma, rounded down) after an adversarial iterate and grows by at least
one otherwise; the projection keeps each sample's ``radius`` largest changes, then clips to the
bounds, in the paper's order (clipping first, the exact projection onto the L0 ball within the
box, found larger distances on 17 of the 359 digits test images and smaller on 8, small CNN).
"""

from __future__ import annotations

import math

import torch

from robustkern import ops
from robustkern.attacks.gradients import loss_and_grad
from robustkern.attacks.losses import is_adversarial, margin
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_choice, check_inputs
from robustkern.types import Bounds

MIN_NORMS = ("linf", "l2", "l1", "l0")
_DUAL = {"linf": 1, "l2": 2, "l1": math.inf}  # the gradient's norm turning a margin into a distance


def min_norm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: int = 100,
    gamma: tuple[float, float] = (0.05, 0.001),
    alpha: tuple[float, float] | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The fast minimum-norm attack (FMN, Pintor et al. 2021): the smallest adversarial
    perturbation it finds per sample, by steps towards the decision boundary inside a radius
    that shrinks once adversarial and grows while not.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        norm: "linf", "l2", "l1" or "l0": the norm minimised. L0 counts the coordinates
            (elements of x) that change, every channel apart (``sparse_rs`` counts pixels).
        steps: iterations (all run on every sample).
        gamma, alpha: (initial, final) radius-change factor and step size (along the unit-L2
            gradient) on the cosine schedule; alpha defaults to the paper's (1.0, 0.01), in
            units of the bounds' width.
        targeted: reach the classes in ``y``. bounds: (lo, hi) of valid inputs.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the distances
            found (0 for a sample already misclassified, inf where none, and x_adv is x there),
            what ``robust_accuracy_curve`` reads; queries are steps + 1.

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    check_choice(norm, MIN_NORMS, "norm")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if alpha is None:
        alpha = (hi - lo, (hi - lo) / 100)
    x_nat = x.detach()
    n = x.shape[0]
    project = _projection(norm)
    largest = _largest_distance(x_nat, norm, lo, hi)
    radius = torch.full((n,), 1.0 if norm == "l0" else math.inf, device=x.device)
    best_norm = torch.full((n,), math.inf, device=x.device)
    best = x_nat.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_adv = x_nat.clone()

    def boundary_loss(logits):  # < 0 exactly when adversarial (ties aside)
        m = margin(logits, y)
        return -m if targeted else m

    for k in range(steps):
        cosine = (1 + math.cos(math.pi * k / steps)) / 2
        g = gamma[1] + (gamma[0] - gamma[1]) * cosine
        a = alpha[1] + (alpha[0] - alpha[1]) * cosine
        grad, logits, loss = loss_and_grad(model, x_adv, boundary_loss, labels)
        grad = _feasible(grad, x_adv, lo, hi)
        dist = _distance(x_adv - x_nat, norm)
        adv = is_adversarial(logits, y, targeted)
        smaller = adv & (dist < best_norm)
        best_norm = torch.where(smaller, dist, best_norm)
        best = torch.where(broadcast(smaller, best), x_adv, best)
        found |= adv
        if norm == "l0":
            radius = _l0_radius(radius, adv, best_norm, g)
        else:
            dual = grad.flatten(1).float().norm(p=_DUAL[norm], dim=1).clamp_min(1e-12)
            to_boundary = loss.abs() / dual
            radius = torch.where(
                adv,
                torch.minimum(radius * (1 - g), best_norm),
                torch.where(found, radius * (1 + g), (dist + to_boundary) * (1 + g)),
            )
        radius = torch.minimum(radius, largest)
        step = grad / broadcast(grad.flatten(1).float().norm(dim=1).clamp_min(1e-12), grad)
        x_adv = x_adv - a * step.to(x_adv.dtype)
        project(x_adv, x_nat, radius, lo, hi)
    # the last iterate has not been scored yet
    with torch.no_grad():
        adv = is_adversarial(model(x_adv), y, targeted)
    dist = _distance(x_adv - x_nat, norm)
    smaller = adv & (dist < best_norm)
    best_norm = torch.where(smaller, dist, best_norm)
    best = torch.where(broadcast(smaller, best), x_adv, best)
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm=norm, targeted=targeted, success=best_norm.isfinite(), norms=best_norm,
                  queries=steps + 1)  # fmt: skip


def _projection(norm: str):
    """``project(x_adv, x_nat, radius (N,), lo, hi)``, in place: onto the ball of ``radius``
    around x_nat within the bounds (the fused op; L0 here)."""
    if norm == "l0":
        return _l0_project_
    op = ops.project_op(norm)
    return lambda x_adv, x_nat, radius, lo, hi: op(x_adv, x_nat, 0.0, radius, lo, hi)


def _l0_project_(x_adv, x_nat, radius: torch.Tensor, lo: float, hi: float) -> None:
    """In place: all but each sample's ``radius`` largest |x_adv - x_nat| set back to x_nat
    (ties broken by the sort, so ``radius`` coordinates or fewer change), then x_adv clipped to
    the bounds."""
    size = (x_adv - x_nat).flatten(1).abs()
    order = size.argsort(dim=1, descending=True)
    ranks_kept = torch.arange(size.shape[1], device=size.device) < radius[:, None]
    keep = torch.zeros_like(ranks_kept).scatter_(1, order, ranks_kept)
    x_adv.copy_(torch.where(keep.view(x_adv.shape), x_adv, x_nat).clamp_(lo, hi))


def _l0_radius(radius, adv, best_norm, g: float) -> torch.Tensor:
    """FMN's L0 radius, whole coordinates: after an adversarial iterate at least one fewer (and
    at most (1 - g) times as many, never above the best count found), otherwise at least one
    more (and (1 + g) times as many, rounded down)."""
    shrink = torch.minimum(torch.minimum(radius - 1, (radius * (1 - g)).floor()), best_norm)
    grow = torch.maximum(radius + 1, (radius * (1 + g)).floor())
    return torch.where(adv, shrink, grow).clamp_min(0)


def _feasible(grad: torch.Tensor, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The gradient without the components a descent step would push out of the bounds: the
    boundary-distance estimate and the step then see only directions the box allows (most
    pixels of a digit sit on a bound, and FMN's radius stalls if it counts them)."""
    blocked = ((x <= lo) & (grad > 0)) | ((x >= hi) & (grad < 0))
    return grad.masked_fill(blocked, 0)


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1).float()
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    return flat.abs().sum(1) if norm == "l1" else (flat != 0).sum(1).float()


def _largest_distance(x_nat: torch.Tensor, norm: str, lo: float, hi: float) -> torch.Tensor:
    """The farthest any point of the box lies from each x: no radius needs to exceed it."""
    far = torch.maximum(x_nat - lo, hi - x_nat)
    return _distance(far, norm)


def robust_accuracy_curve(
    distances: torch.Tensor, eps: list[float] | torch.Tensor
) -> list[tuple[float, float]]:
    """(eps, robust accuracy) for each eps from per-sample minimum adversarial distances (0 for
    misclassified samples, inf where none was found): a sample is robust at eps when its
    distance exceeds eps. One minimum-norm run gives the whole curve."""
    eps = [float(e) for e in eps]
    if any(not e >= 0 for e in eps):  # NaN too
        raise ValueError(f"every eps must be >= 0, got {eps}")
    d = distances.detach().float().cpu()
    if d.numel() == 0:
        return [(float(e), float("nan")) for e in eps]
    return [(float(e), (d > float(e)).float().mean().item()) for e in eps]


def average_distortion(x: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Szegedy et al.'s distortion sqrt(sum (x' - x)^2 / n) with n the number of input values,
    averaged over the samples."""
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv shapes differ: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    if x.shape[0] == 0:
        return float("nan")
    per_sample = (x_adv - x).flatten(1).float().pow(2).mean(1).sqrt()
    return per_sample.mean().item()
