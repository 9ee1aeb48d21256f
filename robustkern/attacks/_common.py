"""What every attack shares: argument checks, the losses to maximise, the input gradient."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustkern.checks import (
    check_finite,
    nonfinite_message,
    out_of_bounds_hint,
    warn_if_probabilities,
    warn_if_train_mode,
)

Bounds = tuple[float, float]
PerSample = float | torch.Tensor
LOSSES = ("ce", "margin")


def check_inputs(
    x: torch.Tensor, y: torch.Tensor, bounds: Bounds, model: torch.nn.Module | None = None
) -> tuple[int, int]:
    """Checks x, y and bounds once, before any step loop; returns (min, max) label (one sync).
    With ``model`` (an attack's entry), also warns when it is attacked in train mode."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x must be a floating tensor (N, ...), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    check_label_tensor(x, y)
    lo, hi = bounds
    if not (lo <= hi):
        raise ValueError(f"bounds=(lo, hi) needs lo <= hi, got {bounds}")
    if x.numel() == 0:
        return (int(y.min()), int(y.max())) if y.numel() else (0, 0)
    # One sync for both: x outside the bounds would be clipped into them by every step, moving
    # it farther than eps (a silent wrong robust accuracy); NaN in x propagates through min/max.
    x_lo, x_hi, y_lo, y_hi = torch.stack([x.min().double(), x.max().double(),
                                          y.min().double(), y.max().double()]).tolist()  # fmt: skip
    if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
        raise ValueError(nonfinite_message(x))
    if not (lo <= x_lo and x_hi <= hi):
        raise ValueError(
            f"x must lie within bounds=({lo}, {hi}), got values in [{x_lo:.6g}, {x_hi:.6g}]: "
            + out_of_bounds_hint(x_lo, x_hi, bounds)
        )
    if model is not None:
        warn_if_train_mode(model)
    return int(y_lo), int(y_hi)


def check_images(x: torch.Tensor) -> None:
    """x: a floating batch of images (N, C, H, W)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating tensor of images (N, C, H, W), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    check_finite(x)


def check_label_tensor(x: torch.Tensor, y: torch.Tensor) -> None:
    """y: int64 labels (what cross_entropy and gather take), one per row of x, on x's device.
    No host sync (the label range is checked by check_inputs and check_labels)."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise ValueError(
            f"y must be an int64 tensor of class labels, got {getattr(y, 'dtype', type(y))}"
            " (y.long() converts integer labels)"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y must be on x's device {x.device}, got {y.device}")


def label_range(y: torch.Tensor) -> tuple[int, int]:
    """(min, max) label, (0, 0) for no labels: one host sync."""
    if y.numel() == 0:
        return 0, 0
    lo, hi = torch.stack([y.min(), y.max()]).tolist()
    return int(lo), int(hi)


def check_model_labels(model, x: torch.Tensor, y: torch.Tensor) -> None:
    """For whole-dataset scores (accuracy under noise, corruptions): y holds int64 labels, one
    per image, that index the model's outputs (one forward of one image, model in eval mode).
    A label the model cannot output would count as an error, silently."""
    check_label_tensor(x, y)
    if len(x):
        with torch.no_grad():
            logits = model(x[:1].to(model_device(model)))
        check_logits(logits, 1, label_range(y))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def check_logits(logits: torch.Tensor, n: int, labels: tuple[int, int]) -> None:
    """Model output must be (N, classes >= 1) and every label must index a class."""
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] == 0:
        raise ValueError(
            f"the model must return logits of shape (N={n}, classes), got {tuple(logits.shape)}"
        )
    check_labels(labels, logits.shape[1])


def check_labels(labels: tuple[int, int], classes: int) -> None:
    """The (min, max) label from check_inputs must index one of ``classes`` outputs."""
    if labels[0] < 0 or labels[1] >= classes:
        raise ValueError(
            f"labels must lie in [0, {classes}) for a model with {classes} outputs, found "
            f"labels in [{labels[0]}, {labels[1]}]"
        )


def check_eps(eps: PerSample, n: int, name: str = "eps", finite: bool = False) -> PerSample:
    """A number >= 0 (inf allowed unless ``finite``) or a 1-D tensor of N such values. One sync
    for tensors."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            eps = float(eps)
        else:
            if eps.shape != (n,):
                raise ValueError(
                    f"per-sample {name} must have shape ({n},), got {tuple(eps.shape)}"
                )
            if bool((eps.isnan() | (eps < 0)).any()):
                raise ValueError(f"every per-sample {name} must be >= 0")
            if finite and not bool(eps.isfinite().all()):
                raise ValueError(f"this attack needs a finite {name}; got inf")
            return eps
    eps = float(eps)
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}")
    if finite and math.isinf(eps):
        raise ValueError(f"this attack needs a finite {name}; got inf")
    return eps


Shard = tuple[int, int]


def noise_like(x: torch.Tensor, fill, shard: Shard | None = None) -> torch.Tensor:
    """Random numbers shaped like x, drawn by ``fill(tensor)`` (an in-place sampler).
    ``shard=(offset, total)``: x holds rows offset..offset+N of a batch of ``total`` rows split
    over data-parallel ranks; the draw is made for all ``total`` rows and this shard's rows are
    kept, so a sample's noise does not depend on how many ranks share its batch."""
    if shard is None:
        return fill(torch.empty_like(x))
    offset, total = shard
    if not 0 <= offset <= offset + x.shape[0] <= total:
        raise ValueError(f"shard=(offset, total) must hold x's {x.shape[0]} rows, got {shard}")
    return fill(x.new_empty((total, *x.shape[1:])))[offset : offset + x.shape[0]]


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


def broadcast(v: PerSample, x: torch.Tensor) -> PerSample:
    """A per-sample tensor shaped (N, 1, ...) to broadcast over x; numbers unchanged."""
    if isinstance(v, torch.Tensor):
        return v.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return v


def keep_best(best, x_adv: torch.Tensor, fooled: torch.Tensor, score: torch.Tensor):
    """(x, fooled, score) per sample over calls: an adversarial point beats a non-adversarial
    one, then the higher score wins. ``best`` is None on the first call. No host sync."""
    if best is None:
        return x_adv.clone(), fooled, score
    best_x, best_fooled, best_score = best
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (score > best_score))
    return (
        torch.where(broadcast(better, x_adv), x_adv, best_x),
        fooled | best_fooled,
        torch.where(better, score, best_score),
    )
