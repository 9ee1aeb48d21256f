"""HopSkipJumpAttack (Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient
decision-based attack", IEEE S&P 2020), L2 and L-inf, batched over samples.

Decision-based: the model is read only through its predicted label (``decisions.Oracle``), so
the attack works on any classifier, and a gradient-masking defence that hides or flattens the
logits does not slow it down.

Start: uniform noise in the box until one draw is adversarial (100 tries, as ART's
``init_size``), then a bisection on the blend ``(1 - a) x + a noise`` towards x (tolerance 1e-3).
Then each iteration t = 1, 2, ... for every sample, all samples in lockstep:

1. bisection back to the boundary between x and the current adversarial point (L2: on the
   blend; L-inf: on the radius of a box around x that clips the point), to a relative
   precision theta = d^-3/2 (L2) or d^-2 (L-inf), d the number of input values;
2. the boundary's normal estimated from the labels of ``100 sqrt(t)`` probes (at most 10^4) on
   a sphere of radius delta around the boundary point (delta = 0.1 of the box's width at t = 1,
   then ``dist_moved / d``), each +-1 as it is adversarial, averaged with a baseline;
3. a step along the estimate (L-inf: its sign) of size ``dist / sqrt(t)``, halved until the
   point is adversarial (the geometric step-size search).

Each sample spends at most ``queries`` model calls, its count kept by the oracle; a sample stops
when its budget cannot pay for another iteration. The paper's constants, batched, with these
differences: the returned point is the smallest boundary point found, not the last iterate (a
step may land slightly farther); the last iteration estimates with the probes the budget leaves
after reserving the bisection; the step-size search scores the clipped point it then takes (the
paper's scores the unclipped one); the L-inf bisection stops at ``theta * dist`` (the paper's
``min(theta * dist, theta)``, the same on [0, 1] inputs and free of the bounds' scale
elsewhere); a sample whose noise tries all fail starts from the nearest image of the batch that
the model already labels adversarially for it (the paper's ``target_image``), found from the
uncounted clean forward and verified with one counted query.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.decisions import CHUNK_VALUES, Oracle
from robustkern.attacks.results import finish
from robustkern.checks import check_choice, check_inputs
from robustkern.types import Bounds

_INIT_TRIES = 100  # uniform-noise draws before the batch's images are tried
_INIT_TOL = 1e-3  # blend bisection of the start (the paper's)
_PROBES, _MAX_PROBES = 100, 10_000  # probes at iteration t: min(100 sqrt(t), 10^4)
_HALVINGS = 30  # a step-size search gives up after this many (the sample then stays put)


def hop_skip_jump(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    queries: int = 5000,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """HopSkipJumpAttack (Chen et al. 2020): the smallest adversarial point it finds per
    sample from the model's predicted labels alone (argmax of its output, under
    ``torch.no_grad``; its mode untouched).

    Args:
        model: a classifier returning (N, classes) scores; only their argmax is read.
        x: the inputs (N, ...) within ``bounds``, e.g. images (N, C, H, W).
        y: int64 labels (N,); with ``targeted`` the target classes.
        norm: "l2" or "linf": the distance minimised.
        queries: model calls per sample (its clean forward not counted): the budget every
            sample stops at.
        targeted: reach the classes in ``y`` (the start is then noise, or an image of the batch,
            that the model labels as the target).
        bounds: (lo, hi) of valid inputs. generator: draws the start noise and the probes.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the distances in
            ``norm`` (0 for a sample already misclassified, inf where no adversarial point was
            found, and x_adv is x there), what ``robust_accuracy_curve`` reads; queries are the
            model calls each sample spent (0 for one already misclassified).

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    check_choice(norm, ("l2", "linf"), "norm")
    check_queries(queries)
    x_nat = x.detach()
    oracle = Oracle(model, y, targeted, x.shape[1:], labels)
    x_adv, fooled = x_nat.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if len(x):
        fooled, predicted = oracle.clean(x_nat)
        search = _HopSkipJump(oracle, x_nat.flatten(1), norm, queries, bounds, generator)
        best, found = search.run((~fooled).nonzero().squeeze(1), predicted)
        x_adv[found] = best[found].reshape(-1, *x.shape[1:]).to(x.dtype)
        fooled = fooled | found
    return finish(model, x_nat, x_adv, y, (return_success, return_norms, return_queries),
                  norm=norm, targeted=targeted, success=fooled, queries=oracle.used)  # fmt: skip


