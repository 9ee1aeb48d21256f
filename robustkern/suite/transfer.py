"""Transfer between the models given (Szegedy et al.'s Table 2) as a suite check."""

from __future__ import annotations

import torch

from robustkern import evaluation
from robustkern._io import pyplot
from robustkern.stats import GRADES, paired_verdict, percent_with_interval
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Skip, Suite, check, percent

TOLERANCE = 0.01  # share of images transfer may break beyond the white box, for a warning


# The attacks each source crafts with: APGD (the white-box reference on the diagonal) and
# M-DI2-FGSM (momentum and input diversity, made to transfer).
CRAFTED = (("APGD", "apgd", {}), ("M-DI2-FGSM", "di_fgsm", {"decay": 1.0}))


def _cost(suite: Suite, name: str | None, sizes) -> float:
    if len(suite.models) < 2:
        return 0.0  # it will skip
    images, steps = suite.images(sizes), sizes["steps"]  # without early stop, per source
    k = len(CRAFTED)
    crafted = sum(k * c.attack(images, steps, early_stop=False) for c in suite.costs.values())
    scored = sum(c.forwards(2 * k * len(suite.models) * images, 2 * k * len(suite.models))
                 for c in suite.costs.values())  # fmt: skip
    return crafted + scored + 2 * OVERHEAD


@check(
    "transfer", "Transfer between models", """
    Adversarial examples crafted on one model fool others (Szegedy et al., Table 2), next to
    Gaussian noise of the same size; each model crafts with APGD and with M-DI2-FGSM (momentum
    and input diversity, Dong et al. and Xie et al., made to transfer; L-inf and L2).
    Examples transferred from another model must not beat a model's own white-box attack: if
    they do, the white-box attack is failing on it (the checklist's 'black box weaker than
    white box'). Each pair is compared on the same images (McNemar, and the binomial tail
    against a 1 % tolerance): fail when transfer is significantly stronger, inconclusive when
    the sample cannot tell.""",
    per_model=False, knobs={"images": Knob(30, 300), "steps": Knob(10, 100, keep=0.5)},
    cost=_cost, priority=4, weight=1.5,
)  # fmt: skip
def transfer(suite: Suite, sizes) -> Outcome:
    if len(suite.models) < 2:
        raise Skip("needs at least two models (give several --model)")
    x, y = suite.first(sizes)
    tables = {
        label: evaluation.transfer_matrix(
            suite.models, x, y, attack=attack, eps=suite.threat.eps, norm=suite.threat.norm,
            steps=sizes["steps"], bounds=suite.bounds, seed=suite.seed, **options,
        )
        for label, attack, options in CRAFTED
        if suite.threat.norm in ("linf", "l2") or attack == "apgd"  # MI/DI: L-inf and L2
    }  # fmt: skip
    table = tables["APGD"]
    verdict, beaten, verdicts = _grade(_transferred(tables))
    worst = max(beaten) / len(x)
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
    }[verdict] + f" ({len(x)} images)"
    figures = {**table.to_dict(), "largest_gain_over_white_box": worst, "images": len(x),
               "verdicts": verdicts,
               "transfer_error": {k: t.error.tolist() for k, t in tables.items()}}  # fmt: skip
    return Outcome(verdict, summary, figures, [_table(suite, tables, len(x))],
                   [_draw(suite, table)])  # fmt: skip


def _transferred(tables: dict) -> torch.Tensor:
    """bool (S, T, N): the white-box APGD outcome on the diagonal, and off it, fooled by the
    examples of any crafting attack."""
    fooled = tables["APGD"].fooled.clone()
    diagonal = torch.eye(fooled.shape[0], dtype=torch.bool)[..., None]
    for t in tables.values():
        fooled |= t.fooled & ~diagonal
    return fooled


def _grade(fooled) -> tuple[str, list[int], list[str]]:
    """(worst verdict, images only the transfer broke, verdict) per (source, target) pair: a
    target's white-box error (the diagonal) must not be beaten by another model's examples."""
    beaten, verdicts = [], []
    for s in range(len(fooled)):
        for t in range(len(fooled)):
            if s != t:
                b = int((fooled[s, t] & ~fooled[t, t]).sum())
                c = int((fooled[t, t] & ~fooled[s, t]).sum())
                beaten.append(b)
                verdicts.append(paired_verdict(b, c, fooled.shape[-1], TOLERANCE)[0])
    return max(verdicts, key=GRADES.index), beaten, verdicts


def _table(suite: Suite, tables: dict, n: int) -> dict:
    first = tables["APGD"]
    rows = [["clean", "0", *(percent(v) for v in first.clean_error.tolist())]]
    for i, src in enumerate(first.sources):
        for label, table in tables.items():
            d = f"{table.distortion[i]:.4f}"
            fooled = (percent_with_interval(int(f.sum()), n) for f in table.fooled[i])
            rows.append([f"{label} on {src}", d, *fooled])
            rows.append(["Gaussian noise, same size", d,
                         *(percent(v) for v in table.noise_error[i].tolist())])  # fmt: skip
    return {"title": f"error (%), {suite.threat.norm} eps {suite.threat.eps:g}",
            "columns": ["examples", "distortion", *first.targets], "rows": rows}  # fmt: skip


def _draw(suite: Suite, table) -> dict:
    error, names = table.error, table.targets
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
    caption = "error of each model on APGD examples crafted on each model (diagonal: white-box)"
    return suite.save(fig, "transfer", caption=caption)
