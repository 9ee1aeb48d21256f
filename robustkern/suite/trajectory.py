"""The class probabilities along a PGD run, step by step, for a few test images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkern import ops
from robustkern._io import pyplot
from robustkern.attacks.gradients import input_grad
from robustkern.checks import check_inputs
from robustkern.modes import eval_mode
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check

SHOWN = 4  # images followed


def _cost(suite: Suite, name: str, sizes) -> float:
    return suite.costs[name].attack(SHOWN, sizes["steps"] + 1, early_stop=False) + 2 * OVERHEAD


@check(
    "trajectory", "PGD trajectory", """
    The class probabilities at every PGD step for a few test images (the visual tour's step
    slider as small multiples): a non-robust model's confidence collapses within a few steps, a
    robust model's decays slowly or not at all.""",
    knobs={"steps": Knob(5, 20)}, cost=_cost, priority=11, weight=0.2,
)  # fmt: skip
def trajectory(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    steps = sizes["steps"]
    with eval_mode(model), torch.no_grad():
        correct = (model(suite.x[:256]).argmax(1) == suite.y[:256]).nonzero().squeeze(1)
    if len(correct) == 0:
        raise Skip("no correctly classified test image to attack")
    idx = correct[:SHOWN]
    x, y = suite.x[idx], suite.y[idx]
    with eval_mode(model):
        probs, x_adv = _pgd_probabilities(model, x, y, suite, steps)
    flips = [(p.argmax(1) != y[k].cpu()).nonzero().squeeze(1)
             for k, p in enumerate(probs.unbind(1))]  # fmt: skip
    flip_steps = [int(f[0]) if len(f) else None for f in flips]
    flipped = [s for s in flip_steps if s is not None]
    summary = f"{len(flipped)} of {len(idx)} images flipped within {steps} steps"
    summary += f" (first flips at steps {', '.join(map(str, flipped))})" if flipped else ""
    figures = {"steps": steps, "flip_step": flip_steps,
               "probabilities": probs.permute(1, 0, 2).tolist()}  # fmt: skip
    return Outcome("info", summary, figures, images=[_draw(suite, name, probs, x_adv, y, steps)])


def _pgd_probabilities(model, x, y, suite: Suite, steps: int):
    """PGD from the clean image (no random start, so step 0 is the clean prediction); returns
    the softmax after each step, (steps + 1, N, classes) on the CPU, and the last iterate."""
    eps, norm = suite.threat.eps, suite.threat.norm
    step_op = ops.linf_step_ if norm == "linf" else ops.l2_step_
    labels = check_inputs(x, y, suite.bounds)
    x_adv, seen = x.clone(), []
    for _ in range(steps):
        grad, logits = input_grad(model, x_adv, y, "ce", False, labels)
        seen.append(F.softmax(logits.float(), 1).cpu())
        step_op(x_adv, x, grad, alpha=2.5 * eps / steps, eps=eps, bounds=suite.bounds)
    with torch.no_grad():
        seen.append(F.softmax(model(x_adv).float(), 1).cpu())
    return torch.stack(seen), x_adv


def _draw(suite: Suite, name: str, probs, x_adv, y, steps: int) -> dict:
    """Per image: the last PGD point above, the top classes' probabilities against the step."""
    n = len(y)
    plt = pyplot()
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 4.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.3]})  # fmt: skip
    for k in range(n):
        img = x_adv[k].cpu().numpy()
        axes[0, k].imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray",
                          vmin=0, vmax=1)  # fmt: skip
        axes[0, k].set_title(f"label {y[k].item()}, step {steps}", fontsize=8)
        axes[0, k].axis("off")
        p = probs[:, k]
        for c in p.max(0).values.topk(min(3, p.shape[1])).indices.tolist():
            axes[1, k].plot(range(steps + 1), p[:, c].numpy(), label=str(c),
                            linewidth=2.5 if c == y[k].item() else 1.2)  # fmt: skip
        axes[1, k].set_ylim(0, 1.02)
        axes[1, k].set_xlabel("PGD step")
        axes[1, k].legend(fontsize=7, title="class", title_fontsize=7)
        axes[1, k].grid(alpha=0.3)
    axes[1, 0].set_ylabel("probability")
    fig.tight_layout()
    caption = (f"class probabilities along PGD ({suite.threat.norm}, eps {suite.threat.eps:g}, "
               "no random start) for the first correctly classified test images; thick line: "
               "true class")  # fmt: skip
    return suite.save(fig, "trajectory", name, caption=caption)
