"""The fast adaptive boundary attack (FAB, Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020), L-inf, L2 and L1, untargeted and
targeted (FAB-T, as AutoAttack runs it), in minimum-norm or bounded (eps) mode.

Each step linearises the decision boundary at the current point x1: untargeted, between the true
class y and the class j whose linearised boundary f_j - f_y = 0 is nearest (|f_j - f_y| over the
dual norm of its gradient); targeted, between y and the target. x1 and the original x are both
projected onto that hyperplane within the box (the exact minimal-norm projections of
``hyperplane_step``), and the next point is the biased convex combination
(1 - a) (x1 + eta d1) + a (x + eta d2), a = ||d1|| / (||d1|| + ||d2||) capped at alpha_max: the
pull towards x keeps the perturbation small, eta overshoots the linearised boundary a little.
An adversarial point is kept when it is the smallest so far, and x1 then steps back towards x by
the factor beta, so the search tracks the boundary from outside and inside. Restarts after the
first start from a random point at distance min(smallest found, eps_init) / 2 around x.

One addition to the paper: FAB's points overshoot the boundary by about (eta - 1)(1 - beta) of
their distance (0.5 % with the defaults, even on a linear model), so a final bisection on the
segment from x to each point found moves it back to the boundary (12 forwards).

Cost per step: the untargeted gradient needs every row of the logits' Jacobian (one backward
per class, batched with vmap where the model allows it), so a 1000-class model costs about
1000 backward passes a step: prefer FAB-T (one backward a step) there, as AutoAttack does.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.gradients import GradientUnavailable, jacobian_rows, loss_and_grad
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import (
    check_choice,
    check_eps,
    check_inputs,
    check_logits,
    warn_if_probabilities,
)
from robustkern.types import Bounds, PerSample

FAB_NORMS = ("linf", "l2", "l1")
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}
# The random restarts' radius where nothing smaller is known, in units of the bounds' width:
# the reference implementation's defaults for images in [0, 1].
_START_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}
# Jacobian rows computed at once: at most this many values (N x rows x input size) in memory.
_JACOBIAN_CHUNK = 2**24
# Forwards of the final bisection towards x (the segment to 2^-12 of its length).
_BISECTION = 12


def fab(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    targeted: bool = False,
    n_targets: int = 9,
    steps: int = 100,
    restarts: int = 1,
    eps: PerSample | None = None,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    eot: int = 1,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """FAB (Croce & Hein 2020): the smallest adversarial perturbation it finds per sample, by
    projections onto the linearised decision boundary within the box.

    Args:
        model: a classifier returning logits (N, classes >= 2); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``; float32 or
            float64 (the arithmetic runs in x's dtype, in float32 for half types).
        y: int64 true labels (N,), also when targeted (the targets come from the logits).
        norm: "linf", "l2" or "l1": the norm minimised.
        targeted: FAB-T: one run per target class, the 2nd, 3rd, ... highest clean logits, each
            linearising f_target - f_y (one gradient a step); a point counts as adversarial when
            misclassified (as in AutoAttack), and the smallest over all targets is kept.
        n_targets: target classes when targeted (capped at classes - 1; AutoAttack uses 9).
        steps: iterations per run; restarts: runs per sample (and target), the first from x,
            the others from random points.
        eps: None for minimum-norm mode (every correctly classified sample goes through every
            run). A number or (N,) per-sample radii in the inputs' units for bounded mode: a
            sample is a success only with a point within eps (x_adv is x elsewhere), and a
            sample stops as soon as it has one (one host sync a step); eps is then also the
            random restarts' radius.
        alpha_max: the largest weight of the step towards x's projection; eta: the
            overshoot factor (>= 1); beta: the backward step's factor towards x after an
            adversarial point (in (0, 1]). The paper's 0.1, 1.05 and 0.9 by default.
        bounds: (lo, hi) of valid inputs (may be infinite). generator: the random starts'.
        eot: passes averaged per step (expectation over transformation) for a model whose
            forward is random: the boundary is linearised from the mean logits and the mean
            gradients; each pass counts as a query.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the distances
            found in ``norm`` (0 for a sample already misclassified, inf where none, and x_adv
            is x there); queries count 1 + eot model passes a step (the gradient passes,
            however many backward passes their Jacobian takes, and the forward that scores
            the new point) on the samples attacked, and the final bisection's 12 forwards where it
            ran.

    Returns:
        x_adv (x's dtype and shape), then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    n = x.shape[0]
    check_choice(norm, FAB_NORMS, "norm")
    _check_settings(steps, restarts, n_targets, alpha_max, eta, beta, eot)
    bounded = eps is not None
    if bounded:
        eps = check_eps(eps, n)
    work = _work_dtype(x)
    x_nat = x.detach()
    with torch.no_grad():
        logits = model(x_nat)
    check_logits(logits, n, labels)
    classes = logits.shape[1]
    if classes < 2:
        raise ValueError(f"FAB needs a model with at least 2 classes, got {classes}")

    limit = torch.as_tensor(math.inf if eps is None else eps, dtype=work, device=x.device)
    limit = limit.expand(n).clone()  # inf in minimum-norm mode
    lo, hi = float(bounds[0]), float(bounds[1])
    start_radius = _start_radius(limit, norm, lo, hi)
    correct = logits.argmax(1) == y
    best = x_nat.clone()
    best_norm = torch.where(correct, math.inf, 0.0).to(work)
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    targets = [None]
    if targeted:  # the k-th highest clean logits, k = 2, 3, ... (y where misclassified: unused)
        order = logits.argsort(dim=1, descending=True)
        targets = [order[:, k] for k in range(1, min(n_targets, classes - 1) + 1)]
    run = _Run(model, norm, steps, alpha_max, eta, beta, (lo, hi), labels, work, bounded, eot)
    for target in targets:
        for restart in range(restarts):
            todo = correct & (best_norm > limit) if bounded else correct
            idx = todo.nonzero().squeeze(1)  # one sync per run, none per step
            if idx.numel() == 0:
                continue
            x0 = x_nat[idx]
            start = x0
            if restart > 0:
                radius = torch.minimum(best_norm[idx], start_radius[idx]) / 2
                start = _random_start(x0, radius, norm, lo, hi, generator)
            found, size, used = run(x0, y[idx], None if target is None else target[idx],
                                    start, limit[idx])  # fmt: skip
            smaller = size < best_norm[idx]
            best[idx] = torch.where(broadcast(smaller, found), found, best[idx])
            best_norm[idx] = torch.where(smaller, size, best_norm[idx])
            queries[idx] += used
    # the points to tighten: every one found, in bounded mode those still beyond eps
    loose = (best_norm > 0) & best_norm.isfinite()
    if bounded:
        loose &= best_norm > limit
    _tighten(model, x_nat, y, best, best_norm, queries, loose, norm, work)
    success = best_norm <= limit if bounded else best_norm.isfinite()
    best = torch.where(broadcast(success, best), best, x_nat)
    norms = torch.where(success, best_norm, math.inf)
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm=norm, success=success, norms=norms, queries=queries)  # fmt: skip


def _check_settings(steps, restarts, n_targets, alpha_max, eta, beta, eot) -> None:
    if min(steps, restarts, n_targets, eot) < 1:
        raise ValueError(
            f"steps, restarts, n_targets and eot must be >= 1, got {steps}, {restarts}, "
            f"{n_targets}, {eot}"
        )
    if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta <= 1):
        raise ValueError(
            f"FAB needs 0 <= alpha_max <= 1, eta >= 1 and 0 < beta <= 1, got alpha_max="
            f"{alpha_max}, eta={eta}, beta={beta}"
        )


