"""The robustness sandwich as a suite check: certified lower bounds (bound propagation and the
Lipschitz margin) under the attacks' upper bounds, on the same images and radii."""

from __future__ import annotations

import torch
from torch import nn

from robustkern import attacks, certify, evaluation
from robustkern._io import pyplot
from robustkern.data import eps_text
from robustkern.modes import eval_mode
from robustkern.stats import percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, percent
from robustkern.suite.inspection import _lipschitz_cost
from robustkern.suite.white_box import targets

BOUND = "crown-ibp"  # CROWN's backward pass over IBP's intermediate bounds: never looser than IBP
GRID = (0.25, 0.5, 0.75, 1.0, 1.5)  # the curves' radii, in units of the threat's eps
CERTIFY_FORWARDS = 30  # a CROWN-IBP bound costs about this many forwards an image (measured)


def _cost(suite: Suite, name: str, sizes) -> float:
    c, images, steps = suite.costs[name], suite.images(sizes), sizes["steps"]
    per_threat = c.attack(images, steps * (1 + targets(suite)))  # APGD-CE, APGD-T at eps
    per_threat += c.attack(images, steps, early_stop=False)  # FMN's curve
    per_threat += c.forwards(images * CERTIFY_FORWARDS * len(GRID), len(GRID))
    return len(suite.threats) * per_threat + _lipschitz_cost(suite, name) + OVERHEAD


