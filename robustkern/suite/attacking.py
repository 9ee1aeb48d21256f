"""Checks that attack a model: strong white-box attacks, the gradient-masking indicators, the
unbounded minimum-norm attack and its robust-accuracy curve, Szegedy et al.'s minimum
distortion against Gaussian noise of the same size, transfer between the models, and the
class probabilities along a PGD run."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustkern import attacks, evaluation, ops
from robustkern._io import pyplot
from robustkern.attacks._common import check_inputs, input_grad
from robustkern.data import eps_text
from robustkern.evaluation import eval_mode
from robustkern.evaluation.masking import VERDICTS as INDICATOR_VERDICTS
from robustkern.evaluation.transfer import same_size_noise
from robustkern.stats import ALPHA, mcnemar, paired_verdict, percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, image_grid, percent

RETAINED_PASS, RETAINED_WARN = 0.5, 0.1  # share of clean accuracy kept under white-box attack
LBFGS_ITERATION = 0.01  # seconds scipy's L-BFGS-B spends per iteration besides the model


def _targets(suite: Suite) -> int:
    return min(9, suite.num_classes - 1)


def _white_box_cost(suite: Suite, name: str, sizes) -> float:
    c, images = suite.costs[name], suite.images(sizes)
    # APGD-CE, then APGD-T per target class, per threat and per batch of 256 (evaluate's)
    iterations = sizes["steps"] * (1 + _targets(suite)) * math.ceil(images / 256)
    return len(suite.threats) * c.attack(images, iterations) + OVERHEAD


@check(
    "white_box", "Strong white-box attacks", """
    Robust accuracy under the reliable evaluation's white-box stages (APGD-CE, then targeted
    APGD-DLR over up to 9 classes, each on the points still robust) at the literature's radius
    for this kind of data, in both norms, each with its 95 % interval. Pass: the model keeps at
    least half its clean accuracy; warn: at least 10 %; fail below. A standard model fails: that
    is the point of adversarial examples (Szegedy et al.).""",
    knobs={"images": Knob(50, 500), "steps": Knob(10, 100, keep=0.5)},
    cost=_white_box_cost, priority=0, weight=3.0,
)  # fmt: skip
def white_box(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    steps = sizes["steps"]
    results = [
        evaluation.evaluate(
            model,
            (x, y),
            "standard",
            white_box_only=True,
            eps=t.eps,
            norm=t.norm,
            steps=steps,
            bounds=suite.bounds,
            generator=suite.generator(),
            progress=False,
        )
        for t in suite.threats
    ]
    rows = []
    for t, r in zip(suite.threats, results, strict=True):
        after = dict(r.after_each_attack())
        rows.append([
            t.norm, eps_text(t.eps, suite.bounds), r.interval_text("clean"),
            percent_with_interval(round(after["apgd-ce"] * r.n), r.n),
            percent_with_interval(round(after["apgd-t"] * r.n), r.n),
            r.interval_text("robust"), t.source,
        ])  # fmt: skip
    kept = [r.robust_accuracy / max(r.clean_accuracy, 1e-12) for r in results]
    worst = min(range(len(results)), key=kept.__getitem__)
    threat, result = suite.threats[worst], results[worst]
    verdict = (
        "pass"
        if kept[worst] >= RETAINED_PASS
        else "warn"
        if kept[worst] >= RETAINED_WARN
        else "fail"
    )
    summary = (
        f"robust accuracy {result.interval_text('robust')} (clean "
        f"{result.interval_text('clean')}) under APGD-CE + APGD-T at {threat.norm} eps "
        f"{eps_text(threat.eps, suite.bounds)} on {result.n} images, {percent(kept[worst])} of "
        "the clean accuracy kept"
    )
    main = results[0]
    figures = {
        "images": len(x),
        "steps": steps,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": {
            f"{t.norm}:{t.eps:g}": r.robust_accuracy
            for t, r in zip(suite.threats, results, strict=True)
        },
        "worst_retained": kept[worst],
        "main": {
            "clean": main.clean_accuracy, "robust": main.robust_accuracy, "n": main.n,
            "clean_interval": main.interval("clean"), "robust_interval": main.interval("robust"),
            "robust_correct": main.robust_correct.int().tolist(),
        },
    }  # fmt: skip
    columns = ["norm", "eps", "clean", "after APGD-CE", "after APGD-T", "robust", "eps from"]
    table = {
        "title": f"white-box cascade on {result.n} images, {steps} steps, {_targets(suite)} "
        "targets; 95 % intervals in brackets",
        "columns": columns,
        "rows": rows,
    }
    return Outcome(verdict, summary, figures, [table])


def _eps_grid_length(suite: Suite) -> int:
    """How many radii the indicators' eps curve tries: eps/4 doubling up to half the box."""
    width = float(suite.bounds[1]) - float(suite.bounds[0])
    half = width / 2 * (1 if suite.threat.norm == "linf" else suite.x[0].numel() ** 0.5)
    return 2 + max(0, math.ceil(math.log2(max(half / (suite.threat.eps / 2), 1.0))))


