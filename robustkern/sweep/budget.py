"""Sizing a sweep to a time budget (``[run] budget = "30m"``, ``sweep run --budget 30m``).

Before any attack runs, rank 0 measures what one example costs each model (a forward, and a
forward with the gradient of the loss to the input, on a small batch of the sweep's data: a
warm-up call, then the best of two), counts the passes each attack entry makes per example at
its pending eps values (the worst case: no example is misclassified or fooled early, nothing
stops early), and chooses n, the number of examples per cell: the largest, up to the data's size
after ``[data] limit``, for which the busiest rank's share of the pending cells fits in what is
left of the budget (ranks are assumed as fast as rank 0 alone: one GPU each).

The chosen n acts exactly as ``[data] limit = n`` would: it enters every cell's configuration
and hash, so the store says which examples a cell covers, and a sweep file with that limit finds
the cells recorded. When every example fits, the sweep runs as written. Timings vary, so a
rerun with the same budget on the same machine may choose another n, and its cells are then
other cells (those recorded stay in the store; the report of a budgeted sweep file shows them
all, each with its n). A budget too short for one example per cell is an error that says the
time needed.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch.distributed as dist

from robustkern import attacks
from robustkern._env import world
from robustkern.costs import MEASURE_BATCH, ModelCost, measure
from robustkern.evaluation import FUNCTIONS, PRESETS
from robustkern.evaluation.presets import stages
from robustkern.sweep.config import DISTANCE_ATTACKS, AttackSpec, Sweep, SweepError
from robustkern.timebudget import minutes

VERIFY_STEPS = 10  # min-norm's default PGD check (engine._min_norm_distances)
# The options of a cascade's stages that the sweep's attack entry overrides (as Cascade does).
_STAGE_OPTIONS = {
    "apgd": ("steps", "restarts", "eot"),
    "fab": ("steps", "restarts"),
    "square": ("queries", "restarts"),
}
# FAB's untargeted step takes a backward per class; the budget assumes this many classes.
FAB_CLASSES = 10


def with_limit(sweep: Sweep, n: int) -> Sweep:
    """``sweep`` as if its file said ``[data] limit = n``."""
    return replace(sweep, data=replace(sweep.data, limit=n))


def examples_for_budget(sweep: Sweep, x, y, nets, groups, finished, started, say) -> int:
    """n for ``sweep.budget`` (see the module's docstring), decided on rank 0 and sent to every
    rank so that all run the same cells; a budget too short stops every rank with rank 0's
    message. ``groups``: the grid at the data's full size, ``finished``: the store's hashes,
    ``started``: ``time.perf_counter()`` when the run began (the budget counts from there)."""
    rank, world_size = world()
    decision: list = [None]
    if rank == 0:
        try:
            decision[0] = _decide(sweep, x, y, nets, groups, finished, started, world_size, say)
        except Exception as e:  # with other ranks waiting at the broadcast, tell them
            if world_size == 1 and not isinstance(e, SweepError):
                raise
            decision[0] = str(e) if isinstance(e, SweepError) else f"{type(e).__name__}: {e}"
    if world_size > 1:
        dist.broadcast_object_list(decision, src=0)
    if isinstance(decision[0], str):
        raise SweepError(decision[0])
    return decision[0]


def _decide(sweep, x, y, nets, groups, finished, started, world_size, say) -> int:
    pending = [g for g in ([c for c in g if c.hash not in finished] for g in groups) if g]
    if not pending:
        return len(x)  # nothing to run: the sweep as written
    costs = {name: measure(net, x, y) for name, net in nets.items()}
    left = sweep.budget - (time.perf_counter() - started)
    busiest = _examples_on_busiest_rank
    if _seconds_per_example(pending, costs) * busiest(len(x), sweep.batch_size, world_size) <= left:
        planned, n = pending, len(x)
    else:  # fewer examples: other cells, none of them recorded at the full size counts
        planned = groups
        n = largest_fitting(_seconds_per_example(groups, costs), left, len(x), sweep.batch_size,
                            world_size)  # fmt: skip
    per_example = _seconds_per_example(planned, costs)
    for line in plan_lines(sweep.budget, costs, planned, min(len(x), MEASURE_BATCH)):
        say(line)
    spent = sweep.budget - left
    if n < 1:
        raise SweepError(
            f"the time budget of {_time(sweep.budget)} cannot fit one example per cell: that "
            f"needs about {_time(spent + per_example)} here ({_time(spent)} to load and "
            "measure); raise [run] budget or --budget"
        )
    expected = spent + per_example * busiest(n, sweep.batch_size, world_size)
    limit = " (all)" if n == len(x) else f" (as [data] limit = {n})"
    say(f"budget plan: n = {n} of {len(x)} examples per cell{limit}, about {_time(expected)} "
        f"of {_time(sweep.budget)} on {world_size} rank(s)")  # fmt: skip
    return n


def plan_lines(budget: float, costs: dict, groups: list, measured_on: int) -> list[str]:
    """What the plan rests on: each model's measured costs, each group's estimate."""
    lines = [f"budget {_time(budget)}: seconds per example, measured on {measured_on} examples "
             "(attacks at their worst: nothing stops early)"]  # fmt: skip
    for name, cost in costs.items():
        lines.append(f"  model {name}: forward {_ms(cost.forward)}, gradient {_ms(cost.gradient)}")
    for cells in groups:
        attack = cells[0].attack
        what = f"{cells[0].model.name} / {attack.label} {attack.norm}".rstrip()
        seconds = costs[cells[0].model.name].seconds(*passes(attack, len(cells)))
        lines.append(f"  {what} ({len(cells)} eps): {_ms(seconds)}")
    return lines


def passes(attack: AttackSpec, n_eps: int) -> tuple[float, float]:
    """(forwards, gradients) that one example costs under ``attack`` at ``n_eps`` eps values:
    the clean forward, then every step of every restart at every eps (a minimum-norm attack:
    one run for all of them; min-norm then adds the PGD check at each eps down the grid)."""
    params = attack.params
    if attack.name == "none":
        return 1.0, 0.0
    if attack.name == "min-norm":
        steps = params.get("steps", _default(attacks.min_norm, "steps"))
        return 1.0, float(steps + params.get("verify_steps", VERIFY_STEPS) * n_eps)
    forwards, gradients = _passes_per_eps(attack.name, params, attack.norm or "linf")
    if attack.name in DISTANCE_ATTACKS:  # one run answers every eps
        n_eps = 1
    return 1.0 + n_eps * forwards, n_eps * gradients


def _passes_per_eps(name: str, params: dict, norm: str) -> tuple[float, float]:
    """(forwards, gradients) per example of one call of attack ``name`` at one eps."""
    if name == "fgsm":
        return 0.0, 1.0
    if name in PRESETS:  # a cascade: its stages one after the other, all in the worst case
        forwards = gradients = 0.0
        for _, family, options in stages(name, norm):
            own = {k: v for k, v in params.items() if k in _STAGE_OPTIONS[family]}
            f, g = _passes_per_eps(family, {**options, **own}, norm)
            forwards, gradients = forwards + f, gradients + g
        return forwards, gradients
    fn = FUNCTIONS[name]

    def value(key: str) -> int:
        return params.get(key, _default(fn, key))

    if name in ("square", "rays", "hop_skip_jump", "sparse_rs"):  # one forward per query
        return float(value("queries") * value("restarts")), 0.0
    if name == "deepfool":  # a backward per candidate class a step
        return 0.0, float(value("steps") * value("candidates"))
    steps = value("steps") * value("restarts") * value("binary_steps")
    if name in ("apgd", "fab") and params.get("targeted"):
        steps *= value("n_targets")
    if name == "fab":  # a forward a step, and a backward per class untargeted
        return float(steps), float(steps * (1 if params.get("targeted") else FAB_CLASSES))
    if name in ("apgd", "pgd"):
        steps *= params.get("eot", 1)
    return 0.0, float(steps)


def largest_fitting(
    per_example: float, seconds: float, available: int, batch_size: int, world_size: int
) -> int:
    """The largest n <= ``available`` whose busiest rank's examples take at most ``seconds``
    (0 when not even one fits); bisection, as the busiest rank's share only grows with n."""
    lo, hi = 0, available
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _examples_on_busiest_rank(mid, batch_size, world_size) * per_example <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _examples_on_busiest_rank(n: int, batch_size: int, world_size: int) -> int:
    """Rank 0's examples when n are cut into batches and rank r takes batches r, r + world, ..."""
    batches = math.ceil(n / batch_size)
    mine = len(range(0, batches, world_size))
    short = batches * batch_size - n if (batches - 1) % world_size == 0 else 0
    return mine * batch_size - short if batches else 0


def _seconds_per_example(groups: list, costs: dict[str, ModelCost]) -> float:
    return sum(
        costs[cells[0].model.name].seconds(*passes(cells[0].attack, len(cells))) for cells in groups
    )


def _default(fn: Callable, key: str) -> int:
    """An attack function's default for ``key`` (1 for an option it does not have)."""
    parameter = inspect.signature(fn).parameters.get(key)
    return 1 if parameter is None else parameter.default


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms"


def _time(seconds: float) -> str:
    return minutes(seconds) if seconds >= 10 else f"{seconds:.2g} s"
