"""The Carlini-Wagner L2 attack (Carlini & Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE S&P 2017): a minimum-norm L2 attack by penalised optimisation.

The box constraint goes into a change of variables, x' = mid + half * tanh(w) (mid and half the
bounds' centre and half-width), so Adam can minimise over an unconstrained w

    ||x' - x||_2^2 + c * max(f(x') + confidence, 0),    f = z_y - max_{j != y} z_j

(targeted: f = max_{j != t} z_j - z_t), from x itself (w = atanh of x, scaled by 1 - 1e-6 so
pixels on a bound stay finite) at every binary step. Each sample has its own weight c, searched
as in the reference: a success (an iterate misclassified with the required confidence) lowers c
to the midpoint of the bracket found so far, a failure raises it to the midpoint, or tenfold
while it has never succeeded. The smallest adversarial point over all binary steps is kept; a
binary step ends early when the total objective fell by less than 0.01 % over a tenth of its
steps (one host sync each tenth).

The defaults are the paper's except the 1000 steps per binary step (the reference's 10,000 is
slow): 9 binary steps from c = 1e-3 reach c = 1e5 by tenfold growth, enough for models whose
logits differ by hundreds, and every attacked sample gets an answer (inf where no c worked).
In tanh space a value near a bound moves slowly (x' changes by half * (1 - tanh(w)^2) per unit
of w), so lr = 0.01 needs the full 1000 steps for perturbations the size of a digit's; with a
tenth of the steps raise lr to 0.05-0.1.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.gradients import loss_and_grad
from robustkern.attacks.losses import is_adversarial
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_inputs, check_logits
from robustkern.types import Bounds

_BETAS = (0.9, 0.999)  # Adam's, as the reference
_ADAM_EPS = 1e-8
_SHRINK = 1 - 1e-6  # atanh(+-1) is infinite: a pixel on a bound starts just inside it
# The early abort compares the objective this many times per binary step (the reference's 10).
_ABORT_CHECKS = 10


def cw(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 1000,
    confidence: float = 0.0,
    binary_steps: int = 9,
    lr: float = 0.01,
    initial_const: float = 1e-3,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Carlini-Wagner L2 (2017): the smallest L2 adversarial perturbation found per sample by
    Adam on ||delta||^2 + c * max(margin + confidence, 0) in tanh space, with a binary search
    on c per sample.

    Args:
        model: a classifier returning logits (N, classes >= 2); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``; the arithmetic
            runs in x's dtype (float32 for half types).
        y: int64 labels (N,); with ``targeted`` the target classes.
        steps: Adam steps per binary step (fewer where the objective stops decreasing).
        confidence: the logit margin (>= 0, in logit units) a point needs to count: the true
            class's logit below the largest other by at least this much (targeted: the target's
            above every other by this much). 0: any misclassification.
        binary_steps: optimisations per sample, each with its own c.
        lr: Adam's learning rate on w (tanh space: near the middle of the box a step moves a
            value by up to about lr times half the bounds' width; smaller is more precise,
            larger needs fewer steps).
        initial_const: the first c (> 0), the weight of the margin term against the squared
            distance.
        targeted: reach the classes in ``y``.
        bounds: (lo, hi) of valid inputs, finite with lo < hi (the change of variables maps
            onto them).
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the L2
            distances found (0 for a sample that already meets the goal, inf where no c
            worked, and x_adv is x there), what ``robust_accuracy_curve`` reads; queries count
            the forward and backward passes per sample (0 for samples not attacked).

    Returns:
        x_adv, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    lo, hi = float(bounds[0]), float(bounds[1])
    _check_settings(steps, confidence, binary_steps, lr, initial_const, lo, hi)
    x_nat = x.detach()
    n = x.shape[0]
    with torch.no_grad():
        logits = model(x_nat)
    check_logits(logits, n, labels)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    done = _fooled(logits, y, targeted, confidence)  # x itself already meets the goal
    best = x_nat.clone()
    best_norm = torch.where(done, 0.0, math.inf).to(work)
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    idx = (~done).nonzero().squeeze(1)  # one sync: attack only the others
    if idx.numel():
        search = _Search(model, steps, confidence, binary_steps, lr, targeted, (lo, hi), labels)
        x0, goal = x_nat[idx], y[idx]
        found, ok, used = search(x0, goal, initial_const)
        size = (found - x0).flatten(1).to(work).norm(dim=1)
        best[idx], best_norm[idx] = found, torch.where(ok, size, math.inf)
        queries[idx] = used
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm="l2", targeted=targeted, success=best_norm.isfinite(), norms=best_norm,
                  queries=queries)  # fmt: skip


def _check_settings(steps, confidence, binary_steps, lr, initial_const, lo, hi) -> None:
    if steps < 1 or binary_steps < 1:
        raise ValueError(f"steps and binary_steps must be >= 1, got {steps}, {binary_steps}")
    if not confidence >= 0:  # NaN too
        raise ValueError(f"confidence must be >= 0 (a logit margin), got {confidence}")
    if not (lr > 0 and initial_const > 0):
        raise ValueError(f"lr and initial_const must be > 0, got {lr}, {initial_const}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"cw needs finite bounds=(lo, hi) with lo < hi (its tanh change of variables maps "
            f"onto the box), got {(lo, hi)}"
        )


def _gap(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """f per sample: z_y - max_{j != y} z_j, or targeted max_{j != y} z_j - z_y (y the
    target); the point meets the goal where f < 0. In float32, or float64 logits' dtype."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], -math.inf).amax(1)
    return other - z_y if targeted else z_y - other


