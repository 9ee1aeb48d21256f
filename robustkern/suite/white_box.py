"""The strong white-box attacks (AutoAttack's standard white-box stages: APGD-CE, targeted
APGD-DLR, FAB-T; its "rand" version on a randomised model) at the literature's radii, and the
accuracy-robustness scatter that reads their results."""

from __future__ import annotations

import math

from torch import nn

from robustkern import evaluation
from robustkern._io import pyplot
from robustkern.data import eps_text
from robustkern.stats import ALPHA, mcnemar, percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, percent
from robustkern.suite.results import WhiteBox

RETAINED_PASS, RETAINED_WARN = 0.5, 0.1  # share of clean accuracy kept under white-box attack
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")  # the "standard" preset's stages run here


def targets(suite: Suite) -> int:
    """APGD-T's target classes: 9, or every other class of a smaller model."""
    return min(9, suite.num_classes - 1)


def _cost(suite: Suite, name: str, sizes) -> float:
    c, images = suite.costs[name], suite.images(sizes)
    # APGD-CE, then APGD-T and FAB-T per target class (FAB-T: a gradient and a forward a
    # step), per threat and per batch of 256 (evaluate's)
    iterations = sizes["steps"] * (1 + 2.5 * targets(suite)) * math.ceil(images / 256)
    return len(suite.threats) * c.attack(images, iterations) + OVERHEAD


