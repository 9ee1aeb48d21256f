"""Adam-based projected attack: Adam's update on the input, then the fused projection onto the
eps-ball and bounds, from a small random start (the optimiser-based attack that "On Evaluating
Adversarial Robustness", Carlini et al. 2019, recommends over plain gradient steps)."""

from __future__ import annotations

import torch

from robustkern.attacks._common import (
    LOSSES,
    Bounds,
    PerSample,
    attack_loss,
    broadcast,
    check_eps,
    check_inputs,
    is_adversarial,
    keep_best,
    loss_and_grad,
)
from robustkern.attacks.pgd import NORMS


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Maximises ``loss`` with Adam inside the ``norm`` ball of radius ``eps``.

    ``lr`` is in units of eps (per sample). L-inf: Adam's per-coordinate scaling, so the first
    updates move each coordinate by about ``lr * eps``. L2: one second moment per sample (the
    gradient's direction is kept; per-coordinate scaling would turn the step into a sign step,
    much weaker under an L2 budget), so a step has L2 length of about ``lr * eps``.
    ``random_start``: the start is uniform noise of ``random_start * eps`` (L-inf) or a random
    direction of that length (L2). Each sample returns its best point (adversarial
    first, then highest loss) over all iterates, tracked without host syncs. Targeted: ``y``
    are the target classes. Input gradients only; model mode and ``.grad`` untouched."""
    labels = check_inputs(x, y, bounds, model=model)
    n = x.shape[0]
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
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
    project_op = getattr(torch.ops.robustkern, f"{norm}_project_")

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
    return (x_best, fooled) if return_success else x_best


def _start(x_nat, radius, norm, generator):
    noise = torch.empty_like(x_nat)
    if norm == "linf":
        noise.uniform_(-1.0, 1.0, generator=generator)
        return noise * broadcast(radius, noise).to(noise.dtype)
    noise.normal_(generator=generator)
    scale = radius / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    return noise * broadcast(scale, noise).to(noise.dtype)
