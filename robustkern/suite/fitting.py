"""The randomisation test (Zhang et al., "Understanding deep learning requires rethinking
generalization"): how many steps a fresh model needs to fit random labels against true ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustkern._io import pyplot
from robustkern.modes import eval_mode
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, percent

FITTED = 0.95  # training accuracy that counts as fitted
BATCH = 50
LR = 1e-3  # Adam, constant


def _randomisation_cost(suite: Suite, name: str | None, sizes) -> float:
    if suite.factory is None or suite.x_train is None:
        return 0.0  # it will skip
    c = next(iter(suite.costs.values()))  # two runs to max_steps, each epoch then scored
    return 2 * sizes["steps"] * (BATCH * (c.train + c.forward) + c.step) + OVERHEAD


@check(
    "randomisation", "Randomisation test", """
    Zhang et al.: a network that fits random labels about as fast as the true ones has the
    capacity to memorise its training data, so its test accuracy comes from inductive bias, not
    from a lack of capacity. Steps to 95 % training accuracy on a subset, with true and with
    random labels, at a constant learning rate, with fresh models from the factory.""",
    per_model=False, knobs={"images": Knob(100, 500), "steps": Knob(100, 3000, keep=0.5)},
    cost=_randomisation_cost, priority=14, weight=0.5,
)  # fmt: skip
def randomisation(suite: Suite, sizes) -> Outcome:
    if suite.factory is None or suite.x_train is None:
        raise Skip("needs training data and a model factory (a fresh model to train)")
    n = min(len(suite.x_train), sizes["images"])
    x = suite.x_train[:n].to(suite.device)
    y = suite.y_train[:n].to(suite.device)
    g = torch.Generator().manual_seed(suite.seed)
    random_y = torch.randint(0, suite.num_classes, (n,), generator=g).to(suite.device)
    max_steps = sizes["steps"]
    true_steps, true_curve = _steps_to_fit(suite, x, y, max_steps)
    random_steps, random_curve = _steps_to_fit(suite, x, random_y, max_steps)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, curve in (("true labels", true_curve), ("random labels", random_curve)):
        ax.plot(*zip(*[(s, 100 * a) for s, a in curve], strict=True), marker=".", label=label)
    ax.axhline(100 * FITTED, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"training step (Adam {LR:g}, batch {BATCH})")
    ax.set_ylabel("training accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    image = suite.save(
        fig,
        "randomisation",
        caption=(
            f"a fresh model fitted to {n} training images with their true labels and with random "
            "labels, at a constant learning rate"
        ),
    )

    def said(steps, curve) -> str:
        if steps is None:
            return f"not fitted in {max_steps} steps (reached {percent(curve[-1][1])})"
        return f"{steps} steps"

    summary = f"to {FITTED:.0%} training accuracy on {n} images: true labels "
    summary += f"{said(true_steps, true_curve)}, random labels {said(random_steps, random_curve)}"
    if true_steps and random_steps:
        summary += f" ({random_steps / true_steps:.1f}x): the model can memorise this much data"
    figures = {
        "images": n,
        "true_label_steps": true_steps,
        "random_label_steps": random_steps,
        "max_steps": max_steps,
        "true_curve": true_curve,
        "random_curve": random_curve,
    }
    return Outcome("info", summary, figures, images=[image])


def _steps_to_fit(suite: Suite, x, y, max_steps) -> tuple[int | None, list[tuple[int, float]]]:
    """Trains a fresh model (seeded) until its training accuracy reaches FITTED, checked after
    every epoch; returns the steps taken (None if never) and (step, accuracy) per epoch."""
    torch.manual_seed(suite.seed)
    model = suite.factory().to(suite.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(suite.seed)
    step, curve = 0, [(0, _accuracy(model, x, y))]
    while step < max_steps:
        model.train()
        for idx in torch.randperm(len(x), generator=g).to(x.device).split(BATCH):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            step += 1
        curve.append((step, _accuracy(model, x, y)))
        if curve[-1][1] >= FITTED:
            return step, curve
    return None, curve


def _accuracy(model, x, y) -> float:
    with eval_mode(model), torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
