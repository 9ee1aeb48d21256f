"""The input's gradient of a loss: the only gradient attacks take (parameters' .grad stay
untouched), with the checks of the model's output on the way."""

from __future__ import annotations

import torch

from robustkern.attacks.losses import attack_loss
from robustkern.checks import check_logits, warn_if_probabilities


def input_grad(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    targeted: bool,
    labels: tuple[int, int],
    eot: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x, logits). Only the input's gradient: parameters' .grad stay untouched.
    ``labels``: the (min, max) label from check_inputs, checked against the logits' shape;
    ``eot``: passes averaged (see ``loss_and_grad``)."""
    loss_fn = lambda z: attack_loss(z, y, loss, targeted)  # noqa: E731
    grad, logits, _ = loss_and_grad(model, x, loss_fn, labels, eot)
    return grad, logits


class GradientUnavailable(ValueError):
    """The model's output does not depend on its input through autograd."""


def loss_and_grad(
    model, x: torch.Tensor, loss_fn, labels: tuple[int, int], eot: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d sum(loss) / d x, logits, per-sample loss) for ``loss_fn(logits) -> (N,)``; input
    gradient only. ``eot`` > 1: the gradient and loss averaged over that many passes, the
    expectation over transformation (Athalye et al. 2018) that a randomised model (noise
    injection, random transforms in its forward) needs; the logits are the last pass's. The
    model's own randomness is used: nothing is seeded here."""
    grad_sum = loss_sum = None
    for _ in range(eot):
        grad, logits, loss = _one_pass(model, x, loss_fn, labels)
        grad_sum = grad if grad_sum is None else grad_sum + grad
        loss_sum = loss if loss_sum is None else loss_sum + loss
    if eot == 1:
        return grad_sum, logits, loss_sum
    return grad_sum / eot, logits, loss_sum / eot


def _one_pass(model, x, loss_fn, labels):
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


def jacobian_rows(out: torch.Tensor, xg: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """d out[:, j] / d xg for each column j in ``columns``: (len(columns), N, ...). One batched
    backward (vmap) where the model supports it, else one backward per column; the graph is
    retained. FAB and DeepFool linearise several classes' boundaries with it."""
    onehot = torch.zeros(len(columns), *out.shape, dtype=out.dtype, device=out.device)
    onehot[torch.arange(len(columns)), :, columns] = 1
    try:
        (rows,) = torch.autograd.grad(
            out, xg, onehot, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
    except RuntimeError:  # an op without a batching rule: the loop gives the same rows
        rows = torch.stack([torch.autograd.grad(out, xg, g, retain_graph=True,
                                                allow_unused=True)[0] for g in onehot])  # fmt: skip
    if rows is None:
        raise GradientUnavailable(
            "the model's logits do not depend on its input through autograd; this attack cannot "
            "run: use a black-box attack (square)"
        )
    return rows
