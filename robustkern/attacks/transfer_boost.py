"""Attacks that make adversarial examples transfer to other models: MI-FGSM (Dong et al.,
"Boosting Adversarial Attacks with Momentum", CVPR 2018) and DI-FGSM / M-DI2-FGSM (Xie et al.,
"Improving Transferability of Adversarial Examples with Input Diversity", CVPR 2019).

Both are iterative FGSM from x itself (no random start, as in the papers) on the fused step ops.
Momentum: each step adds the loss's gradient, divided by its per-sample mean absolute value
(the papers' L1 normalisation up to a constant factor per sample, which neither the sign nor
the L2 direction sees), to ``decay`` times the running sum, and steps along that sum: sign for
L-inf, unit L2 length for L2. Input diversity: at each step, with probability
``diversity_prob``, the gradient is taken through a random resize-and-pad of the whole batch.

The paper enlarges 299-pixel images to a random size in [299, 330) and pads them to 330; here
(as torchattacks' DIFGSM does for resize_rate < 1) the images shrink to a random size between
int(resize_rate * H) and H and are padded back to H x W with the bounds' low value, so the
model always sees its own input size (a model with a fixed input size works) and the content's
scale range is the paper's (299 / 330 is about 0.9, the default resize_rate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustkern import ops
from robustkern.attacks.gradients import input_grad
from robustkern.attacks.losses import LOSSES
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_choice, check_eps, check_inputs
from robustkern.types import Bounds, PerSample

NORMS = ("linf", "l2")


def mi_fgsm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    steps: int = 10,
    alpha: PerSample | None = None,
    decay: float = 1.0,
    targeted: bool = False,
    loss: str = "ce",
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """MI-FGSM (Dong et al. 2018): iterative FGSM along the momentum of the L1-normalised
    gradients, from x; ``decay=0`` is plain iterative FGSM (PGD without random start).

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        eps: the radius in the inputs' units, a number or a 1-D tensor (N,) of per-sample radii.
        norm: "linf" (sign steps) or "l2" (unit-L2 steps).
        steps: gradient steps.
        alpha: the step size (input units; number or (N,)); default eps / steps (the papers').
        decay: the momentum's decay factor mu >= 0 (the paper's 1.0).
        targeted: move towards the classes in ``y`` instead of away from them.
        loss: "ce" (cross-entropy, the papers') or "margin" (the logit margin).
        bounds: (lo, hi) of valid inputs; every step is clipped to them.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``); queries are ``steps``.

    Returns:
        x_adv (N, ...) in x's dtype, then the extras asked for.
    """
    return _momentum_fgsm(model, x, y, eps, norm, steps, alpha, decay, targeted, loss, bounds,
                          None, (return_success, return_norms, return_queries))  # fmt: skip


def di_fgsm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    steps: int = 10,
    alpha: PerSample | None = None,
    decay: float = 0.0,
    diversity_prob: float = 0.5,
    resize_rate: float = 0.9,
    targeted: bool = False,
    loss: str = "ce",
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """DI-FGSM (Xie et al. 2019): iterative FGSM whose gradient is taken, at each step with
    probability ``diversity_prob``, through a random shrink-and-pad of the batch (the module's
    docstring says how it differs from the paper's enlarge-and-pad); ``decay=1`` is M-DI2-FGSM
    and ``diversity_prob=0`` is MI-FGSM with the same decay.

    Args:
        model: a classifier returning logits (N, classes) for images of x's size; its train/eval
            mode and its parameters' ``.grad`` are left as they are.
        x: the images (N, C, H, W) within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        eps: the radius in the inputs' units, a number or a 1-D tensor (N,) of per-sample radii.
        norm: "linf" (sign steps) or "l2" (unit-L2 steps).
        steps: gradient steps.
        alpha: the step size (input units; number or (N,)); default eps / steps.
        decay: the momentum's decay factor mu >= 0; 0 (the default) is DI2-FGSM, 1 M-DI2-FGSM.
        diversity_prob: the probability, in [0, 1], that a step transforms the batch (the
            paper's 0.5; one draw per step for the whole batch, as in the paper).
        resize_rate: in (0, 1]: the images shrink to a random height between
            int(resize_rate * H) and H (at least 1; the width in proportion), then are padded at
            a random offset back to H x W with ``bounds[0]``; 1 transforms nothing.
        targeted: move towards the classes in ``y`` instead of away from them.
        loss: "ce" (cross-entropy, the paper's) or "margin" (the logit margin).
        bounds: (lo, hi) of valid inputs; every step is clipped to them.
        generator: the transforms' generator, on any device (every step's draws are made
            before the step loop: one host sync); None uses torch's global CPU generator.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``); queries are ``steps``.

    Returns:
        x_adv (N, C, H, W) in x's dtype, then the extras asked for.
    """
    if not 0 <= diversity_prob <= 1:
        raise ValueError(f"diversity_prob must be in [0, 1], got {diversity_prob}")
    if not 0 < resize_rate <= 1:
        raise ValueError(f"resize_rate must be in (0, 1], got {resize_rate}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(
            f"di_fgsm resizes images: x must be (N, C, H, W), got {tuple(getattr(x, 'shape', ()))}"
        )
    return _momentum_fgsm(model, x, y, eps, norm, steps, alpha, decay, targeted, loss, bounds,
                          (diversity_prob, resize_rate, generator),
                          (return_success, return_norms, return_queries))  # fmt: skip


def _momentum_fgsm(model, x, y, eps, norm, steps, alpha, decay, targeted, loss, bounds,
                   diversity, flags):  # fmt: skip
    """The shared loop; ``diversity``: None (MI-FGSM) or (prob, resize_rate, generator)."""
    labels = check_inputs(x, y, bounds, model=model)
    eps, alpha = _checked_settings(norm, loss, steps, decay, eps, alpha, x.shape[0])
    x_nat = x.detach()
    x_adv = x_nat.clone()
    if len(x):
        op, args = ops.step_op(norm), ops.step_args(alpha, eps, bounds)
        lo, hi = float(bounds[0]), float(bounds[1])
        views = _draw_views(steps, x.shape[-2:], *diversity) if diversity else [None] * steps
        momentum = torch.zeros_like(x_nat)
        for view in views:
            grad = _grad(model, x_adv, y, loss, targeted, labels, view, lo, hi)
            # mean |grad| in float32 or wider; a zero gradient adds nothing (not 0 / 0)
            wide = torch.promote_types(grad.dtype, torch.float32)
            scale = grad.abs().flatten(1).mean(1, dtype=wide).clamp_min(torch.finfo(wide).tiny)
            momentum.mul_(decay).add_(grad / broadcast(scale, grad))
            op(x_adv, x_nat, momentum, *args)
    return finish(model, x_nat, x_adv, y, flags, norm=norm, targeted=targeted,
                  queries=steps)  # fmt: skip


def _checked_settings(norm, loss, steps, decay, eps, alpha, n) -> tuple:
    """(eps, alpha) checked, alpha defaulting to eps / steps, after the other options."""
    check_choice(norm, NORMS, "norm")
    check_choice(loss, LOSSES, "loss")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (decay >= 0 and math.isfinite(decay)):
        raise ValueError(f"decay must be a finite number >= 0, got {decay}")
    eps = check_eps(eps, n)
    if alpha is not None:
        return eps, check_eps(alpha, n, "alpha", finite=True)
    unbounded = bool(eps.isinf().any()) if isinstance(eps, torch.Tensor) else math.isinf(eps)
    if unbounded:
        raise ValueError("eps=inf needs a finite alpha (the default is eps / steps)")
    return eps, eps / steps


def _grad(model, x_adv, y, loss, targeted, labels, view, lo, hi) -> torch.Tensor:
    """The loss's gradient at x_adv, through the step's transform when it has one: the model
    runs on the transformed batch (so its own checks see it) and the gradient is carried back
    through the resize and pad by one vector-Jacobian product."""
    if view is None:
        return input_grad(model, x_adv, y, loss, targeted, labels)[0]
    with torch.enable_grad():
        xg = x_adv.detach().requires_grad_(True)
        seen = resize_and_pad(xg, *view, lo, hi)
    grad_seen, _ = input_grad(model, seen.detach(), y, loss, targeted, labels)
    (grad,) = torch.autograd.grad(seen, xg, grad_seen)
    return grad


def resize_and_pad(
    x: torch.Tensor, size: tuple[int, int], offset: tuple[int, int], lo: float, hi: float
) -> torch.Tensor:
    """Images x (N, C, H, W) resized (bilinear) to ``size`` (h <= H, w <= W) and padded with
    ``lo`` back to H x W, their top-left corner at ``offset`` (top, left); clipped to [lo, hi]
    (the bilinear weights can round a hair past the images' range). Differentiable."""
    (h, w), (top, left), (height, width) = size, offset, x.shape[-2:]
    small = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(lo, hi)
    return F.pad(small, (left, width - w - left, top, height - h - top), value=lo)


def _draw_views(steps, shape, prob, rate, generator) -> list:
    """Per step, None (no transform) or ((h, w), (top, left)) for ``resize_and_pad``: one draw
    of every step's numbers (one host sync), from ``generator``."""
    height, width = (int(s) for s in shape)
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand(steps, 4, generator=generator, device=device, dtype=torch.float64)
    shortest = max(1, int(rate * height))
    views = []
    for apply, u_size, u_top, u_left in draws.tolist():
        if apply >= prob:
            views.append(None)
            continue
        h = shortest + int(u_size * (height - shortest + 1))
        w = max(1, min(width, round(h * width / height)))
        views.append(((h, w), (int(u_top * (height - h + 1)), int(u_left * (width - w + 1)))))
    return views
