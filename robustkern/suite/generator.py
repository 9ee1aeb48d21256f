"""The classifier as a generator: class-conditional gradient ascent from noise, and how much
what the model finds convincing looks like real images of the class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkern.attacks.gradients import loss_and_grad
from robustkern.checks import check_inputs
from robustkern.modes import eval_mode
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Suite, check, image_grid, percent

CONFIDENT = 0.95  # a generated image this confident that still looks like noise is a failure
NOISE_LIKE = 1 / 3  # likeness to real images below which a generated image looks like noise
GENERATED = 10  # classes drawn by the generator check (the first ten of a 1,000-class model)


def _generator_cost(suite: Suite, name: str, sizes) -> float:
    classes = min(suite.num_classes, GENERATED)  # two variants, one batch of classes each
    return 2 * suite.costs[name].attack(classes, sizes["steps"], early_stop=False) + 2 * OVERHEAD


@check(
    "generator", "The classifier as a generator", """
    Gradient ascent on log p(class | x) from uniform noise (sign steps, and L2-normalised steps
    of the same length), for up to 10 classes, shows what the model takes as evidence for each
    class. A robust model draws recognisable class features; a non-robust one becomes very
    confident on images that still look like noise (Nguyen et al.'s fooling images). Each image
    is scored by its likeness to real test images of its class (0: as the noise it started
    from, 1: as a typical real image). An image is fooling when the model is > 95 % confident
    and its likeness is below 1/3; pass when none is, fail when more than half of the confident
    images are fooling, warn otherwise.""",
    knobs={"steps": Knob(10, 100, keep=0.5)}, cost=_generator_cost, priority=10, weight=0.3,
)  # fmt: skip
def generator(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    classes = min(suite.num_classes, GENERATED)
    steps = sizes["steps"]
    lo, hi = suite.bounds
    start = torch.empty((classes, *suite.x.shape[1:]), device=suite.device)
    start.uniform_(lo, hi, generator=suite.generator())
    target = torch.arange(classes, device=suite.device)
    likeness = _Likeness(suite.x[:1000], suite.y[:1000])
    images, confidences = [], []
    with eval_mode(model):
        for variant in ("sign", "l2"):
            x = _ascend(model, start, target, variant, steps, suite.bounds)
            with torch.no_grad():
                conf = F.softmax(model(x).float(), 1).gather(1, target[:, None]).squeeze(1)
            images.append(x)
            confidences.append(conf.cpu())
    x_all, conf = torch.cat(images), torch.cat(confidences)
    score = likeness(x_all, target.repeat(2), start.repeat(2, 1, 1, 1)).cpu()
    confident = conf > CONFIDENT
    fooling = confident & (score < NOISE_LIKE)
    titles = [
        f"{k % classes}: {100 * c:.0f} %, {s:.2f}"
        for k, (c, s) in enumerate(zip(conf.tolist(), score.tolist(), strict=True))
    ]
    fig = image_grid(
        x_all,
        titles,
        columns=classes,
        outlined=fooling.tolist(),
        row_labels=["sign steps", "L2 steps"],
    )
    image = suite.save(
        fig,
        "generator",
        name,
        caption=(
            f"class-conditional gradient ascent from uniform noise, {steps} steps; title: class, "
            "the model's confidence and the likeness to real images of the class (0: as the "
            f"noise it started from, 1: as a real image); red frame: > {CONFIDENT:.0%} confident "
            f"with likeness below {NOISE_LIKE:g} (looks like noise)"
        ),
    )
    share = fooling.sum().item() / max(1, confident.sum().item())
    verdict = "pass" if not fooling.any() else "fail" if share > 0.5 else "warn"
    figures = {
        "steps": steps,
        "images": len(conf),
        "mean_confidence": conf.mean().item(),
        "confident": int(confident.sum()),
        "noise_like_confident": int(fooling.sum()),
        "mean_likeness": score.mean().item(),
        "likeness": score.tolist(),
        "confidence": conf.tolist(),
    }
    summary = (
        f"{int(confident.sum())} of {len(conf)} generated images reach > {CONFIDENT:.0%} "
        f"confidence, {int(fooling.sum())} of them while looking like noise (mean likeness to "
        f"real images {score.mean():.2f}; mean confidence {percent(conf.mean().item())})"
    )
    return Outcome(verdict, summary, figures, images=[image])


class _Likeness:
    """How much an image resembles real images of its class, from its correlation with the
    most similar one (mean-subtracted pixels), rescaled so that the noise it started from
    scores 0 and a typical real image (against the other real images) scores 1. Real images
    are split in two halves: the first sets the typical score, the second is the reference."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        half = len(x) // 2
        self.ref, self.ref_y = _unit(x[half:]), y[half:]
        self.typical = self._best(_unit(x[:half]), y[:half]).median()

    def _best(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sims = z @ self.ref.T
        sims[y[:, None] != self.ref_y[None, :]] = -1.0
        return sims.max(1).values

    def __call__(self, x, y, start) -> torch.Tensor:
        base = self._best(_unit(start), y)
        return (self._best(_unit(x), y) - base) / (self.typical - base).clamp_min(1e-6)


def _unit(x: torch.Tensor) -> torch.Tensor:
    z = x.flatten(1).float()
    z = z - z.mean(1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _ascend(model, start, target, variant, steps, bounds) -> torch.Tensor:
    """Maximises log p(target | x) from ``start`` with sign steps or L2-normalised steps of
    the same L2 length, clipped to the bounds, without an eps ball."""
    lo, hi = bounds
    alpha = 0.01 * (hi - lo)
    labels = check_inputs(start, target, bounds)
    x = start.clone()
    for _ in range(steps):
        grad, _, _ = loss_and_grad(
            model, x, lambda z: F.log_softmax(z.float(), 1).gather(1, target[:, None]), labels
        )
        if variant == "sign":
            step = grad.sign()
        else:
            size = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            step = grad / size * grad[0].numel() ** 0.5
        x = (x + alpha * step).clamp(lo, hi)
    return x