@check(
    "white_box", "Strong white-box attacks", """
    Robust accuracy under AutoAttack's standard white-box stages (APGD-CE, then targeted
    APGD-DLR and FAB-T over up to 9 classes, each on the points still robust; on a randomised
    model its "rand" version, APGD-CE and APGD-DLR averaging 20 gradients a step, each point
    judged over 10 forwards) at the literature's radius for this kind of data, in both norms,
    each with its 95 % interval. Pass: the model keeps at
    least half its clean accuracy in every norm; warn: at least 10 %; fail below. A standard
    model fails: that is the point of adversarial examples (Szegedy et al.).""",
    knobs={"images": Knob(50, 500), "steps": Knob(10, 100, keep=0.5)},
    cost=_cost, priority=0, weight=3.0,
)  # fmt: skip
def white_box(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    results = [
        evaluation.evaluate(model, (x, y), "standard", only=WHITE_BOX, eps=t.eps,
                            norm=t.norm, steps=sizes["steps"], bounds=suite.bounds,
                            generator=suite.generator(), progress=False)
        for t in suite.threats
    ]  # fmt: skip
    return _grade(suite, results, sizes["steps"])


def _grade(suite: Suite, results: list, steps: int) -> Outcome:
    """The verdict from the threat under which the model keeps the least of its accuracy."""
    kept = [r.robust_accuracy / max(r.clean_accuracy, 1e-12) for r in results]
    worst = min(range(len(results)), key=kept.__getitem__)
    threat, result = suite.threats[worst], results[worst]
    verdict = "pass" if kept[worst] >= RETAINED_PASS else (
        "warn" if kept[worst] >= RETAINED_WARN else "fail")  # fmt: skip
    stages = " + ".join(name.upper() for name in result.broken_by)
    summary = (
        f"robust accuracy {result.interval_text('robust')} (clean "
        f"{result.interval_text('clean')}) under {stages} at {threat.norm} eps "
        f"{eps_text(threat.eps, suite.bounds, threat.norm)} on {result.n} images, "
        f"{percent(kept[worst])} of the clean accuracy kept"
    )
    if result.note:
        summary += " (randomised model: AutoAttack's rand version, judged over 10 forwards)"
    main = results[0]
    typed = WhiteBox(main.clean_accuracy, main.robust_accuracy, main.n, main.interval("clean"),
                     main.interval("robust"), tuple(main.robust_correct.tolist()))  # fmt: skip
    figures = {
        "images": main.n, "steps": steps, "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": {f"{t.norm}:{t.eps:g}": r.robust_accuracy
                            for t, r in zip(suite.threats, results, strict=True)},
        "worst_retained": kept[worst], "main": typed.to_figures(),
    }  # fmt: skip
    return Outcome(verdict, summary, figures, [_table(suite, results, steps)])


def _table(suite: Suite, results: list, steps: int) -> dict:
    names = list(results[0].broken_by)  # the stages run (the same preset for every threat)
    rows = []
    for t, r in zip(suite.threats, results, strict=True):
        after = dict(r.after_each_attack())
        rows.append([
            t.norm, eps_text(t.eps, suite.bounds, t.norm), r.interval_text("clean"),
            *(percent_with_interval(round(after[k] * r.n), r.n) for k in names),
            r.interval_text("robust"), t.source,
        ])  # fmt: skip
    return {
        "title": f"white-box cascade on {results[0].n} images, {steps} steps, {targets(suite)} "
        "targets; 95 % intervals in brackets",
        "columns": ["norm", "eps", "clean", *(f"after {k.upper()}" for k in names), "robust",
                    "eps from"],
        "rows": rows,
    }  # fmt: skip


@check(
    "tradeoff", "Accuracy-robustness trade-off", """
    Clean against robust accuracy (with 95 % intervals) for every model given and every cell of
    a trade-off sweep: robustness usually costs clean accuracy (Tsipras et al.), and the scatter
    shows what each model paid. Models of this run are compared on the same images with
    McNemar's test, so a gap the sample cannot establish is not read as a ranking.""",
    per_model=False, needs=("white_box",), priority=12,
)  # fmt: skip
def tradeoff(suite: Suite, sizes) -> Outcome:
    ours = {k: r for k in suite.models if (r := suite.result("white_box", k)) is not None}
    points = [(k, r.clean, r.robust) for k, r in ours.items()] + _sweep_points(suite)
    if len(points) < 2:
        raise Skip(
            "needs several models (--model ...) or a trade-off sweep (--tradeoff DIR written by "
            "robustkern tradeoff); the white-box check must have run"
        )
    best = max(points, key=lambda p: p[2])
    paired = _against(ours, best[0]) if best[0] in ours else {}
    summary = (
        f"{len(points)} models; most robust: {best[0]} ({percent(best[2])} robust, "
        f"{percent(best[1])} clean)"
    )
    summary += "".join(f"; vs {k}: {v}" for k, v in paired.items())
    rows = [[label, _text(ours, label, "clean", clean), _text(ours, label, "robust", robust),
             paired.get(label, "")] for label, clean, robust in points]  # fmt: skip
    table = {
        "title": "accuracy-robustness trade-off (95 % intervals; sweep cells as recorded)",
        "columns": ["model", "clean", "robust", f"robust accuracy against {best[0]}"],
        "rows": rows,
    }
    figures = {"points": [{"model": p[0], "clean": p[1], "robust": p[2]} for p in points],
               "paired_tests": paired}  # fmt: skip
    return Outcome("info", summary, figures, [table], [_draw(suite, points)])


def _sweep_points(suite: Suite) -> list[tuple[str, float, float]]:
    """The cells of a trade-off sweep given with --tradeoff, at its largest evaluation eps."""
    t = suite.tradeoff
    if t is None:
        return []
    at = t.eval_eps[-1]
    return [(f"{t.method} eps {e:g} (sweep, PGD at {at:g})", clean, robust[-1])
            for e, clean, robust in zip(t.eps, t.clean, t.robust, strict=True)]  # fmt: skip


def _text(ours: dict, label: str, which: str, value: float) -> str:
    if label not in ours:
        return percent(value)
    lo, hi = getattr(ours[label], f"{which}_interval")
    return f"{percent(value)} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _against(ours: dict[str, WhiteBox], best: str) -> dict[str, str]:
    """Per other model of this run: is the most robust one significantly more robust on the
    images both were attacked on (McNemar)?"""
    out = {}
    for name, other in ours.items():
        if name == best:
            continue
        n = min(ours[best].n, other.n)
        pairs = list(zip(ours[best].robust_correct[:n], other.robust_correct[:n], strict=True))
        b = sum(1 for a, t in pairs if a and not t)
        c = sum(1 for a, t in pairs if t and not a)
        p = mcnemar(b, c)
        out[name] = f"{'significantly' if p < ALPHA else 'not significantly'} more robust "
        out[name] += f"(McNemar p = {p:.2g}, {n} images)"
    return out


def _draw(suite: Suite, points) -> dict:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, clean, robust in points:
        ax.scatter(100 * clean, 100 * robust, s=40)
        ax.annotate(label, (100 * clean, 100 * robust), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    threat = suite.threat
    ax.set_title(f"{threat.norm}, eps {eps_text(threat.eps, suite.bounds, threat.norm)}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return suite.save(fig, "tradeoff", caption="clean against robust accuracy, one point per model")
