"""Adam-based projected attack: Adam's update on the input, then the fused projection onto the
eps-ball and bounds, from a small random start (the optimiser-based attack that "On Evaluating
Adversarial Robustness", Carlini et al. 2019, recommends over plain gradient steps)."""

from __future__ import annotations

import torch

from robustkern import ops
from robustkern.attacks.gradients import loss_and_grad
from robustkern.attacks.losses import LOSSES, attack_loss, is_adversarial
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast, keep_best
from robustkern.checks import check_choice, check_eps, check_inputs
from robustkern.types import Bounds, PerSample


def adam_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    steps: int = 100,
    lr: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    random_start: float = 0.1,
    targeted: bool = False,
    loss: str = "ce",
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Maximises ``loss`` with Adam inside the ``norm`` ball of radius ``eps``; each sample
    returns its best iterate (adversarial first, then the highest loss), tracked without host
    syncs.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        eps: the radius in the inputs' units, a number or (N,) per-sample radii.
        norm: "linf" (Adam's per-coordinate scaling: the first updates move each coordinate by
            about ``lr * eps``) or "l2" (one second moment per sample: the gradient's direction
            is kept and a step has L2 length of about ``lr * eps``).
        steps: Adam steps. lr: the step size in units of eps. betas: Adam's moments.
        random_start: the start's size as a share of eps (uniform noise, or a random
            direction for L2).
        targeted, loss ("ce" or "margin"), bounds, generator: as for ``pgd``.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``).

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    n = x.shape[0]
    check_choice(norm, ("linf", "l2"), "norm")
    check_choice(loss, LOSSES, "loss")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (lr > 0 and 0 <= random_start <= 1 and all(0 <= b < 1 for b in betas)):
        raise ValueError(
            f"need lr > 0, 0 <= random_start <= 1 and betas in [0, 1), got {lr}, "
            f"{random_start}, {betas}"
        )
    eps = check_eps(eps, n, finite=True)
    x_nat = x.detach()
    eps_t = torch.as_tensor(eps, dtype=torch.float32, device=x.device).expand(n).clone()
    lo, hi = float(bounds[0]), float(bounds[1])
    project_op = ops.project_op(norm)

    x_adv = x_nat + _start(x_nat, eps_t * random_start, norm, generator)
    project_op(x_adv, x_nat, 0.0, eps_t, lo, hi)
    m, v = torch.zeros_like(x_adv), torch.zeros_like(x_adv)
    size = broadcast(lr * eps_t, x_adv).to(x_adv.dtype)
    (b1, b2), best = betas, None
    for t in range(1, steps + 2):
        grad, logits, value = loss_and_grad(
            model, x_adv, lambda z: attack_loss(z, y, loss, targeted), labels
        )
        best = keep_best(best, x_adv, is_adversarial(logits, y, targeted), value)
        if t == steps + 1:
            break
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        if norm == "linf":  # Adam's per-coordinate scaling: about lr * eps per coordinate
            update = m_hat / (v_hat.sqrt() + 1e-12)
        else:  # one second moment per sample keeps the gradient's L2 geometry: length ~ lr * eps
            rms = v_hat.flatten(1).sum(dim=1).sqrt().clamp_min(1e-12)
            update = m_hat / broadcast(rms, m_hat).to(m_hat.dtype)
        x_adv = x_adv + size * update
        project_op(x_adv, x_nat, 0.0, eps_t, lo, hi)
    x_best, fooled, _ = best
    return finish(model, x_nat, x_best, y, (return_success, return_norms, return_queries),
                  norm=norm, targeted=targeted, success=fooled, queries=steps + 1)  # fmt: skip


def _start(x_nat, radius, norm, generator):
    noise = torch.empty_like(x_nat)
    if norm == "linf":
        noise.uniform_(-1.0, 1.0, generator=generator)
        return noise * broadcast(radius, noise).to(noise.dtype)
    noise.normal_(generator=generator)
    scale = radius / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    return noise * broadcast(scale, noise).to(noise.dtype)