def _start_radius(limit: torch.Tensor, norm: str, lo: float, hi: float) -> torch.Tensor:
    """Per sample, the random restarts' largest radius (twice the distance they start at
    where nothing smaller was found): a finite eps (bounded mode, as AutoAttack), else the
    reference's default for images in [0, 1] scaled to the bounds' width."""
    width = hi - lo if math.isfinite(hi - lo) and hi > lo else 1.0
    default = torch.full_like(limit, _START_RADIUS[norm] * width)
    return torch.where(limit.isfinite(), limit, default)


class _Run:
    """One FAB run on a batch: ``__call__(x0, y, target, start, limit) -> (x_adv, size,
    passes)``: the smallest adversarial point found per sample (x0 where none), its distance
    (inf where none) and the model passes spent. In bounded mode a sample leaves the batch once
    it has a point within ``limit``."""

    def __init__(self, model, norm, steps, alpha_max, eta, beta, bounds, labels, work, bounded,
                 eot=1):  # fmt: skip
        self.model, self.norm, self.steps, self.eot = model, norm, steps, eot
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta
        self.bounds, self.labels, self.work, self.bounded = bounds, labels, work, bounded

    def __call__(self, x0, y, target, start, limit):
        n, device = x0.shape[0], x0.device
        self.best, self.size = x0.clone(), torch.full((n,), math.inf, dtype=self.work,
                                                      device=device)  # fmt: skip
        self.passes = torch.zeros(n, dtype=torch.int64, device=device)
        s = {"row": torch.arange(n, device=device), "x0": x0, "x1": start, "y": y, "limit": limit}
        if target is not None:
            s["target"] = target
        for _ in range(self.steps):
            self._step(s)
            if self.bounded and not self._drop_done(s):
                break
        return self.best, self.size, self.passes

    def _step(self, s):
        x0, x1, rows = s["x0"], s["x1"], s["row"]
        gap, w = _boundary(self.model, x1, s["y"], s.get("target"), self.norm, self.labels,
                           self.eot)  # fmt: skip
        t, o = x1.flatten(1).to(self.work), x0.flatten(1).to(self.work)
        w = w.to(self.work)
        b = gap.to(self.work) - (w * t).sum(1)  # the hyperplane <w, z> + b = 0
        d = hyperplane_step(torch.cat((t, o)), torch.cat((w, w)), torch.cat((b, b)), self.norm,
                            self.bounds)  # fmt: skip
        d1, d2 = d.chunk(2)
        a1, a2 = _size(d1, self.norm).clamp_min(1e-8), _size(d2, self.norm).clamp_min(1e-8)
        # the farther x1 is from the boundary relative to x, the stronger the pull towards x
        alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max)[:, None]
        z = (t + self.eta * d1) * (1 - alpha) + (o + self.eta * d2) * alpha
        x_new = z.clamp(*self.bounds).reshape(x1.shape).to(x1.dtype)
        with torch.no_grad():
            logits = self.model(x_new)
        self.passes[rows] += 1 + self.eot
        # NaN logits would win argmax: such a point is not counted as adversarial
        adv = (logits.argmax(1) != s["y"]) & logits.isfinite().all(1)
        size = _size((x_new - x0).flatten(1).to(self.work), self.norm)
        smaller = adv & (size < self.size[rows])
        self.best[rows] = torch.where(broadcast(smaller, x_new), x_new, self.best[rows])
        self.size[rows] = torch.where(smaller, size, self.size[rows])
        # back towards x after an adversarial point: approach the boundary from both sides
        s["x1"] = torch.where(broadcast(adv, x_new), x0 + self.beta * (x_new - x0), x_new)

    def _drop_done(self, s) -> bool:
        """Removes the samples with a point within their limit; False when none is left."""
        keep = self.size[s["row"]] > s["limit"]
        if bool(keep.all()):
            return True
        for key, value in s.items():
            s[key] = value[keep]
        return bool(keep.any())


