"""Checks that look for each image's smallest adversarial perturbation: the unbounded FMN
attack with the robust-accuracy-vs-eps curve it gives, and Szegedy et al.'s minimum distortion
(box-constrained L-BFGS) against Gaussian noise of the same size, beside the minimum L2
distances of FMN, DDN and Carlini-Wagner on the same images."""

from __future__ import annotations

import time

import torch
from torch import nn

from robustkern import attacks
from robustkern._io import pyplot
from robustkern.evaluation.transfer import same_size_noise
from robustkern.modes import eval_mode
from robustkern.stats import percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, image_grid, percent

LBFGS_ITERATION = 0.01  # seconds scipy's L-BFGS-B spends per iteration besides the model
# CW beside L-BFGS: a short binary search on c from a constant that flips most images at once,
# and Adam's rate for a short run (at the paper's 0.01, 100 steps flipped 19 of 49 images of the
# standard CNN: pixels at 0 or 1 sit far out in CW's tanh space; at 0.1, all 49)
CW_BINARY_STEPS, CW_CONST, CW_LR = 5, 1.0, 0.1


def _unbounded_cost(suite: Suite, name: str, sizes) -> float:
    c = suite.costs[name]  # FMN runs every step on every correctly classified image, and
    # its own per-image work (norms, projections) doubles a bare gradient step (measured)
    return 2 * c.attack(suite.images(sizes), sizes["steps"], early_stop=False) + 2 * OVERHEAD