def check_queries(queries) -> None:
    """A query budget: an int >= 1."""
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ValueError(f"queries must be an int >= 1 (model calls per sample), got {queries!r}")


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per row of a flat (M, D) tensor: its L2 or L-inf norm, in float64."""
    delta = delta.double()
    return delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)


class _HopSkipJump:
    """The search on flat inputs (N, D): ``run(rows, predicted) -> (best (N, D), found (N,))``.
    State per sample: the current boundary point, the distance of the last point the
    bisection started from (``moved``, which sizes the probes), and the best point so far.
    Points are in the inputs' dtype; distances, radii and bisection parameters in float64, so a
    bisection to theta (1e-7 on CIFAR-10's L-inf) does not stall on float32 rounding."""

    def __init__(self, oracle: Oracle, x, norm, budget, bounds, generator):
        self.oracle, self.x, self.norm, self.budget = oracle, x, norm, budget
        self.lo, self.hi, self.generator = float(bounds[0]), float(bounds[1]), generator
        d = x.shape[1]
        self.dim = d
        self.theta = d**-1.5 if norm == "l2" else d**-2.0
        # every iteration keeps this many queries back for its step and its bisection
        self.reserve = math.ceil(math.log2(1 / self.theta)) + 2
        self.point, self.best = x.clone(), x.clone()
        self.moved = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        self.best_dist = torch.full_like(self.moved, math.inf)

    def run(self, rows: torch.Tensor, predicted: torch.Tensor):
        rows = self._start(rows, predicted)
        t = 1
        while True:
            rows, probes = self._probe_counts(rows, t)
            if not len(rows):
                return self.best, self.best_dist.isfinite()
            self._iterate(rows, probes, t)
            t += 1

    # --- the start ---------------------------------------------------------------------------

    def _start(self, rows, predicted):
        """An adversarial point per sample (noise, else a batch image), blended towards x and
        taken to the boundary; returns the rows that have one."""
        start = self.x.clone()
        found = torch.zeros(len(self.x), dtype=torch.bool, device=rows.device)
        pending = rows
        for _ in range(_INIT_TRIES):
            pending = self._within_budget(pending)
            if not len(pending):
                break
            noise = torch.rand(len(pending), self.dim, generator=self.generator,
                               dtype=self.x.dtype, device=self.x.device)  # fmt: skip
            noise = noise * (self.hi - self.lo) + self.lo
            adv = self.oracle(noise, pending)
            start[pending[adv]], found[pending[adv]] = noise[adv], True
            pending = pending[~adv]
        pending = self._within_budget(pending)
        if len(pending):
            self._from_batch(pending, predicted, start, found)
        rows = rows[found[rows]]
        if not len(rows):
            return rows
        noise = start[rows]
        self._keep(rows, noise)
        x = self.x[rows]

        def blend(i, a):
            return x[i] + a[:, None].to(x.dtype) * (noise[i] - x[i])

        ones = torch.ones(len(rows), dtype=torch.float64, device=x.device)
        a = self._bisect(rows, blend, ones, ones * _INIT_TOL)
        self._to_boundary(rows, blend(torch.arange(len(rows), device=x.device), a))
        return rows

    def _from_batch(self, pending, predicted, start, found):
        """For each of ``pending``: the nearest image of the batch (in the attack's norm) whose
        clean label is adversarial for it, checked with one counted query."""
        y = self.oracle.y[pending, None]
        usable = predicted[None] == y if self.oracle.targeted else predicted[None] != y
        p = 2.0 if self.norm == "l2" else math.inf
        dist = torch.cdist(self.x[pending].double(), self.x.double(), p=p)
        dist = dist.masked_fill(~usable, math.inf)
        nearest, k = dist.min(1)
        pending, k = pending[nearest.isfinite()], k[nearest.isfinite()]
        if len(pending):
            adv = self.oracle(self.x[k], pending)
            start[pending[adv]], found[pending[adv]] = self.x[k[adv]], True

    # --- one iteration -----------------------------------------------------------------------

    def _probe_counts(self, rows, t):
        """The rows that can afford iteration t, and each one's probe count: the paper's
        ``100 sqrt(t)`` (at most 10^4), fewer where the budget left after ``reserve`` is less."""
        planned = min(int(_PROBES * math.sqrt(t)), _MAX_PROBES)
        left = self.oracle.remaining(rows, self.budget) - self.reserve
        probes = left.clamp(max=planned)
        keep = probes >= 1
        return rows[keep], probes[keep]

    def _iterate(self, rows, probes, t):
        p, x = self.point[rows], self.x[rows]
        if t == 1:
            delta = torch.full_like(self.moved[rows], 0.1 * (self.hi - self.lo))
        else:
            delta = self.moved[rows] / self.dim  # sqrt(d) theta (L2), d theta (L-inf): 1/d
        grad = self._gradient(rows, p, probes, delta.to(p.dtype))
        update = (grad if self.norm == "l2" else grad.sign()).to(p.dtype)
        accepted, q = self._step(rows, p, update, distance(p - x, self.norm) / math.sqrt(t))
        if len(accepted):
            self._to_boundary(rows[accepted], q[accepted])

    def _gradient(self, rows, p, probes, delta):
        """The unit (L2) estimate of the boundary's normal at each p (M, D), pointing to the
        adversarial side: the mean of the probe directions u weighted by +-1 (adversarial or
        not) minus the mean label, the paper's baseline. Probe j of row i exists only for
        j < probes[i]; they are drawn and queried in slices of ``CHUNK_VALUES`` values, and
        summed in float64."""
        m, d = p.shape
        most = int(probes.max())
        sum_fu = torch.zeros(m, d, dtype=torch.float64, device=p.device)
        sum_u = torch.zeros_like(sum_fu)
        sum_f = torch.zeros(m, dtype=torch.float64, device=p.device)
        per_slice = max(1, CHUNK_VALUES // (m * d))
        for first in range(0, most, per_slice):
            b = min(per_slice, most - first)
            u = self._directions(m, b, d, p)
            probe = (p[:, None] + delta[:, None, None] * u).clamp(self.lo, self.hi)
            u = (probe - p[:, None]) / delta[:, None, None]  # what the box left of each probe
            exists = torch.arange(first, first + b, device=p.device)[None] < probes[:, None]
            f = torch.zeros(m, b, dtype=torch.float64, device=p.device)
            adv = self.oracle(probe[exists], rows[:, None].expand(m, b)[exists])
            f[exists] = adv.double() * 2 - 1
            u = u.double()
            sum_fu += (f[..., None] * u).sum(1)
            sum_u += (exists[..., None] * u).sum(1)
            sum_f += f.sum(1)
        k = probes.double()
        mean_f, mean_u = (sum_f / k)[:, None], sum_u / k[:, None]
        # all probes on one side: no contrast, so the mean direction (towards, or away from, it)
        contrast = sum_fu / k[:, None] - mean_f * mean_u
        grad = torch.where(mean_f == 1, mean_u, torch.where(mean_f == -1, -mean_u, contrast))
        return grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def _directions(self, m, b, d, like):
        """(M, B, D) directions of unit L2 norm: Gaussian (L2) or uniform in the cube (L-inf),
        normalised, as the paper draws them."""
        kw = {"generator": self.generator, "dtype": like.dtype, "device": like.device}
        u = torch.randn(m, b, d, **kw) if self.norm == "l2" else torch.rand(m, b, d, **kw) * 2 - 1
        return u / u.norm(dim=2, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny)

    def _step(self, rows, p, update, size):
        """Geometric step-size search: ``p + size * update`` (clipped) with size halved until
        adversarial. Returns (the local indices that found one, the points (M, D)). ``size``:
        (M,) float64."""
        q = p.clone()
        accepted = torch.zeros(len(rows), dtype=torch.bool, device=p.device)
        todo = torch.arange(len(rows), device=p.device)
        size = size.clone()
        for _ in range(_HALVINGS):
            todo = todo[self.oracle.remaining(rows[todo], self.budget) > 0]
            if not len(todo):
                break
            step = size[todo, None].to(p.dtype) * update[todo]
            candidate = (p[todo] + step).clamp(self.lo, self.hi)
            adv = self.oracle(candidate, rows[todo])
            q[todo[adv]], accepted[todo[adv]] = candidate[adv], True
            size[todo[~adv]] /= 2
            todo = todo[~adv]
        return accepted.nonzero().squeeze(1), q

    # --- the boundary ------------------------------------------------------------------------

    def _to_boundary(self, rows, q):
        """Bisection from each adversarial q (M, D) towards x down to precision theta; the
        boundary points become the current points (and the best where nearer)."""
        x = self.x[rows]
        moved = distance(q - x, self.norm)
        if self.norm == "l2":

            def point(i, a):
                return x[i] + a[:, None].to(x.dtype) * (q[i] - x[i])

            high = torch.ones_like(moved)
            tol = high * self.theta
        else:

            def point(i, a):  # q clipped to the L-inf ball of radius a around x
                r = a[:, None].to(x.dtype)
                return x[i] + torch.minimum(torch.maximum(q[i] - x[i], -r), r)

            high, tol = moved.clone(), moved * self.theta
        high = self._bisect(rows, point, high, tol)
        p = point(torch.arange(len(rows), device=q.device), high)
        self.point[rows], self.moved[rows] = p, moved
        self._keep(rows, p)

    def _bisect(self, rows, point, high, tol):
        """Lockstep bisection of a in [0, high] per row, ``point(i, a)`` adversarial at high
        (known) and not at 0 (x), until high - low <= tol or the row's budget is spent; returns
        high (an adversarial parameter)."""
        low = torch.zeros_like(high)
        todo = torch.arange(len(rows), device=high.device)
        while True:
            todo = todo[(high[todo] - low[todo] > tol[todo])]
            todo = todo[self.oracle.remaining(rows[todo], self.budget) > 0]
            if not len(todo):
                return high
            mid = (low[todo] + high[todo]) / 2
            adv = self.oracle(point(todo, mid), rows[todo])
            high[todo] = torch.where(adv, mid, high[todo])
            low[todo] = torch.where(adv, low[todo], mid)

    def _keep(self, rows, points):
        """Points (M, D), each adversarial for its row, replace the best where nearer to x."""
        dist = distance(points - self.x[rows], self.norm)
        nearer = dist < self.best_dist[rows]
        self.best[rows[nearer]], self.best_dist[rows[nearer]] = points[nearer], dist[nearer]

    def _within_budget(self, rows):
        return rows[self.oracle.remaining(rows, self.budget) > 0]