def _tighten(model, x_nat, y, best, best_norm, queries, which, norm, work) -> None:
    """The last touch, in place for the samples ``which`` (N,) marks: the adversarial point
    nearest x that bisection finds on the segment from x to the point found (``_BISECTION``
    forwards). FAB's points overshoot the boundary by about (eta - 1)(1 - beta) of their
    distance (0.5 % by default, even on a linear model); this removes most of it, and in bounded
    mode it can bring a point found just beyond eps inside. Every point kept was scored
    adversarial."""
    idx = which.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    x0, far, labels = x_nat[idx], best[idx], y[idx]
    near = far.clone()
    inside = torch.zeros(len(idx), dtype=work, device=x0.device)  # not adversarial here
    outside = torch.ones_like(inside)  # adversarial here
    for _ in range(_BISECTION):
        mid = (inside + outside) / 2
        z = x0 + broadcast(mid, far).to(far.dtype) * (far - x0)
        with torch.no_grad():
            logits = model(z)
        adv = (logits.argmax(1) != labels) & logits.isfinite().all(1)
        near = torch.where(broadcast(adv, z), z, near)
        outside, inside = torch.where(adv, mid, outside), torch.where(adv, inside, mid)
    best[idx] = near
    best_norm[idx] = _size((near - x0).flatten(1).to(work), norm)
    queries[idx] += _BISECTION


