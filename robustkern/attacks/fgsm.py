"""Fast Gradient Sign Method (Goodfellow et al. 2015): one L-inf step of size eps."""

from __future__ import annotations

import torch

from robustkern import ops
from robustkern.attacks.gradients import input_grad
from robustkern.attacks.results import finish
from robustkern.checks import check_eps, check_inputs
from robustkern.types import Bounds, PerSample


def fgsm(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    bounds: Bounds = (0.0, 1.0),
    targeted: bool = False,
    loss: str = "ce",
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The Fast Gradient Sign Method (Goodfellow et al. 2015): x + eps * sign(gradient of the
    loss), clipped to the bounds; one gradient pass.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        eps: the step and radius (L-inf) in the inputs' units, a number or (N,) per sample.
        bounds: (lo, hi) of valid inputs.
        targeted: descend the loss of the classes in ``y``.
        loss: "ce" or "margin".
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``).

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    eps = check_eps(eps, x.shape[0], finite=True)  # eps is also the step
    x_nat = x.detach()
    grad, _ = input_grad(model, x_nat, y, loss, targeted, labels)
    x_adv = x_nat.clone()
    ops.linf_step_(x_adv, x_nat, grad, alpha=eps, eps=eps, bounds=bounds)
    return finish(model, x_nat, x_adv, y, (return_success, return_norms, return_queries),
                  norm="linf", targeted=targeted, queries=1)  # fmt: skip
