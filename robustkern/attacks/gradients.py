"""The input's gradient of a loss: the only gradient attacks take (parameters' .grad stay
untouched), with the checks of the model's output on the way."""

from __future__ import annotations

import torch

from robustkern.attacks.losses import attack_loss
from robustkern.checks import check_logits, warn_if_probabilities


def input_grad(
    model, x: torch.Tensor, y: torch.Tensor, loss: str, targeted: bool, labels: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x, logits). Only the input's gradient: parameters' .grad stay untouched.
    ``labels``: the (min, max) label from check_inputs, checked against the logits' shape."""
    grad, logits, _ = loss_and_grad(model, x, lambda z: attack_loss(z, y, loss, targeted), labels)
    return grad, logits


class GradientUnavailable(ValueError):
    """The model's output does not depend on its input through autograd."""


def loss_and_grad(
    model, x: torch.Tensor, loss_fn, labels: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d sum(loss) / d x, logits, per-sample loss) for ``loss_fn(logits) -> (N,)``; input
    gradient only."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        check_logits(logits, x.shape[0], labels)
        warn_if_probabilities(model, logits)
        loss = loss_fn(logits)
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    if grad is None:
        raise GradientUnavailable(
            "the model's output has no gradient with respect to its input (does its forward "
            "detach the input, run under torch.no_grad, or leave autograd?); gradient attacks "
            "cannot run: use a black-box attack (square) and robustkern.evaluation.indicators"
        )
    return grad, logits.detach(), loss.detach()