def _boundary(model, x1, y, target, norm, labels, eot=1):
    """(gap (N,), w (N, D)): the linearised boundary g(z) = gap + <w, z - x1> at x1 between y
    and the target (f_target - f_y), or untargeted the class j whose boundary f_j - f_y = 0 is
    nearest in ``norm`` (|gap_j| / ||w_j||_dual). Classes whose gradient difference is zero or
    not finite are skipped; where no class is left, gap and w are 0 (the step stands still).
    ``eot`` > 1: from the logits and gradients averaged over that many passes."""
    if target is not None:
        grad, _, gap = loss_and_grad(
            model, x1, lambda z: z.gather(1, target[:, None]).squeeze(1)
            - z.gather(1, y[:, None]).squeeze(1), labels, eot,
        )  # fmt: skip
        _, gap, w = _usable(gap[None], grad.flatten(1)[None], norm, None)
        return gap, w
    if eot > 1:  # every class's row, averaged over the passes, then the nearest boundary
        gap, rows = _mean_jacobian(model, x1, y, labels, eot)
        _, gap, w = _usable(gap.T, rows, norm, torch.arange(gap.shape[1], device=x1.device)[
            :, None] == y)  # fmt: skip
        return gap, w
    with torch.enable_grad():
        xg = x1.detach().requires_grad_(True)
        logits = model(xg)
        check_logits(logits, x1.shape[0], labels)
        warn_if_probabilities(model, logits)
        diff = logits - logits.gather(1, y[:, None])  # f_j - f_y, zero at y
        if not diff.requires_grad:
            raise GradientUnavailable(
                "the model's output has no gradient with respect to its input; FAB cannot run: "
                "use a black-box attack (square)"
            )
        gap = diff.detach()
        n, classes = diff.shape
        chunk = max(1, min(classes, _JACOBIAN_CHUNK // max(1, x1[0].numel() * n)))
        best = None
        for first in range(0, classes, chunk):
            js = torch.arange(first, min(first + chunk, classes), device=x1.device)
            rows = jacobian_rows(diff, xg, js).flatten(2)  # (len(js), N, D)
            best = _nearer(best, _usable(gap[:, js].T, rows, norm, js[:, None] == y))
    return best[1], best[2]


def _mean_jacobian(model, x1, y, labels, eot):
    """(f_j - f_y (N, classes), their gradients (classes, N, D)), each averaged over ``eot``
    forward and backward passes."""
    gap_sum = rows_sum = None
    for _ in range(eot):
        with torch.enable_grad():
            xg = x1.detach().requires_grad_(True)
            logits = model(xg)
            check_logits(logits, x1.shape[0], labels)
            diff = logits - logits.gather(1, y[:, None])
            js = torch.arange(diff.shape[1], device=x1.device)
            rows = jacobian_rows(diff, xg, js).flatten(2)
        gap_sum = diff.detach() if gap_sum is None else gap_sum + diff.detach()
        rows_sum = rows if rows_sum is None else rows_sum + rows
    return gap_sum / eot, rows_sum / eot


def _usable(gap, rows, norm, excluded):
    """(distance (N,), gap (N,), w (N, D)) of the nearest usable boundary among the rows
    (gap (R, N), gradients (R, N, D)); ``excluded`` (R, N) marks rows to skip (the class y)."""
    dual = rows.norm(p=_DUAL[norm], dim=2)
    dist = gap.abs() / dual
    ok = (dual > 0) & dual.isfinite() & gap.isfinite()
    if excluded is not None:
        ok &= ~excluded
    dist = torch.where(ok, dist, math.inf)
    k = dist.argmin(0)
    col = torch.arange(dist.shape[1], device=dist.device)
    near, found = dist[k, col], ok[k, col]
    return (near, torch.where(found, gap[k, col], 0), torch.where(found[:, None], rows[k, col], 0))


def _nearer(a, b):
    """Per sample, whichever of two (distance, gap, w) is nearer."""
    if a is None:
        return b
    take = b[0] < a[0]
    return (torch.where(take, b[0], a[0]), torch.where(take, b[1], a[1]),
            torch.where(take[:, None], b[2], a[2]))  # fmt: skip


def hyperplane_step(
    t: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    norm: str,
    bounds: Bounds = (0.0, 1.0),
    *,
    halfspace: bool = False,
) -> torch.Tensor:
    """The smallest displacement d (N, D) in ``norm`` ("linf", "l2", "l1") that takes each point
    onto its hyperplane within the box: <w_i, t_i + d_i> + b_i = 0 (with ``halfspace``:
    >= 0, so d = 0 where t already satisfies it) and lo <= t + d <= hi.

    Args:
        t: the points (N, D), within ``bounds``. w: the hyperplanes' normals (N, D), finite.
        b: their offsets (N,), finite. bounds: (lo, hi), possibly infinite.

    Where the hyperplane misses the box, d moves every coordinate that helps as far as the box
    allows (the box point nearest the hyperplane, with no needless moves); a zero w gives d = 0.
    """
    scale = w.abs().amax(1, keepdim=True)  # the hyperplane is unchanged by scaling w and b
    scale = torch.where(scale > 0, scale, 1)
    w, b = w / scale, b / scale.squeeze(1)
    need = -((w * t).sum(1) + b)  # what <w, d> must be
    if halfspace:
        need = need.clamp_min(0)
    # each coordinate moves only in the direction that brings <w, d> towards need (+1, -1; 0
    # where w_i = 0): a move the other way would only have to be made up elsewhere
    move = torch.where(need >= 0, 1.0, -1.0).to(t.dtype)[:, None] * w.sign()
    need, wa = need.abs(), w.abs()
    lo, hi = bounds
    room = torch.where(move > 0, hi - t, t - lo).clamp_min(0)
    # how much each coordinate can add to <w, d>; never more than need (also makes an infinite
    # box finite: no coordinate of the solution moves farther than need / |w_i|)
    cap = torch.where(wa > 0, torch.minimum(wa * room, need[:, None]), 0)
    if norm == "l1":  # the cheapest coordinates (largest |w_i|) first, each as far as it goes
        order = wa.argsort(dim=1, descending=True)
        c = cap.gather(1, order)
        gain = ((need[:, None] - (c.cumsum(1) - c)).clamp_min(0)).minimum(c)
        gain = torch.zeros_like(gain).scatter_(1, order, gain)
    else:  # L-inf: every coordinate moves by the same level; L2: in proportion to |w_i|
        slope = wa if norm == "linf" else wa * wa
        level = _water_level(slope, cap, need)
        gain = torch.where(slope > 0, (level[:, None] * slope).minimum(cap), 0)
    step = torch.where(wa > 0, gain / wa, 0)
    return move * step


def _water_level(slope: torch.Tensor, cap: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """The smallest level m >= 0 per row with sum_i min(m slope_i, cap_i) = need (all (N, D)
    but need (N,), every value >= 0): the sum is piecewise linear in m with a kink where each
    coordinate saturates (m = cap_i / slope_i), so the level lies between the last kink below
    need and the next. Beyond the total cap it saturates every coordinate."""
    kink = torch.where(slope > 0, cap / slope, 0)
    kink, order = kink.sort(dim=1)
    slope, cap = slope.gather(1, order), cap.gather(1, order)
    full = cap.cumsum(1) - cap  # the coordinates saturated below each kink
    rising = slope.flip(1).cumsum(1).flip(1)  # the slope just below each kink
    reached = full + kink * rising  # the sum at each kink (rising > 0 wherever kink > 0)
    k = (reached < need[:, None]).sum(1, keepdim=True).clamp_max(slope.shape[1] - 1)
    left, rate = need[:, None] - full.gather(1, k), rising.gather(1, k)
    return torch.where(rate > 0, left / rate, 0).squeeze(1)


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of d (N, D)."""
    if norm == "linf":
        return d.abs().amax(1)
    return d.norm(dim=1) if norm == "l2" else d.abs().sum(1)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _random_start(x0, radius, norm, lo, hi, generator):
    """x0 plus a random direction scaled to ``radius`` (N,) in ``norm`` (uniform for L-inf,
    Gaussian otherwise, as the reference), clipped to the bounds."""
    t = torch.empty_like(x0)
    if norm == "linf":
        t.uniform_(-1.0, 1.0, generator=generator)
    else:
        t.normal_(generator=generator)
    scale = _size(t.flatten(1), norm).clamp_min(1e-12)
    return (x0 + t * broadcast(radius / scale, t).to(t.dtype)).clamp(lo, hi)
