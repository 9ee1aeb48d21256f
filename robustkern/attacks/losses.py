"""The losses attacks maximise: cross-entropy, the logit margin and Croce & Hein's DLR."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample (positive: classified as y)."""
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(dim=1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-sample loss the attack maximises. Targeted: y are the target classes."""
    if loss == "ce":
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return -ce if targeted else ce
    if loss == "margin":
        m = margin(logits, y)
        return m if targeted else -m
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def is_adversarial(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Croce & Hein's difference-of-logits ratio, to maximise (shift- and scale-invariant).
    Untargeted: -(z_y - max_{j != y} z_j) / (z_(1) - z_(3)); targeted towards ``target``:
    -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2), with z_(k) the k-th largest logit."""
    z = logits.float()
    top = z.topk(3 if target is None else 4, dim=1).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(z_y - z.scatter(1, y[:, None], float("-inf")).amax(1)) / (
            top[:, 0] - top[:, 2] + 1e-12
        )
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def search_margin(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> tuple:
    """A random search's objective from one query: (margin to minimise, fooled) per sample."""
    m = margin(logits, y)
    return (-m if targeted else m), is_adversarial(logits, y, targeted)
