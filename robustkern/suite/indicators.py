"""The gradient-masking indicators as a suite check (``robustkern.evaluation.indicators``)."""

from __future__ import annotations

import math

from torch import nn

from robustkern import evaluation
from robustkern.attacks.steps import box_diameter
from robustkern.data import eps_text
from robustkern.evaluation.masking import HARD_LABEL
from robustkern.stats import GRADES
from robustkern.suite.budget import Knob
from robustkern.suite.core import OVERHEAD, Outcome, Suite, check
from robustkern.suite.white_box import targets


def _eps_grid_length(suite: Suite) -> int:
    """How many radii the indicators' eps curve tries: eps/4 doubling up to half the box."""
    half = box_diameter(suite.x, suite.threat.norm, suite.bounds) / 2
    return 2 + max(0, math.ceil(math.log2(max(half / (suite.threat.eps / 2), 1.0))))


def _cost(suite: Suite, name: str, sizes) -> float:
    c, images, steps = suite.costs[name], suite.images(sizes), sizes["steps"]
    # white box, APGD once more, 4x steps with 2 restarts, the unbounded attack and the curve
    iterations = steps * (1 + targets(suite) + 1 + 8 + 1 + _eps_grid_length(suite))
    transfer = c.attack(images, steps, early_stop=False) if len(suite.models) > 1 else 0.0
    # Square's queries, the hard-label attack's (L-inf and L2), the random points
    hard_label = sizes["queries"] if suite.threat.norm in HARD_LABEL else 0
    calls = sizes["queries"] + hard_label + sizes["samples"]
    queries = c.forwards(images * c.clean_accuracy * calls, calls)
    return c.attack(images, iterations) + transfer + queries + OVERHEAD


@check(
    "masking", "Gradient-masking indicators", """
    A robust accuracy is only believable if the attack behind it worked. These indicators
    (Carlini et al. 2019, AutoAttack's checks, Pintor et al. 2022) look for the symptoms of
    gradient masking: black-box (score-based, and labels-only in L-inf and L2), transfer (from
    the next model given), single-step or random attacks beating the white-box one, an
    unbounded attack short of 100 % error, robust accuracy that does not fall with eps, zero or
    random gradients. Attacks compared on the same images
    are judged by paired tests (McNemar, and the binomial tail against a 1 % tolerance):
    inconclusive when the sample cannot tell a failing attack from noise. The verdict is the
    worst indicator's.""",
    knobs={"images": Knob(20, 200), "steps": Knob(5, 100, keep=0.5),
           "queries": Knob(50, 1000, keep=0.5), "samples": Knob(4, 32)},
    cost=_cost, priority=2, weight=3.0,
)  # fmt: skip
def masking(suite: Suite, name: str, model: nn.Module, sizes) -> Outcome:
    x, y = suite.first(sizes)
    others = [m for k, m in suite.models.items() if k != name]
    found = evaluation.indicators(
        model, x, y, norm=suite.threat.norm, eps=suite.threat.eps, bounds=suite.bounds,
        steps=sizes["steps"], queries=sizes["queries"], samples=sizes["samples"],
        surrogate=others[0] if others else None, seed=suite.seed,
    )  # fmt: skip
    verdict = max((i.verdict for i in found), key=GRADES.index)
    bad = [i.name for i in found if i.verdict != "pass"]
    summary = f"{sum(i.verdict == 'pass' for i in found)} of {len(found)} indicators pass"
    summary += f"; not passing: {', '.join(bad)}" if bad else ""
    if not others:
        summary += " (the transfer indicator needs a second model)"
    table = {
        "title": f"on {len(x)} test images at {suite.threat.norm} eps "
        f"{eps_text(suite.threat.eps, suite.bounds, suite.threat.norm)}",
        "columns": ["indicator", "verdict", "value", "what was measured"],
        "rows": [[i.name, i.verdict, f"{i.value:.4g}", i.detail] for i in found],
    }
    figures = {i.name: {"verdict": i.verdict, "value": i.value} for i in found}
    return Outcome(verdict, summary, figures, [table])