def _fooled(logits, y, targeted, confidence) -> torch.Tensor:
    """The model's decision meets the goal, by a margin of at least ``confidence``."""
    return is_adversarial(logits, y, targeted) & (_gap(logits, y, targeted) <= -confidence)


class _Search:
    """The binary search over c on a batch: ``__call__(x0, y, c0) -> (x_adv, found, passes)``:
    per sample the smallest adversarial point (x0 where no binary step found one), whether one
    was found, and the passes spent (the same for every sample)."""

    def __init__(self, model, steps, confidence, binary_steps, lr, targeted, bounds, labels):
        self.model, self.steps, self.confidence = model, steps, confidence
        self.binary_steps, self.lr, self.targeted = binary_steps, lr, targeted
        self.labels = labels
        lo, hi = bounds
        self.mid, self.half = (lo + hi) / 2, (hi - lo) / 2

    def __call__(self, x0, y, c0):
        work = torch.float64 if x0.dtype == torch.float64 else torch.float32
        m, device = x0.shape[0], x0.device
        self.x0 = x0.to(work)
        self.w0 = torch.atanh(((self.x0 - self.mid) / self.half).clamp(-1, 1) * _SHRINK)
        self.best, self.best_sq = x0.clone(), torch.full((m,), math.inf, dtype=work,
                                                         device=device)  # fmt: skip
        c = torch.full((m,), float(c0), dtype=work, device=device)
        c_lo, c_hi = torch.zeros_like(c), torch.full_like(c, math.inf)
        passes = 0
        for _ in range(self.binary_steps):
            found, used = self._optimise(y, c)
            passes += used
            # success: c was enough, look lower; failure: higher (tenfold until one succeeded)
            c_hi = torch.where(found, torch.minimum(c_hi, c), c_hi)
            c_lo = torch.where(found, c_lo, torch.maximum(c_lo, c))
            c = torch.where(c_hi.isfinite(), (c_lo + c_hi) / 2, c * 10)
        return self.best, self.best_sq.isfinite(), passes

    def _optimise(self, y, c):
        """One binary step: Adam from x for the weights c (m,). Returns (whether each sample
        reached the goal at some iterate, the passes spent); the best points update in place."""
        w = self.w0.clone()
        m1, m2 = torch.zeros_like(w), torch.zeros_like(w)
        found = torch.zeros(len(c), dtype=torch.bool, device=c.device)
        check_every, prev = self.steps // _ABORT_CHECKS, math.inf

        def penalty(logits):
            return c * (_gap(logits, y, self.targeted) + self.confidence).clamp_min(0)

        for t in range(1, self.steps + 1):
            tw = torch.tanh(w)
            x_adv = self.mid + self.half * tw
            grad, logits, pen = loss_and_grad(self.model, x_adv.to(self.best.dtype), penalty,
                                              self.labels)  # fmt: skip
            delta = x_adv - self.x0
            sq = delta.flatten(1).pow(2).sum(1)
            fooled = _fooled(logits, y, self.targeted, self.confidence)
            self._keep(x_adv, sq, fooled)
            found |= fooled
            if check_every and (t - 1) % check_every == 0:  # the reference's early abort
                total = float((sq + pen).sum())
                if total > prev * 0.9999:
                    return found, t
                prev = total
            # d/dw of ||x' - x||^2 + penalty through x' = mid + half * tanh(w)
            g = (grad.to(w.dtype) + 2 * delta) * (self.half * (1 - tw * tw))
            _adam(w, g, m1, m2, t, self.lr)
        return found, self.steps

    def _keep(self, x_adv, sq, fooled) -> None:
        better = fooled & (sq < self.best_sq)
        self.best_sq = torch.where(better, sq, self.best_sq)
        self.best = torch.where(broadcast(better, self.best), x_adv.to(self.best.dtype), self.best)


def _adam(w, g, m1, m2, t, lr) -> None:
    """One Adam step on w in place (moments m1, m2 in place; t counts from 1)."""
    b1, b2 = _BETAS
    m1.mul_(b1).add_(g, alpha=1 - b1)
    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
    size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    w.addcdiv_(m1, m2.sqrt().add_(_ADAM_EPS), value=-size)
