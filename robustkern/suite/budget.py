"""The suite's time budget: measure what one image costs the model (a forward, a forward with
the input's gradient, a training step), estimate each check's time from the passes it makes,
and choose every check's sample size and iteration counts so that the whole run fits.

Each check declares its sizes as ``Knob``s, from the least that still means something to the
full size the suite runs without a budget, and a cost function that counts its passes. The
planner gives every check its least size, drops the least important checks when even that does
not fit (saying why), shares what is left by importance, and settles each check's sizes by
bisection on one scale t in [0, 1] (t = 1: full size). After every check the rest are planned
again on the time actually left, so a check that ran long shrinks the ones after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from robustkern import attacks, costs
from robustkern.timebudget import minutes

SAFETY = 0.9  # plan this share of the time left: estimates are rough, overruns are not allowed
QUICK_SECONDS = 60.0  # --quick: a smoke run's budget
BROKEN_AT = 0.2  # an early-stopping attack drops a broken image after this share of its steps
PROBE_SHARE = 0.03  # of the budget, at most, for the short attack that guesses robustness


@dataclass(frozen=True)
class Knob:
    """One size of a check: ``least`` (the smallest that still means something) to ``most``
    (the full size). ``keep`` < 1 shrinks this knob later than the others (attack steps)."""

    least: int
    most: int
    keep: float = 1.0

    def at(self, t: float) -> int:
        """Geometric interpolation: the least at t = 0, the most at t = 1."""
        if self.most <= self.least:
            return self.most
        return round(self.least * (self.most / self.least) ** (t**self.keep))


@dataclass
class Costs:
    """One model's measured costs on the data's shape, in seconds; what the checks' cost
    functions convert their passes into. Per image: ``forward`` (no gradient), ``gradient``
    (forward and the input's gradient), ``train`` (a training step of a fresh model),
    ``corrupt`` (computing one corruption). Fixed: ``call`` per forward call, ``step`` per
    attack iteration besides its images (Python, the fused step, bookkeeping: what dominates
    small models). ``robust``: the share of correctly classified images that survive the main
    attack: guessed by a short attack (``probe_robust``), then taken from the white-box check."""

    forward: float
    gradient: float
    call: float = 0.0
    step: float = 0.0
    train: float = 0.0
    corrupt: float = 0.0
    clean_accuracy: float = 1.0
    robust: float = 1.0

    def attack(self, images: int, iterations: float, early_stop: bool = True) -> float:
        """An attack of ``iterations`` gradient steps on the correctly classified share of
        ``images``. With early stopping a broken image leaves after about a fifth of the steps
        (a rough average, corrected by replanning after every check), and when no image is
        expected to survive, so does the whole attack."""
        attacked = images * self.clean_accuracy
        if not early_stop:
            return iterations * (self.step + attacked * self.gradient)
        alive = self.robust + (1 - self.robust) * BROKEN_AT
        if attacked * self.robust < 1:
            iterations *= BROKEN_AT
        return iterations * (self.step + attacked * alive * self.gradient)

    def forwards(self, images: float, calls: float) -> float:
        """``images`` images scored in ``calls`` forward calls."""
        return calls * self.call + images * self.forward


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat, bounds) -> Costs:
    """One model's costs on x's images (``robustkern.costs.measure``), the fixed cost of an
    attack iteration (APGD on two images), and its clean accuracy on the first 64 images."""
    base = costs.measure(model, x, y)
    with torch.no_grad():
        clean = (model(x[:64]).argmax(1) == y[:64]).float().mean().item()
    n = min(2, len(x))
    start = time.perf_counter()
    try:
        attacks.apgd(model, x[:n], y[:n], eps=threat.eps, norm=threat.norm, steps=4,
                     bounds=bounds)  # fmt: skip
        step = (time.perf_counter() - start) / 5  # 4 steps and the first evaluation
    except ValueError:  # no input gradient: the checks will say so; count two calls a step
        step = 2 * base.call
    return Costs(base.forward, base.gradient, call=base.call, step=step, clean_accuracy=clean)


def measure_training_step(factory: Callable[[], torch.nn.Module], x, y, batch: int = 50) -> float:
    """Seconds per image of one Adam step on a fresh model in train mode."""
    model = factory().to(x.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xb, yb = x[:batch], y[:batch]

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()

    return costs.timed(step, x.device) / len(xb)


def measure_corruptions(x: torch.Tensor, table: str | None = None) -> float:
    """Seconds per image and corruption to compute the corruptions (severity 3) on 8 images."""
    from robustkern import corruptions

    xb = x[:8]
    g = torch.Generator(x.device).manual_seed(0)
    start = time.perf_counter()
    for name in corruptions.CORRUPTIONS:
        corruptions.corrupt(xb, name, 3, generator=g, table=table or "auto")
    return (time.perf_counter() - start) / len(xb) / len(corruptions.CORRUPTIONS)


@dataclass
class Task:
    """One check on one model (``model`` None for checks across models) of a suite run."""

    check: object  # suite.core.Check
    model: str | None
    suite: object  # suite.core.Suite: what the cost functions read

    def sizes(self, t: float) -> dict[str, int]:
        return {k: knob.at(t) for k, knob in self.check.knobs.items()}

    def cost(self, sizes: dict[str, int]) -> float:
        """Estimated seconds at these sizes."""
        return self.check.cost(self.suite, self.model, sizes)


@dataclass
class Plan:
    """What a task will run: its sizes, the estimated seconds, or why it is skipped."""

    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None


def allocate(tasks: list[Task], seconds: float | None) -> dict[int, Plan]:
    """Plans for ``tasks`` (by position) within ``seconds`` (None: every task at full size)."""
    if seconds is None:
        return {i: Plan(t.sizes(1.0), t.cost(t.sizes(1.0))) for i, t in enumerate(tasks)}
    least = [t.cost(t.sizes(0.0)) for t in tasks]
    most = [t.cost(t.sizes(1.0)) for t in tasks]
    plans: dict[int, Plan] = {}
    kept = _fitting(tasks, least, seconds)
    for i in sorted(set(range(len(tasks))) - set(kept)):
        left = max(0.0, seconds - sum(least[k] for k in kept))
        plans[i] = Plan(skipped=(
            f"the time budget cannot fit it: it needs about {minutes(least[i])} at its "
            f"smallest size, and {minutes(left)} are left after the more important checks"
        ))  # fmt: skip
    shares = _water_fill(kept, least, most, [tasks[i].check.weight for i in range(len(tasks))],
                         seconds)  # fmt: skip
    for i in kept:
        t = _scale_for(tasks[i], shares[i])
        plans[i] = Plan(tasks[i].sizes(t), tasks[i].cost(tasks[i].sizes(t)))
    return plans


def _fitting(tasks: list[Task], least: list[float], seconds: float) -> list[int]:
    """The tasks kept at their least sizes: the most important first while they fit, then any
    cheaper one that still fits in what is left."""
    kept, spent = [], 0.0
    for i in sorted(range(len(tasks)), key=lambda i: tasks[i].check.priority):
        if spent + least[i] <= seconds:
            kept.append(i)
            spent += least[i]
    return kept


def _water_fill(kept, least, most, weight, seconds) -> dict[int, float]:
    """Every kept task gets its least cost, then the surplus by weight, capped at its full cost
    (what a capped task cannot use goes to the others)."""
    share = {i: least[i] for i in kept}
    open_ = [i for i in kept if most[i] > least[i]]
    surplus = seconds - sum(share.values())
    while open_ and surplus > 1e-9:
        total = sum(weight[i] for i in open_)
        capped = []
        for i in open_:
            share[i] += surplus * weight[i] / total
            if share[i] >= most[i]:
                capped.append(i)
        surplus = sum(share[i] - most[i] for i in capped)
        for i in capped:
            share[i] = most[i]
        open_ = [i for i in open_ if i not in capped]
        if not capped:
            break
    return share


def _scale_for(task: Task, seconds: float) -> float:
    """The largest t whose estimated cost fits ``seconds`` (bisection; cost grows with t)."""
    if task.cost(task.sizes(1.0)) <= seconds:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if task.cost(task.sizes(mid)) <= seconds else (lo, mid)
    return lo


def measure_models(suite, measure_training: bool, seconds: float | None) -> dict[str, Costs]:
    """Every model's ``Costs`` on the suite's images, with the share of images a short attack
    leaves robust (``probe_robust``, within PROBE_SHARE of ``seconds``), the corruptions' own
    cost, and the factory's training step when the randomisation test will run."""
    first = next(iter(suite.models.values()))
    measure(first, suite.x, suite.y, suite.threat, suite.bounds)  # warm-up: first calls are slow
    measured = {name: measure(m, suite.x, suite.y, suite.threat, suite.bounds)
                for name, m in suite.models.items()}  # fmt: skip
    for name, m in suite.models.items():
        measured[name].robust = probe_robust(m, suite, measured[name], seconds)
    corrupt = measure_corruptions(suite.x)
    train = 0.0
    if measure_training and suite.factory is not None and suite.x_train is not None:
        device = suite.device
        train = measure_training_step(suite.factory, suite.x_train[:50].to(device),
                                      suite.y_train[:50].to(device))  # fmt: skip
    for c in measured.values():
        c.corrupt, c.train = corrupt, train
    return measured


def probe_robust(model, suite, cost: Costs, seconds: float | None) -> float:
    """The share of correctly classified images that 10 steps of APGD-CE at the main threat
    leave robust, on up to 32 images (fewer when that would take more than PROBE_SHARE of the
    budget): the planner's guess of how much of each attack runs to the end, instead of the
    worst case. A weak attack: it overestimates the share, which errs on the safe side."""
    spare = PROBE_SHARE * (seconds if seconds is not None else 100.0)
    images = int(min(32, len(suite.x), (spare / 10 - cost.step) / max(cost.gradient, 1e-9)))
    if images < 4:
        return 1.0
    x, y = suite.x[:images], suite.y[:images]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    if not correct.any():
        return 1.0
    try:
        _, fooled = attacks.apgd(model, x[correct], y[correct], eps=suite.threat.eps,
                                 norm=suite.threat.norm, steps=10, bounds=suite.bounds,
                                 early_stop=True, return_success=True)  # fmt: skip
    except ValueError:  # no input gradient: the checks say so
        return 1.0
    return 1 - fooled.float().mean().item()


def plan_table(tasks: list[Task], plans: dict[int, Plan], seconds: float | None, measured) -> str:
    """The plan as a person reads it: per check and model, the sizes and the expected time."""
    head = "full sizes (no budget)" if seconds is None else f"a budget of {minutes(seconds)}"
    lines = [f"plan for {head}; measured per image:"]
    lines += [f"  {k}: forward {1e3 * c.forward:.3g} ms, with input gradient "
              f"{1e3 * c.gradient:.3g} ms (and {1e3 * c.call:.2g} ms per call, "
              f"{1e3 * c.step:.2g} ms per attack step)" for k, c in measured.items()]  # fmt: skip
    total = 0.0
    for i, task in enumerate(tasks):
        plan = plans[i]
        what = f"  {task.check.name:<20} {task.model or 'all':<12} "
        if plan.skipped:
            lines.append(what + f"skipped: {plan.skipped}")
            continue
        total += plan.seconds
        sizes = ", ".join(f"{k} {v}" for k, v in plan.sizes.items()) or "-"
        lines.append(what + f"{sizes:<52} about {minutes(plan.seconds)}")
    lines.append(f"  expected in all: about {minutes(total)} (estimates; replanned after each "
                 "check on the time left)")  # fmt: skip
    return "\n".join(lines)