def _masking_cost(suite: Suite, name: str, sizes) -> float:
    c, images, steps = suite.costs[name], suite.images(sizes), sizes["steps"]
    # white box, APGD once more, 4x steps with 2 restarts, the unbounded attack and the curve
    iterations = steps * (1 + _targets(suite) + 1 + 8 + 1 + _eps_grid_length(suite))
    transfer = c.attack(images, steps, early_stop=False) if len(suite.models) > 1 else 0.0
    calls = sizes["queries"] + sizes["samples"]  # Square's queries, the random points
    queries = c.forwards(images * c.clean_accuracy * calls, calls)
    return c.attack(images, iterations) + transfer + queries + OVERHEAD


@check(
    "masking", "Gradient-masking indicators", """
    A robust accuracy is only believable if the attack behind it worked. These indicators
    (Carlini et al. 2019, AutoAttack's checks, Pintor et al. 2022) look for the symptoms of
    gradient masking: black-box, transfer, single-step or random attacks beating the white-box
    one, an unbounded attack short of 100 % error, robust accuracy that does not fall with eps,
    zero or random gradients. Attacks compared on the same images are judged by paired tests
    (McNemar, and the binomial tail against a 1 % tolerance): inconclusive when the sample
    cannot tell a failing attack from noise. The verdict is the worst indicator's.""",
    knobs={"images": Knob(20, 200), "steps": Knob(5, 100, keep=0.5),
           "queries": Knob(50, 1000, keep=0.5), "samples": Knob(4, 32)},
    cost=_masking_cost, needs=("white_box",), priority=2, weight=3.0,
)  # fmt: skip
def masking(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    others = [m for k, m in suite.models.items() if k != name]
    found = evaluation.indicators(
        model,
        x,
        y,
        norm=suite.threat.norm,
        eps=suite.threat.eps,
        bounds=suite.bounds,
        steps=sizes["steps"],
        queries=sizes["queries"],
        samples=sizes["samples"],
        surrogate=others[0] if others else None,
        seed=suite.seed,
    )
    verdict = max((i.verdict for i in found), key=INDICATOR_VERDICTS.index)
    bad = [i.name for i in found if i.verdict != "pass"]
    summary = f"{sum(i.verdict == 'pass' for i in found)} of {len(found)} indicators pass"
    summary += f"; not passing: {', '.join(bad)}" if bad else ""
    if not others:
        summary += " (the transfer indicator needs a second model)"
    rows = [[i.name, i.verdict, f"{i.value:.4g}", i.detail] for i in found]
    table = {
        "title": f"on {len(x)} test images at {suite.threat.norm} eps "
        f"{eps_text(suite.threat.eps, suite.bounds)}",
        "columns": ["indicator", "verdict", "value", "what was measured"],
        "rows": rows,
    }
    figures = {i.name: {"verdict": i.verdict, "value": i.value} for i in found}
    return Outcome(verdict, summary, figures, [table])


def _unbounded_cost(suite: Suite, name: str, sizes) -> float:
    c = suite.costs[name]  # FMN runs every step on every correctly classified image, and
    # its own per-image work (norms, projections) doubles a bare gradient step (measured)
    return 2 * c.attack(suite.images(sizes), sizes["steps"], early_stop=False) + 2 * OVERHEAD


@check(
    "unbounded", "Unbounded attack and the robust-accuracy curve", """
    With no bound on the perturbation every input can be made misclassified; an attack that
    cannot reach 100 % error is failing, and every robust accuracy it reports is suspect. The
    fast minimum-norm attack (FMN) finds each image's smallest adversarial perturbation, which
    gives the whole robust-accuracy-vs-eps curve from one run; the fixed-eps white-box result is
    marked on it as a cross-check. Fail: any image never flipped.""",
    knobs={"images": Knob(50, 500), "steps": Knob(20, 100, keep=0.5)},
    cost=_unbounded_cost, needs=("white_box",), priority=1, weight=2.0,
)  # fmt: skip
def unbounded(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    norm = suite.threat.norm
    with eval_mode(model):
        x_adv, dist = attacks.min_norm(
            model,
            x,
            y,
            norm=norm,
            steps=sizes["steps"],
            bounds=suite.bounds,
            return_norms=True,
        )
    dist = dist.cpu()
    reached = dist.isfinite().float().mean().item()
    finite = dist[dist.isfinite()]
    top = max(float(finite.max()) if len(finite) else suite.threat.eps, suite.threat.eps) * 1.05
    grid = torch.linspace(0, top, 101)
    curve = attacks.robust_accuracy_curve(dist, grid)
    fixed = (suite.figures_of("white_box", name) or {}).get("main")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([e for e, _ in curve], [100 * a for _, a in curve], label="minimum-norm attack (FMN)")
    if fixed is not None:
        lo, hi = fixed["robust_interval"]
        ax.errorbar(
            [suite.threat.eps],
            [100 * fixed["robust"]],
            yerr=[
                [max(0.0, 100 * (fixed["robust"] - lo))],
                [max(0.0, 100 * (hi - fixed["robust"]))],
            ],
            fmt="o",
            color="red",
            zorder=3,
            capsize=3,
            label="APGD-CE + APGD-T at fixed eps (95 % interval)",
        )
    ax.axvline(suite.threat.eps, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    images = [
        suite.save(
            fig,
            "eps_curve",
            name,
            caption=(
                f"robust accuracy against eps from one FMN run on {len(x)} images; the dotted "
                "line is the main eps"
            ),
        )
    ]
    flipped = ((dist > 0) & dist.isfinite()).nonzero().squeeze(1)[:8]
    if len(flipped):
        with torch.no_grad():
            pred = model(x_adv[flipped]).argmax(1).cpu()
        pairs = torch.stack([x[flipped].cpu(), x_adv[flipped].cpu()], 1).flatten(0, 1)
        titles = [
            t
            for k, i in enumerate(flipped.tolist())
            for t in (f"{y[i].item()}", f"-> {pred[k].item()} @ {dist[i]:.2f}")
        ]
        fig = image_grid(pairs, titles, columns=8)
        images.append(
            suite.save(
                fig,
                "min_norm_examples",
                name,
                caption=(
                    f"clean image and its FMN adversarial example ({norm} distance after @, "
                    "predicted class after the arrow)"
                ),
            )
        )
    at_eps = attacks.robust_accuracy_curve(dist, [suite.threat.eps])[0][1]
    figures = {
        "error_unbounded": reached,
        "never_flipped": int((~dist.isfinite()).sum()),
        "median_distance": float(dist.median()),
        "robust_accuracy_at_eps": at_eps,
        "curve": [[round(e, 6), a] for e, a in curve[::10]],
    }
    summary = f"the unbounded FMN attack reached {percent(reached)} error on {len(x)} images"
    summary += f"; median {norm} distance {float(dist.median()):.3g}; robust accuracy at eps "
    summary += f"{suite.threat.eps:g} {percent_with_interval(round(at_eps * len(x)), len(x))} "
    summary += "from the curve"
    if fixed is not None:
        summary += f" ({percent(fixed['robust'])} from the fixed-eps attacks)"
        figures["fixed_eps_robust_accuracy"] = fixed["robust"]
    return Outcome("pass" if reached == 1.0 else "fail", summary, figures, images=images)


def _min_distortion_cost(suite: Suite, name: str, sizes) -> float:
    c = suite.costs[name]
    iterations = sizes["search_steps"] * sizes["iterations"]
    # several evaluations per L-BFGS-B iteration (its line search), and scipy's bookkeeping
    return c.attack(suite.images(sizes), 4 * iterations, early_stop=False) + (
        iterations * LBFGS_ITERATION + OVERHEAD
    )


@check(
    "min_distortion", "Minimum distortion (Szegedy et al.)", """
    Szegedy et al. measure a model's stability by the average minimum distortion
    sqrt(mean squared pixel change) that box-constrained L-BFGS needs to change its decision,
    and show that Gaussian noise of the same size barely hurts: adversarial examples are rare,
    specific directions, not a sign of general noise sensitivity.""",
    knobs={"images": Knob(10, 50), "search_steps": Knob(3, 8), "iterations": Knob(15, 60)},
    cost=_min_distortion_cost, priority=7, weight=1.0,
)  # fmt: skip
def min_distortion(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    with eval_mode(model):
        x_adv, dist = attacks.lbfgs(
            model,
            x,
            y,
            search_steps=sizes["search_steps"],
            max_iter=sizes["iterations"],
            bounds=suite.bounds,
            return_norms=True,
        )
        with torch.no_grad():
            clean_error = (model(x).argmax(1) != y).float().mean().item()
            found = (dist > 0) & dist.isfinite()
            if not bool((dist > 0).any()):
                raise Skip(f"none of the {len(x)} test images is classified correctly")
            noisy = same_size_noise(x[found], x_adv[found], suite.bounds, suite.generator())
            noise_error = (model(noisy).argmax(1) != y[found]).float().mean().item()
            adv_error = (model(x_adv[found]).argmax(1) != y[found]).float().mean().item()
    distortion = attacks.average_distortion(x[found], x_adv[found])
    row = [
        name,
        percent(clean_error),
        f"{distortion:.4f}",
        percent(adv_error),
        percent(noise_error),
    ]
    columns = [
        "model",
        "test error",
        "av. min. distortion",
        "error on the adversarial images",
        "error under Gaussian noise of the same size",
    ]
    table = {
        "title": f"as Szegedy et al.'s Tables 1 and 2, L-BFGS on {len(x)} test images",
        "columns": columns,
        "rows": [row],
    }
    images = []
    shown = found.nonzero().squeeze(1)[:6]
    if len(shown):
        diff = x_adv[shown] - x[shown]
        triples = torch.stack([x[shown], x_adv[shown], diff], 1).flatten(0, 1).cpu()
        titles = ["clean", "adversarial", "difference"] * len(shown)
        images.append(
            suite.save(
                image_grid(
                    triples, titles, columns=6, signed=[k % 3 == 2 for k in range(len(triples))]
                ),
                "distortion",
                name,
                caption="clean, L-BFGS adversarial image, and their difference magnified to full "
                "contrast (grey = 0)",
            )
        )
    figures = {
        "average_min_distortion": distortion,
        "images": len(x),
        "found": int(found.sum()),
        "error_adversarial": adv_error,
        "error_same_size_noise": noise_error,
        "mean_l2": float(dist[found].mean()) if found.any() else float("nan"),
    }
    summary = (
        f"average minimum distortion {distortion:.4f} (sqrt(mean squared pixel change), "
        f"L-BFGS found {int(found.sum())} of {int((dist > 0).sum())}); Gaussian noise of the "
        f"same size: error {percent(noise_error)} against {percent(adv_error)}"
    )
    return Outcome("info", summary, figures, [table], images)


def _transfer_cost(suite: Suite, name: str | None, sizes) -> float:
    images, steps = suite.images(sizes), sizes["steps"]  # APGD without early stop, per source
    crafted = sum(c.attack(images, steps, early_stop=False) for c in suite.costs.values())
    scored = sum(c.forwards(2 * len(suite.models) * images, 2 * len(suite.models))
                 for c in suite.costs.values())  # fmt: skip
    return crafted + scored + 2 * OVERHEAD


@check(
    "transfer", "Transfer between models", """
    Adversarial examples crafted on one model fool others (Szegedy et al., Table 2), next to
    Gaussian noise of the same size. Examples transferred from another model must not beat a
    model's own white-box attack: if they do, the white-box attack is failing on it (the
    checklist's 'black box weaker than white box'). Each pair is compared on the same images
    (McNemar, and the binomial tail against a 1 % tolerance): fail when transfer is
    significantly stronger, inconclusive when the sample cannot tell.""",
    per_model=False, knobs={"images": Knob(30, 300), "steps": Knob(10, 100, keep=0.5)},
    cost=_transfer_cost, priority=4, weight=1.5,
)  # fmt: skip
def transfer(suite: Suite, sizes) -> Outcome:
    if len(suite.models) < 2:
        raise Skip("needs at least two models (give several --model)")
    x, y = suite.first(sizes)
    table = evaluation.transfer_matrix(
        suite.models,
        x,
        y,
        attack="apgd",
        eps=suite.threat.eps,
        norm=suite.threat.norm,
        steps=sizes["steps"],
        bounds=suite.bounds,
        seed=suite.seed,
    )
    error, names, fooled = table.error, table.targets, table.fooled
    # a target's white-box error (its own row) must not be beaten by examples from another model
    beaten, verdicts = [], []  # per (source, target): images only the transfer broke
    for s in range(len(names)):
        for t in range(len(names)):
            if s != t:
                b = int((fooled[s, t] & ~fooled[t, t]).sum())
                c = int((fooled[t, t] & ~fooled[s, t]).sum())
                beaten.append(b)
                verdicts.append(paired_verdict(b, c, len(x), 0.01)[0])
    worst = max(beaten) / len(x)
    verdict = max(verdicts, key=INDICATOR_VERDICTS.index)
    n = len(x)
    rows = [["clean", "0", *(percent(v) for v in table.clean_error.tolist())]]
    for i, src in enumerate(table.sources):
        d = f"{table.distortion[i]:.4f}"
        rows.append([f"APGD on {src}", d,
                     *(percent_with_interval(int(f.sum()), n) for f in fooled[i])])  # fmt: skip
        rows.append(
            ["Gaussian noise, same size", d, *(percent(v) for v in table.noise_error[i].tolist())]
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 1.2 * len(names) + 1.5))
    im = ax.imshow(100 * error.numpy(), cmap="viridis", vmin=0, vmax=100)
    for s in range(len(names)):
        for t in range(len(names)):
            ax.text(t, s, f"{100 * error[s, t]:.0f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("crafted on")
    fig.colorbar(im, ax=ax, label="error (%)")
    fig.tight_layout()
    image = suite.save(
        fig,
        "transfer",
        caption="error of each model on APGD examples crafted on each model (diagonal: white-box)",
    )
    summary = {
        "pass": "transferred examples never beat a model's own white-box attack",
        "warn": f"transferred examples broke {max(beaten)} image(s) a model's own white-box "
        "attack left robust, within the 1 % tolerance",
        "inconclusive": f"transferred examples broke up to {percent(worst)} of the images a "
        "model's own white-box attack left robust; too few images to tell a failing attack "
        "from noise",
        "fail": f"transferred examples broke {percent(worst)} of the images a model's own "
        "white-box attack left robust, significantly: the white-box attack is failing "
        "(gradient masking?)",
    }[verdict]
    summary += f" ({len(x)} images)"
    figures = {**table.to_dict(), "largest_gain_over_white_box": worst, "images": len(x),
               "verdicts": verdicts}  # fmt: skip
    columns = ["examples", "distortion", *names]
    return Outcome(
        verdict,
        summary,
        figures,
        [
            {
                "title": f"error (%), {suite.threat.norm} eps {suite.threat.eps:g}",
                "columns": columns,
                "rows": rows,
            }
        ],
        [image],
    )


def _trajectory_cost(suite: Suite, name: str, sizes) -> float:
    return suite.costs[name].attack(4, sizes["steps"] + 1, early_stop=False) + 2 * OVERHEAD


@check(
    "trajectory", "PGD trajectory", """
    The class probabilities at every PGD step for a few test images (the visual tour's step
    slider as small multiples): a non-robust model's confidence collapses within a few steps, a
    robust model's decays slowly or not at all.""",
    knobs={"steps": Knob(5, 20)}, cost=_trajectory_cost, priority=11, weight=0.2,
)  # fmt: skip
def trajectory(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    steps, shown = sizes["steps"], 4
    with eval_mode(model), torch.no_grad():
        correct = (model(suite.x[:256]).argmax(1) == suite.y[:256]).nonzero().squeeze(1)
    if len(correct) == 0:
        raise Skip("no correctly classified test image to attack")
    idx = correct[:shown]
    x, y = suite.x[idx], suite.y[idx]
    with eval_mode(model):
        probs, x_adv = _pgd_probabilities(model, x, y, suite, steps)
    flips = [
        (p.argmax(1) != y[k].cpu()).nonzero().squeeze(1) for k, p in enumerate(probs.unbind(1))
    ]
    flip_steps = [int(f[0]) if len(f) else None for f in flips]
    plt = pyplot()
    fig, axes = plt.subplots(
        2,
        len(idx),
        figsize=(2.6 * len(idx), 4.6),
        squeeze=False,
        gridspec_kw={"height_ratios": [1, 1.3]},
    )
    for k in range(len(idx)):
        img = x_adv[k].cpu().numpy()
        axes[0, k].imshow(
            img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1
        )
        axes[0, k].set_title(f"label {y[k].item()}, step {steps}", fontsize=8)
        axes[0, k].axis("off")
        p = probs[:, k]
        for c in p.max(0).values.topk(min(3, p.shape[1])).indices.tolist():
            axes[1, k].plot(
                range(steps + 1),
                p[:, c].numpy(),
                label=str(c),
                linewidth=2.5 if c == y[k].item() else 1.2,
            )
        axes[1, k].set_ylim(0, 1.02)
        axes[1, k].set_xlabel("PGD step")
        axes[1, k].legend(fontsize=7, title="class", title_fontsize=7)
        axes[1, k].grid(alpha=0.3)
    axes[1, 0].set_ylabel("probability")
    fig.tight_layout()
    image = suite.save(
        fig,
        "trajectory",
        name,
        caption=(
            f"class probabilities along PGD ({suite.threat.norm}, eps {suite.threat.eps:g}, no "
            "random start) for the first correctly classified test images; thick line: true class"
        ),
    )
    flipped = [s for s in flip_steps if s is not None]
    summary = f"{len(flipped)} of {len(idx)} images flipped within {steps} steps"
    summary += f" (first flips at steps {', '.join(map(str, flipped))})" if flipped else ""
    figures = {
        "steps": steps,
        "flip_step": flip_steps,
        "probabilities": probs.permute(1, 0, 2).tolist(),
    }
    return Outcome("info", summary, figures, images=[image])


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


@check(
    "tradeoff", "Accuracy-robustness trade-off", """
    Clean against robust accuracy (with 95 % intervals) for every model given and every cell of
    a trade-off sweep: robustness usually costs clean accuracy (Tsipras et al.), and the scatter
    shows what each model paid. Models of this run are compared on the same images with
    McNemar's test, so a gap the sample cannot establish is not read as a ranking.""",
    per_model=False, needs=("white_box",), priority=12,
)  # fmt: skip
def tradeoff(suite: Suite, sizes) -> Outcome:
    points = [
        (name, f["main"]["clean"], f["main"]["robust"])
        for name in suite.models
        if (f := suite.figures_of("white_box", name)) is not None
    ]
    t = suite.tradeoff
    if t is not None:
        at = t["config"]["eval_eps"][-1]
        points += [
            (
                f"{t['config']['method']} eps {c['eps']:g} (sweep, PGD at {at:g})",
                c["clean"],
                c["robust"][-1],
            )
            for c in t["cells"].values()
        ]
    if len(points) < 2:
        raise Skip(
            "needs several models (--model ...) or a trade-off sweep (--tradeoff DIR written by "
            "robustkern tradeoff); the white-box check must have run"
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, clean, robust in points:
        ax.scatter(100 * clean, 100 * robust, s=40)
        ax.annotate(
            label,
            (100 * clean, 100 * robust),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{suite.threat.norm}, eps {eps_text(suite.threat.eps, suite.bounds)}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    image = suite.save(
        fig, "tradeoff", caption="clean against robust accuracy, one point per model"
    )
    best = max(points, key=lambda p: p[2])
    summary = (
        f"{len(points)} models; most robust: {best[0]} ({percent(best[2])} robust, "
        f"{percent(best[1])} clean)"
    )
    paired = _against_the_most_robust(suite, best[0])
    if paired:
        summary += "; " + "; ".join(f"vs {k}: {v}" for k, v in paired.items())
    rows = [
        [label, _with_interval(suite, label, "clean", clean),
         _with_interval(suite, label, "robust", robust), paired.get(label, "")]
        for label, clean, robust in points
    ]  # fmt: skip
    table = {
        "title": "accuracy-robustness trade-off (95 % intervals; sweep cells as recorded)",
        "columns": ["model", "clean", "robust", f"robust accuracy against {best[0]}"],
        "rows": rows,
    }
    figures = {"points": [{"model": p[0], "clean": p[1], "robust": p[2]} for p in points],
               "paired_tests": paired}  # fmt: skip
    return Outcome("info", summary, figures, [table], [image])


def _with_interval(suite: Suite, label: str, which: str, value: float) -> str:
    f = suite.figures_of("white_box", label) if label in suite.models else None
    if f is None:
        return percent(value)
    lo, hi = f["main"][f"{which}_interval"]
    return f"{percent(value)} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _against_the_most_robust(suite: Suite, best: str) -> dict[str, str]:
    """Per other model of this run: is the most robust one significantly more robust on the
    images both were attacked on (McNemar)?"""
    if best not in suite.models:
        return {}
    ours = suite.figures_of("white_box", best)["main"]["robust_correct"]
    out = {}
    for name in suite.models:
        f = suite.figures_of("white_box", name)
        if name == best or f is None:
            continue
        theirs = f["main"]["robust_correct"]
        n = min(len(ours), len(theirs))
        b = sum(1 for a, t in zip(ours[:n], theirs[:n], strict=True) if a and not t)
        c = sum(1 for a, t in zip(ours[:n], theirs[:n], strict=True) if t and not a)
        p = mcnemar(b, c)
        out[name] = f"{'significantly' if p < ALPHA else 'not significantly'} more robust "
        out[name] += f"(McNemar p = {p:.2g}, {n} images)"
    return out
