"""Fast Gradient Sign Method (Goodfellow et al. 2015): one L-inf step of size eps."""

from __future__ import annotations

import torch

from robustkern import ops
from robustkern.attacks._common import (
    Bounds,
    PerSample,
    check_eps,
    check_inputs,
    input_grad,
)


def fgsm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    bounds: Bounds = (0.0, 1.0),
    targeted: bool = False,
    loss: str = "ce",
) -> torch.Tensor:
    """x + eps * sign(grad of the loss), clipped to bounds. Targeted: y are the target classes
    and the step descends their loss. eps: a number or one value per sample."""
    labels = check_inputs(x, y, bounds, model=model)
    eps = check_eps(eps, x.shape[0], finite=True)  # eps is also the step
    x_nat = x.detach()
    grad, _ = input_grad(model, x_nat, y, loss, targeted, labels)
    x_adv = x_nat.clone()
    ops.linf_step_(x_adv, x_nat, grad, alpha=eps, eps=eps, bounds=bounds)
    return x_adv
