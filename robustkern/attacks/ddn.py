"""Decoupled Direction and Norm (DDN, Rony et al., "Decoupling Direction and Norm for Efficient
Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019): a minimum-norm L2 attack.

The direction and the size of the perturbation are updated separately. Each step moves the
point along the unit-L2 gradient of the cross-entropy (a step that decays on a cosine schedule);
the radius eps shrinks by the factor 1 - gamma after an adversarial iterate and grows by 1 + gamma
otherwise, and the perturbation is then put on the sphere of radius eps around x (the paper
projects onto the sphere, not the ball: a point inside it is scaled out) and clipped to the
bounds with the fused projection op. The smallest adversarial iterate is kept.

The radius settles where the iterates alternate between the two sides of the boundary, so the
best point ends within about gamma^2 of the boundary along the direction DDN follows; that
direction is where the cross-entropy's gradient is parallel to the perturbation, the exact
nearest-boundary direction when the two classes at the boundary hold nearly all the probability.
"""

from __future__ import annotations

import math

import torch

from robustkern import ops
from robustkern.attacks.gradients import input_grad
from robustkern.attacks.losses import is_adversarial
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_inputs
from robustkern.types import Bounds


def ddn(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha: tuple[float, float] | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """DDN (Rony et al. 2019): the smallest L2 adversarial perturbation it finds per sample, by
    cross-entropy gradient steps on a sphere whose radius shrinks while adversarial and grows
    while not.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        steps: iterations (all run on every sample).
        gamma: the radius's change factor per step, in (0, 1) (the paper's 0.05).
        init_norm: the first radius, in the inputs' units (> 0; the paper's 1 for images in
            [0, 1]).
        alpha: (initial, final) step length along the unit-L2 gradient on the cosine
            schedule, in the inputs' units; by default (1, 0.01) times the bounds' width (the
            reference's learning rate 1 annealed to 0.01 for images in [0, 1]).
        targeted: reach the classes in ``y`` (the cross-entropy towards them is minimised).
        bounds: (lo, hi) of valid inputs.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the L2
            distances found (0 for a sample already misclassified, inf where none, and x_adv is
            x there), what ``robust_accuracy_curve`` reads; queries are steps + 1 (a forward and
            backward a step and the forward that scores the last point).

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    lo, hi = float(bounds[0]), float(bounds[1])
    alpha = _check_settings(steps, gamma, init_norm, alpha, lo, hi)
    x_nat = x.detach()
    project = ops.project_op("l2")
    far = torch.maximum(x_nat - lo, hi - x_nat)
    largest = _size(far)  # no radius needs to exceed it
    radius = torch.full_like(largest, float(init_norm)).minimum(largest)
    best, best_norm = x_nat.clone(), torch.full_like(largest, math.inf)
    # where the gradient is exactly zero (a saturated softmax) the step goes towards the
    # farther face of the box in every coordinate (the reference draws a random direction)
    fallback = _unit(torch.where(x_nat - lo > hi - x_nat, -1.0, 1.0).to(far.dtype))
    x_adv = x_nat.clone()
    for k in range(steps):
        a = alpha[1] + (alpha[0] - alpha[1]) * (1 + math.cos(math.pi * k / steps)) / 2
        grad, logits = input_grad(model, x_adv, y, "ce", targeted, labels)
        adv = is_adversarial(logits, y, targeted)
        _keep_smaller(best, best_norm, x_adv, x_nat, adv)
        unit = _unit(_wide(grad))
        unit = torch.where(broadcast(unit.flatten(1).any(1), unit), unit, fallback)
        x_adv = x_adv + (a * unit).to(x_adv.dtype)
        radius = torch.minimum(radius * torch.where(adv, 1 - gamma, 1 + gamma), largest)
        # onto the sphere: scale a point inside it out to the radius; the fused projection
        # brings the others in and clips to the bounds
        size = _size(x_adv - x_nat)
        out = torch.where(size > 0, radius / size.clamp_min(1e-30), 1.0).clamp_min(1.0)
        x_adv = x_nat + (x_adv - x_nat) * broadcast(out, x_adv).to(x_adv.dtype)
        project(x_adv, x_nat, 0.0, radius, lo, hi)
    with torch.no_grad():  # the last iterate has not been scored yet
        adv = is_adversarial(model(x_adv), y, targeted)
    _keep_smaller(best, best_norm, x_adv, x_nat, adv)
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm="l2", targeted=targeted, success=best_norm.isfinite(), norms=best_norm,
                  queries=steps + 1)  # fmt: skip


def _check_settings(steps, gamma, init_norm, alpha, lo, hi) -> tuple[float, float]:
    """The checked settings' step schedule (alpha, by default from the bounds' width)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (0 < gamma < 1 and init_norm > 0):
        raise ValueError(f"DDN needs 0 < gamma < 1 and init_norm > 0, got {gamma}, {init_norm}")
    if alpha is None:
        width = hi - lo if math.isfinite(hi - lo) and hi > lo else 1.0
        return (width, width / 100)
    a0, a1 = (float(a) for a in alpha)
    if not (a0 > 0 and a1 > 0 and math.isfinite(a0) and math.isfinite(a1)):
        raise ValueError(f"alpha=(initial, final) must be finite and > 0, got {alpha}")
    return a0, a1


def _keep_smaller(best, best_norm, x_adv, x_nat, adv) -> None:
    """In place: where ``adv`` and x_adv is nearer x than the best point so far, keep it."""
    size = _size(x_adv - x_nat)
    smaller = adv & (size < best_norm)
    best_norm.copy_(torch.where(smaller, size, best_norm))
    best.copy_(torch.where(broadcast(smaller, best), x_adv, best))


def _size(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of delta (N, ...), in float32 or wider."""
    return _wide(delta.flatten(1)).norm(dim=1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    """v scaled to unit L2 norm per sample (zero rows stay zero)."""
    return v / broadcast(_size(v).clamp_min(1e-30), v).to(v.dtype)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or float64 where it already is."""
    return t if t.dtype == torch.float64 else t.float()