@check(
    "certified", "Certified lower bounds (the robustness sandwich)", """
    Every attack gives an upper bound on the true robust accuracy; a certificate gives a lower
    bound: for each verified image no input in the ball changes the prediction. Here the best of
    the certificates that apply (CROWN-IBP bound propagation where every layer is supported; the
    Lipschitz margin over the spectral bound, Tsuzuku et al.) sits under APGD-CE + APGD-T at
    the same radius on the same images; images are verified, attacked, or open (the question
    neither side settles). The curves span radii around the literature's; the gap is shown
    however wide. A verified image that an attack breaks is an error, never a pass.""",
    knobs={"images": Knob(20, 200), "steps": Knob(10, 50, keep=0.5)},
    cost=_cost, priority=12, weight=1.0,
)  # fmt: skip
def certified(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    rows, figures, images, notes = [], {}, [], {}
    with eval_mode(model):
        lipschitz, notes["lipschitz"] = _lipschitz(model, x)
        for t in suite.threats:
            if t.norm not in ("linf", "l2"):
                continue
            sandwich = _sandwich(suite, model, x, y, t, sizes["steps"], lipschitz, notes)
            if sandwich is None:
                continue
            rows.append(_row(suite, t, sandwich))
            figures[f"{t.norm}:{t.eps:g}"] = sandwich["figures"]
            images.append(_draw(suite, name, t, sandwich))
    if not rows:
        raise Skip("no certificate applies: " + "; ".join(v for v in notes.values() if v))
    key = f"{suite.threat.norm}:{suite.threat.eps:g}"
    main = figures.get(key, next(iter(figures.values())))
    summary = (
        f"certified {percent(main['certified'])} under the attacks' {percent(main['robust'])} "
        f"at the main radius: {main['open']} of {len(x)} images open"
    )
    unused = "; ".join(v for v in notes.values() if v)
    summary += f" ({unused})" if unused else ""
    table = {
        "title": f"the sandwich on {len(x)} test images: certified (lower) and attacked (upper) "
        "robust accuracy, 95 % intervals",
        "columns": ["norm", "eps", "certificate", "certified", "APGD-CE + APGD-T", "gap (pp)",
                    "verified / attacked / open"],
        "rows": rows,
    }  # fmt: skip
    figures["notes"] = notes
    return Outcome("info", summary, figures, [table], images)


def _lipschitz(model, x) -> tuple[float | None, str]:
    """The certified L2 Lipschitz bound of the logits, or why there is none."""
    try:
        return certify.lipschitz_bound(model, tuple(x.shape[1:])), ""
    except ValueError as e:
        return None, f"Lipschitz margin: {e}"


def _verified(model, x, y, eps, t, lipschitz, notes) -> dict[str, torch.Tensor]:
    """Each applicable certificate's verified images at eps (bool (N,) each)."""
    out = {}
    if "bound" not in notes:
        try:
            out[BOUND] = certify.verified(model, x, y, eps=eps, norm=t.norm, method=BOUND)
        except certify.UnsupportedLayerError as e:
            notes["bound"] = str(e).split(". Supported")[0]  # names the layer
    if lipschitz is not None:
        out["lipschitz"] = certify.lipschitz_verified(model, x, y, eps=eps, norm=t.norm,
                                                      lipschitz=lipschitz)  # fmt: skip
    return out


def _sandwich(suite, model, x, y, t, steps, lipschitz, notes) -> dict | None:
    at_eps = _verified(model, x, y, t.eps, t, lipschitz, notes)
    if not at_eps:
        return None
    best = torch.stack(list(at_eps.values())).any(0)
    attack = evaluation.evaluate(model, (x, y), "standard", only=("apgd-ce", "apgd-t"),
                                 eps=t.eps, norm=t.norm, steps=steps, bounds=suite.bounds,
                                 generator=suite.generator(), progress=False)  # fmt: skip
    robust = attack.robust_correct.to(best.device)
    if bool((best & ~robust).any()):
        raise RuntimeError(f"an image verified at {t.norm} eps {t.eps:g} was broken by APGD: "
                           "the certificate is unsound")  # fmt: skip
    _, dist = attacks.min_norm(model, x, y, norm=t.norm, steps=steps, bounds=suite.bounds,
                               return_norms=True)  # fmt: skip
    grid = [g * t.eps for g in GRID]
    lower = [torch.stack(list(_verified(model, x, y, e, t, lipschitz, notes).values())).any(0)
             .float().mean().item() for e in grid]  # fmt: skip
    upper = [a for _, a in attacks.robust_accuracy_curve(dist.cpu(), grid)]
    n, verified = len(x), int(best.sum())
    attacked = int(attack.success.sum())
    return {
        "n": n, "methods": " or ".join(at_eps), "verified": verified, "attacked": attacked,
        "robust_count": int(robust.sum()), "grid": grid, "lower": lower, "upper": upper,
        "figures": {"certified": verified / n, "robust": attack.robust_accuracy,
                    "open": int(robust.sum()) - verified, "attacked": attacked,
                    "by_certificate": {k: v.float().mean().item() for k, v in at_eps.items()},
                    "curve": {"eps": grid, "certified": lower, "fmn": upper}},
    }  # fmt: skip


def _row(suite: Suite, t, s: dict) -> list:
    n, f = s["n"], s["figures"]
    return [
        t.norm, eps_text(t.eps, suite.bounds, t.norm), s["methods"],
        percent_with_interval(s["verified"], n), percent_with_interval(s["robust_count"], n),
        f"{100 * (f['robust'] - f['certified']):.1f}",
        f"{s['verified']} / {s['attacked']} / {f['open']}",
    ]  # fmt: skip


def _draw(suite: Suite, name: str, t, s: dict) -> dict:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    upper, lower = [100 * a for a in s["upper"]], [100 * a for a in s["lower"]]
    ax.plot(s["grid"], upper, marker="o", label="upper: FMN minimum-norm attack")
    ax.plot(s["grid"], lower, marker="s", label=f"lower: certified ({s['methods']})")
    ax.fill_between(s["grid"], lower, upper, color="gray", alpha=0.2, label="open")
    ax.axvline(t.eps, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"eps ({t.norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    caption = (f"robust accuracy between its certified lower bound and an attack's upper bound on "
               f"{s['n']} images, {t.norm}; the dotted line is the literature's eps")  # fmt: skip
    return suite.save(fig, "sandwich", t.norm, name, caption=caption)
