"""RayS (Chen & Gu, "RayS: a ray searching method for hard-label adversarial attack", KDD
2020), L-inf, untargeted, batched over samples.

Decision-based: the model is read only through its predicted label (``decisions.Oracle``).
RayS turns the continuous search for the nearest adversarial point into a discrete one over
ray directions: the sign vectors s in {-1, +1}^d. Along the ray ``clip(x + r s)`` the boundary
lies at some radius r(s) (the L-inf distance of that point before the box clips it), and the
attack keeps the direction with the smallest r(s) found. It flips blocks of the best direction's
signs hierarchically, one block per step: the whole vector, then its halves, quarters, ... down
to single coordinates, the blocks contiguous in the flattened input, then round again at the
finest level. A flipped direction costs one query when it is no better (its ray is not yet
adversarial at the best radius so far); otherwise a bisection on [0, best radius] finds its
radius to 0.1 % (``_TOL``).

Each sample spends at most ``queries`` model calls, all samples in lockstep on the same block
schedule. With ``eps`` a sample stops once it is within eps (the paper's bounded mode);
without it the search runs to the budget (minimum-norm mode).

Differences from the paper's code: its every image starts from the all-ones direction; here the
start signs are drawn from ``generator`` (a second run with another seed is a restart from
another ray). Its first check of a ray tries radii 1..10 times the sign vector, which on
[0, 1] inputs all land on the same clipped box corner; here the corner, ``r = hi - lo``, is
checked once. Its bisection stops at an absolute 1e-3 on the unit-L2 ray (1e-3 (hi - lo) /
sqrt(d) in L-inf), ours at 1e-3 of the radius: about as many steps on CIFAR-10 at its usual
radii, free of the inputs' scale, and a flip that shortens the ray by more than 0.1 % is always
recognised (a bisection cannot tell an improvement smaller than its tolerance from none, and an
absolute one rejects those, many of them on inputs with a wide range). Budgets are per sample
and never exceeded (the batched code overruns them inside its bisection).
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.decisions import Oracle
from robustkern.attacks.hop_skip_jump import check_queries
from robustkern.attacks.results import finish
from robustkern.checks import check_eps, check_inputs
from robustkern.types import Bounds, PerSample

_TOL = 1e-3  # bisection tolerance, relative to the radius


def rays(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample | None = None,
    queries: int = 10000,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """RayS (Chen & Gu 2020): the nearest adversarial point in L-inf over sign-vector rays,
    from the model's predicted labels alone (argmax of its output, under ``torch.no_grad``; its
    mode untouched). Untargeted.

    Args:
        model: a classifier returning (N, classes) scores; only their argmax is read.
        x: the inputs (N, ...) within ``bounds``, e.g. images (N, C, H, W).
        y: int64 labels (N,).
        eps: None (minimum-norm mode: search to the budget and return the nearest point found),
            or the L-inf radius in the inputs' units, a number or (N,) per-sample radii
            (bounded mode: a sample stops once within eps, and counts as fooled only there).
        queries: model calls per sample (its clean forward not counted).
        bounds: (lo, hi) of valid inputs. generator: draws the start directions' signs.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are L-inf distances
            (0 for a sample already misclassified, inf where nothing was found, or with eps
            nothing within eps, and x_adv is x there), what ``robust_accuracy_curve`` reads;
            queries are the model calls each sample spent.

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    check_queries(queries)
    n = x.shape[0]
    if eps is not None:
        eps = check_eps(eps, n)
        eps = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(n)
    x_nat = x.detach()
    oracle = Oracle(model, y, False, x.shape[1:], labels)
    x_adv, fooled = x_nat.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    if n:
        fooled, _ = oracle.clean(x_nat)
        search = _RayS(oracle, x_nat.flatten(1), queries, bounds, eps, generator)
        best, dist = search.run((~fooled).nonzero().squeeze(1))
        found = dist.isfinite() if eps is None else dist <= eps
        x_adv[found] = best[found].reshape(-1, *x.shape[1:]).to(x.dtype)
        fooled = fooled | found
    return finish(model, x_nat, x_adv, y, (return_success, return_norms, return_queries),
                  norm="linf", success=fooled, queries=oracle.used)  # fmt: skip


class _RayS:
    """The search on flat inputs (N, D): ``run(rows) -> (best (N, D), L-inf distance (N,))``,
    inf where no adversarial ray was found. State per sample: the best direction ``signs``,
    its boundary radius ``radius`` (inf before any) and the point there."""

    def __init__(self, oracle: Oracle, x, budget, bounds, eps, generator):
        self.oracle, self.x, self.budget, self.eps = oracle, x, budget, eps
        self.lo, self.hi = float(bounds[0]), float(bounds[1])
        n, d = x.shape
        self.dim = d
        bits = torch.randint(0, 2, (n, d), generator=generator, device=x.device)
        self.signs = (2 * bits - 1).to(x.dtype)
        self.radius = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.best = x.clone()
        self.dist = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)

    def run(self, rows: torch.Tensor):
        level, block = 0, 0
        while True:
            rows = rows[self.oracle.remaining(rows, self.budget) > 0]
            if self.eps is not None:
                rows = rows[self.dist[rows] > self.eps[rows]]
            if not len(rows):
                return self.best, self.dist
            size = math.ceil(self.dim / 2**level)
            start, end = block * size, min(self.dim, (block + 1) * size)
            attempt = self.signs[rows].clone()
            attempt[:, start:end] *= -1
            self._search(rows, attempt)
            block += 1
            if block == 2**level or end == self.dim:
                level, block = level + 1, 0

    def _ray(self, rows, signs, r):
        """The points clip(x + r s) (M, D) for radii r (M,) (float64, as all radii here)."""
        return (self.x[rows] + r[:, None].to(signs.dtype) * signs).clamp(self.lo, self.hi)

    def _search(self, rows, signs):
        """One direction per row: one query at the best radius so far (the box corner before
        any); where adversarial, bisection down to ``_TOL`` of the radius; the direction
        replaces the best where its radius is smaller."""
        high = self.radius[rows].clamp(max=self.hi - self.lo)  # inf: the corner
        adv = self.oracle(self._ray(rows, signs, high), rows)
        todo = adv.nonzero().squeeze(1)
        low = torch.zeros_like(high)
        while True:
            todo = todo[high[todo] - low[todo] > _TOL * high[todo]]
            todo = todo[self.oracle.remaining(rows[todo], self.budget) > 0]
            if not len(todo):
                break
            mid = (low[todo] + high[todo]) / 2
            hit = self.oracle(self._ray(rows[todo], signs[todo], mid), rows[todo])
            high[todo] = torch.where(hit, mid, high[todo])
            low[todo] = torch.where(hit, low[todo], mid)
        better = adv & (high < self.radius[rows])
        rows, signs, high = rows[better], signs[better], high[better]
        point = self._ray(rows, signs, high)
        self.radius[rows], self.signs[rows], self.best[rows] = high, signs, point
        self.dist[rows] = (point - self.x[rows]).abs().amax(1).double()