@check(
    "unbounded", "Unbounded attack and the robust-accuracy curve", """
    With no bound on the perturbation every input can be made misclassified; an attack that
    cannot reach 100 % error is failing, and every robust accuracy it reports is suspect. The
    fast minimum-norm attack (FMN) finds each image's smallest adversarial perturbation, which
    gives the whole robust-accuracy-vs-eps curve from one run; the white-box check's result at
    the main eps is marked on it as a cross-check. Fail: any image never flipped.""",
    knobs={"images": Knob(50, 500), "steps": Knob(20, 100, keep=0.5)},
    cost=_unbounded_cost, needs=("white_box",), priority=1, weight=2.0,
)  # fmt: skip
def unbounded(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    with eval_mode(model):
        x_adv, dist = attacks.min_norm(model, x, y, norm=suite.threat.norm, steps=sizes["steps"],
                                       bounds=suite.bounds, return_norms=True)  # fmt: skip
    dist = dist.cpu()
    fixed = suite.result("white_box", name)
    finite = dist[dist.isfinite()]
    top = max(float(finite.max()) if len(finite) else suite.threat.eps, suite.threat.eps) * 1.05
    curve = attacks.robust_accuracy_curve(dist, torch.linspace(0, top, 101))
    images = [_draw_curve(suite, name, curve, fixed, len(x))]
    images += _draw_examples(suite, name, model, x, y, x_adv, dist)
    return _grade_unbounded(suite, dist, curve, fixed, images)


def _grade_unbounded(suite: Suite, dist, curve, fixed, images) -> Outcome:
    """Pass when every image was flipped; the curve's value at the main eps beside the
    white-box result."""
    n, norm, eps = len(dist), suite.threat.norm, suite.threat.eps
    reached = dist.isfinite().float().mean().item()
    at_eps = attacks.robust_accuracy_curve(dist, [eps])[0][1]
    figures = {
        "error_unbounded": reached, "never_flipped": int((~dist.isfinite()).sum()),
        "median_distance": float(dist.median()), "robust_accuracy_at_eps": at_eps,
        "curve": [[round(e, 6), a] for e, a in curve[::10]],
    }  # fmt: skip
    summary = (
        f"the unbounded FMN attack reached {percent(reached)} error on {n} images; median {norm} "
        f"distance {float(dist.median()):.3g}; robust accuracy at eps {eps:g} "
        f"{percent_with_interval(round(at_eps * n), n)} from the curve"
    )
    if fixed is not None:
        summary += f" ({percent(fixed.robust)} from the fixed-eps attacks)"
        figures["fixed_eps_robust_accuracy"] = fixed.robust
    return Outcome("pass" if reached == 1.0 else "fail", summary, figures, images=images)


def _draw_curve(suite: Suite, name: str, curve, fixed, n: int) -> dict:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([e for e, _ in curve], [100 * a for _, a in curve], label="minimum-norm attack (FMN)")
    if fixed is not None:
        lo, hi = fixed.robust_interval
        below, above = max(0.0, fixed.robust - lo), max(0.0, hi - fixed.robust)
        ax.errorbar([suite.threat.eps], [100 * fixed.robust], yerr=[[100 * below], [100 * above]],
                    fmt="o", color="red", zorder=3, capsize=3,
                    label="APGD-CE + APGD-T at fixed eps (95 % interval)")  # fmt: skip
    ax.axvline(suite.threat.eps, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"eps ({suite.threat.norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    caption = f"robust accuracy against eps from one FMN run on {n} images; the dotted line is "
    return suite.save(fig, "eps_curve", name, caption=caption + "the main eps")


def _draw_examples(suite: Suite, name: str, model, x, y, x_adv, dist) -> list[dict]:
    """Up to 8 clean images beside their FMN adversarial examples."""
    flipped = ((dist > 0) & dist.isfinite()).nonzero().squeeze(1)[:8]
    if not len(flipped):
        return []
    with torch.no_grad():
        pred = model(x_adv[flipped]).argmax(1).cpu()
    pairs = torch.stack([x[flipped].cpu(), x_adv[flipped].cpu()], 1).flatten(0, 1)
    titles = [t for k, i in enumerate(flipped.tolist())
              for t in (f"{y[i].item()}", f"-> {pred[k].item()} @ {dist[i]:.2f}")]  # fmt: skip
    caption = (f"clean image and its FMN adversarial example ({suite.threat.norm} distance after "
               "@, predicted class after the arrow)")  # fmt: skip
    return [suite.save(image_grid(pairs, titles, columns=8), "min_norm_examples", name,
                       caption=caption)]  # fmt: skip


def _min_distortion_cost(suite: Suite, name: str, sizes) -> float:
    c = suite.costs[name]
    iterations = sizes["search_steps"] * sizes["iterations"]
    # several evaluations per L-BFGS-B iteration (its line search), and scipy's bookkeeping;
    # then FMN and DDN at ``steps``, CW at ``steps`` per binary-search step
    others = sizes["steps"] * (2 + CW_BINARY_STEPS)
    return c.attack(suite.images(sizes), 4 * iterations + others, early_stop=False) + (
        iterations * LBFGS_ITERATION + OVERHEAD
    )


def _l2_attacks(model, x, y, suite: Suite, steps: int) -> dict[str, tuple]:
    """The gradient-based minimum-L2 attacks beside L-BFGS on the same images: name ->
    (per-sample L2 distance (inf where none), seconds)."""
    runs = {
        "FMN": lambda: attacks.min_norm(model, x, y, norm="l2", steps=steps, bounds=suite.bounds,
                                        return_norms=True),
        "DDN": lambda: attacks.ddn(model, x, y, steps=steps, bounds=suite.bounds,
                                   return_norms=True),
        "CW": lambda: attacks.cw(model, x, y, steps=steps, binary_steps=CW_BINARY_STEPS,
                                 initial_const=CW_CONST, lr=CW_LR, bounds=suite.bounds,
                                 return_norms=True),
    }  # fmt: skip
    out = {}
    for attack, run in runs.items():
        start = time.perf_counter()
        out[attack] = (run()[1].cpu(), time.perf_counter() - start)
    return out


def _l2_table(suite: Suite, lbfgs_dist, lbfgs_seconds, others: dict, steps: int) -> dict:
    """Each attack's median and mean minimum L2 distance over the images every attack flipped
    (so the averages compare like with like), and how often it came closest."""
    dists = {"L-BFGS": (lbfgs_dist.cpu(), lbfgs_seconds), **others}
    attacked = lbfgs_dist.cpu() > 0  # correctly classified
    every = attacked.clone()
    for d, _ in dists.values():
        every &= d.isfinite()
    best = torch.stack([d for d, _ in dists.values()]).amin(0)
    rows = []
    for attack, (d, seconds) in dists.items():
        shared = d[every]
        rows.append([
            attack, f"{int((d.isfinite() & attacked).sum())} of {int(attacked.sum())}",
            f"{float(shared.median()):.4f}" if len(shared) else "-",
            f"{float(shared.mean()):.4f}" if len(shared) else "-",
            f"{int((d[every] <= best[every] * 1.001).sum())}", f"{seconds:.1f}",
        ])  # fmt: skip
    return {
        "title": f"minimum L2 distance per attack on the same images ({steps} steps; CW "
        f"{CW_BINARY_STEPS} binary-search steps of {steps}, Adam {CW_LR:g}); medians and means "
        "over the "
        f"{int(every.sum())} images every attack flipped",
        "columns": ["attack", "flipped", "median L2", "mean L2", "closest (of those)", "seconds"],
        "rows": rows,
    }


@check(
    "min_distortion", "Minimum distortion (Szegedy et al.)", """
    Szegedy et al. measure a model's stability by the average minimum distortion
    sqrt(mean squared pixel change) that box-constrained L-BFGS needs to change its decision,
    and show that Gaussian noise of the same size barely hurts: adversarial examples are rare,
    specific directions, not a sign of general noise sensitivity. Beside L-BFGS, the minimum L2
    distances that FMN, DDN and Carlini-Wagner find on the same images (papers report the
    median): the closest attack sets the number to quote.""",
    knobs={"images": Knob(10, 50), "search_steps": Knob(3, 8), "iterations": Knob(15, 60),
           "steps": Knob(10, 100, keep=0.5)},
    cost=_min_distortion_cost, priority=7, weight=1.0,
)  # fmt: skip
def min_distortion(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    with eval_mode(model):
        start = time.perf_counter()
        x_adv, dist = attacks.lbfgs(model, x, y, search_steps=sizes["search_steps"],
                                    max_iter=sizes["iterations"], bounds=suite.bounds,
                                    return_norms=True)  # fmt: skip
        lbfgs_seconds = time.perf_counter() - start
        if not bool((dist > 0).any()):
            raise Skip(f"none of the {len(x)} test images is classified correctly")
        others = _l2_attacks(model, x, y, suite, sizes["steps"])
        found = (dist > 0) & dist.isfinite()
        with torch.no_grad():
            clean_error = (model(x).argmax(1) != y).float().mean().item()
            noisy = same_size_noise(x[found], x_adv[found], suite.bounds, suite.generator())
            noise_error = (model(noisy).argmax(1) != y[found]).float().mean().item()
            adv_error = (model(x_adv[found]).argmax(1) != y[found]).float().mean().item()
    distortion = attacks.average_distortion(x[found], x_adv[found])
    figures = {
        "average_min_distortion": distortion, "images": len(x), "found": int(found.sum()),
        "error_adversarial": adv_error, "error_same_size_noise": noise_error,
        "mean_l2": float(dist[found].mean()) if found.any() else float("nan"),
    }  # fmt: skip
    summary = (
        f"average minimum distortion {distortion:.4f} (sqrt(mean squared pixel change), "
        f"L-BFGS found {int(found.sum())} of {int((dist > 0).sum())}); Gaussian noise of the "
        f"same size: error {percent(noise_error)} against {percent(adv_error)}"
    )
    table = {
        "title": f"as Szegedy et al.'s Tables 1 and 2, L-BFGS on {len(x)} test images",
        "columns": ["model", "test error", "av. min. distortion",
                    "error on the adversarial images",
                    "error under Gaussian noise of the same size"],
        "rows": [[name, percent(clean_error), f"{distortion:.4f}", percent(adv_error),
                  percent(noise_error)]],
    }  # fmt: skip
    figures["median_l2"] = {a: float(d[d.isfinite()].median()) if d.isfinite().any() else None
                            for a, (d, _) in others.items()}  # fmt: skip
    images = _draw_distortions(suite, name, x, x_adv, found)
    l2 = _l2_table(suite, dist, lbfgs_seconds, others, sizes["steps"])
    return Outcome("info", summary, figures, [table, l2], images)


def _draw_distortions(suite: Suite, name: str, x, x_adv, found) -> list[dict]:
    shown = found.nonzero().squeeze(1)[:6]
    if not len(shown):
        return []
    diff = x_adv[shown] - x[shown]
    triples = torch.stack([x[shown], x_adv[shown], diff], 1).flatten(0, 1).cpu()
    titles = ["clean", "adversarial", "difference"] * len(shown)
    grid = image_grid(triples, titles, columns=6,
                      signed=[k % 3 == 2 for k in range(len(triples))])  # fmt: skip
    caption = ("clean, L-BFGS adversarial image, and their difference magnified to full contrast "
               "(grey = 0)")  # fmt: skip
    return [suite.save(grid, "distortion", name, caption=caption)]
