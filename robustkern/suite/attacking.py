"""Checks that attack a model: strong white-box attacks, the gradient-masking indicators, the
unbounded minimum-norm attack and its robust-accuracy curve, Szegedy et al.'s minimum
distortion against Gaussian noise of the same size, transfer between the models, and the
class probabilities along a PGD run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustkern import attacks, evaluation, ops
from robustkern._io import pyplot
from robustkern.attacks._common import check_inputs, input_grad
from robustkern.data import eps_text
from robustkern.evaluation import eval_mode
from robustkern.evaluation.transfer import same_size_noise
from robustkern.suite.core import Outcome, Skip, Suite, image_grid, percent

RETAINED_PASS, RETAINED_WARN = 0.5, 0.1  # share of clean accuracy kept under white-box attack


def white_box(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(500, 100)
    steps = suite.budget(100, 20)
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
        rows.append(
            [
                t.norm,
                eps_text(t.eps, suite.bounds),
                percent(r.clean_accuracy),
                percent(after["apgd-ce"]),
                percent(after["apgd-t"]),
                percent(r.robust_accuracy),
                t.source,
            ]
        )
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
        f"robust accuracy {percent(result.robust_accuracy)} (clean {percent(result.clean_accuracy)}"
        f") under APGD-CE + APGD-T at {threat.norm} eps {eps_text(threat.eps, suite.bounds)}, "
        f"{percent(kept[worst])} of the clean accuracy kept"
    )
    figures = {
        "images": len(x),
        "steps": steps,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": {
            f"{t.norm}:{t.eps:g}": r.robust_accuracy
            for t, r in zip(suite.threats, results, strict=True)
        },
        "worst_retained": kept[worst],
        "main": {"clean": results[0].clean_accuracy, "robust": results[0].robust_accuracy},
    }
    columns = ["norm", "eps", "clean", "after APGD-CE", "after APGD-T", "robust", "eps from"]
    table = {
        "title": f"white-box cascade, {steps} steps, 9 targets",
        "columns": columns,
        "rows": rows,
    }
    return Outcome(verdict, summary, figures, [table])


def masking(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(200, 50)
    others = [m for k, m in suite.models.items() if k != name]
    found = evaluation.indicators(
        model,
        x,
        y,
        norm=suite.threat.norm,
        eps=suite.threat.eps,
        bounds=suite.bounds,
        steps=suite.budget(100, 10),
        queries=suite.budget(1000, 100),
        samples=suite.budget(32, 4),
        surrogate=others[0] if others else None,
        seed=suite.seed,
    )
    order = ("pass", "warn", "fail")
    verdict = max((i.verdict for i in found), key=order.index)
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


def unbounded(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(500, 100)
    norm = suite.threat.norm
    with eval_mode(model):
        x_adv, dist = attacks.min_norm(
            model,
            x,
            y,
            norm=norm,
            steps=suite.budget(100, 30),
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
        ax.scatter(
            [suite.threat.eps],
            [100 * fixed["robust"]],
            color="red",
            zorder=3,
            label="APGD-CE + APGD-T at fixed eps",
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
    summary = f"the unbounded FMN attack reached {percent(reached)} error"
    summary += f"; median {norm} distance {float(dist.median()):.3g}; robust accuracy at eps "
    summary += f"{suite.threat.eps:g} {percent(at_eps)} from the curve"
    if fixed is not None:
        summary += f" ({percent(fixed['robust'])} from the fixed-eps attacks)"
        figures["fixed_eps_robust_accuracy"] = fixed["robust"]
    return Outcome("pass" if reached == 1.0 else "fail", summary, figures, images=images)


def min_distortion(suite: Suite, name: str, model: nn.Module) -> Outcome:
    x, y = suite.subset(50, 20)
    with eval_mode(model):
        x_adv, dist = attacks.lbfgs(
            model,
            x,
            y,
            search_steps=suite.budget(8, 4),
            max_iter=suite.budget(60, 20),
            bounds=suite.bounds,
            return_norms=True,
        )
        with torch.no_grad():
            clean_error = (model(x).argmax(1) != y).float().mean().item()
            found = (dist > 0) & dist.isfinite()
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


def transfer(suite: Suite) -> Outcome:
    if len(suite.models) < 2:
        raise Skip("needs at least two models (give several --model)")
    x, y = suite.subset(300, 60)
    table = evaluation.transfer_matrix(
        suite.models,
        x,
        y,
        attack="apgd",
        eps=suite.threat.eps,
        norm=suite.threat.norm,
        steps=suite.budget(100, 20),
        bounds=suite.bounds,
        seed=suite.seed,
    )
    error, names = table.error, table.targets
    # a target's white-box error (its own row) must not be beaten by examples from another model
    gaps = [
        (error[s, t] - error[t, t]).item()
        for s in range(len(names))
        for t in range(len(names))
        if s != t
    ]
    worst = max(gaps)
    verdict = "fail" if worst > 0.01 else "warn" if worst > 0 else "pass"
    rows = [["clean", "0", *(percent(v) for v in table.clean_error.tolist())]]
    for i, src in enumerate(table.sources):
        d = f"{table.distortion[i]:.4f}"
        rows.append([f"APGD on {src}", d, *(percent(v) for v in error[i].tolist())])
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
    summary = (
        "transferred examples never beat a model's own white-box attack"
        if worst <= 0
        else f"examples from another model beat a white-box attack by {percent(worst)}: the "
        "white-box attack is failing (gradient masking?)"
    )
    figures = {**table.to_dict(), "largest_gain_over_white_box": worst, "images": len(x)}
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


def trajectory(suite: Suite, name: str, model: nn.Module) -> Outcome:
    steps, shown = suite.budget(20, 10), 4
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


def tradeoff(suite: Suite) -> Outcome:
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
    rows = [[label, percent(clean), percent(robust)] for label, clean, robust in points]
    table = {
        "title": "accuracy-robustness trade-off",
        "columns": ["model", "clean", "robust"],
        "rows": rows,
    }
    figures = {"points": [{"model": p[0], "clean": p[1], "robust": p[2]} for p in points]}
    return Outcome("info", summary, figures, [table], [image])
