"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool
deep neural networks", CVPR 2016), L2 and L-inf.

Each step linearises f_k - f_y, the logit gap between a candidate class k and the true class y,
at the current point, and steps onto the nearest of these linearised boundaries: the one with
the smallest |f_k - f_y| / ||w_k||_q (w_k the gap's gradient, q the dual norm: 2 for L2, 1 for
L-inf), by |f_k - f_y| / ||w_k||_2 * w_k / ||w_k||_2 (L2) or |f_k - f_y| / ||w_k||_1 * sign(w_k)
(L-inf). The steps accumulate into r; the point scored is x + (1 + overshoot) r, clipped to the
bounds, and a sample stops as soon as it is misclassified there. The candidates are the most
likely classes at x, fixed for the run (the paper's and Foolbox's ``candidates``).

On a linear model the first step lands on the nearest boundary, so DeepFool returns
(1 + overshoot) times the exact minimal distance (plus the 1e-4 that the reference adds to
every step to cross the boundary rather than stop on it): a smaller overshoot is tighter but
may need more steps on curved boundaries.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.gradients import jacobian_rows
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_choice, check_inputs, check_logits, warn_if_probabilities
from robustkern.types import Bounds

DEEPFOOL_NORMS = ("l2", "linf")
# Added to every step's length (in input units), as the reference: a step exactly onto the
# linearised boundary leaves a tie, not a misclassification.
_CROSS = 1e-4


def deepfool(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "l2",
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """DeepFool (Moosavi-Dezfooli et al. 2016): steps onto the nearest linearised decision
    boundary until the sample is misclassified; a small adversarial perturbation in few steps
    (untargeted only).

    Args:
        model: a classifier returning logits (N, classes >= 2); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``; the arithmetic
            runs in x's dtype (float32 for half types).
        y: int64 true labels (N,).
        norm: "l2" or "linf": the norm the steps minimise.
        steps: the most linearisation steps per sample (a sample stops once misclassified).
        overshoot: the accumulated perturbation is scaled by 1 + overshoot (>= 0; the paper's
            0.02) so the point crosses the boundary rather than landing on it.
        candidates: the classes considered, y included: y and the ``candidates - 1`` others
            with the highest logits at x (>= 2; capped at the model's classes). Each step
            needs one gradient per candidate (one batched backward pass where the model allows).
        bounds: (lo, hi) of valid inputs (may be infinite); every point scored is clipped to
            them.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the distances
            in ``norm`` (0 for a sample already misclassified, inf where none was found within
            ``steps``, and x_adv is x there); queries count the model passes per sample (each
            step's forward with its gradients, and the forward that scores the last point),
            0 for samples already misclassified.

    Returns:
        x_adv (x's dtype and shape), then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    check_choice(norm, DEEPFOOL_NORMS, "norm")
    if steps < 1 or candidates < 2:
        raise ValueError(f"steps must be >= 1 and candidates >= 2, got {steps}, {candidates}")
    if not overshoot >= 0:  # NaN too
        raise ValueError(f"overshoot must be >= 0, got {overshoot}")
    x_nat = x.detach()
    n = x.shape[0]
    with torch.no_grad():
        logits = model(x_nat)
    check_logits(logits, n, labels)
    if logits.shape[1] < 2:
        raise ValueError(f"DeepFool needs a model with at least 2 classes, got {logits.shape[1]}")
    # y first, then the most likely other classes at x
    others = logits.float().scatter(1, y[:, None], -math.inf)
    others = others.topk(min(candidates, logits.shape[1]) - 1, dim=1).indices
    classes = torch.cat((y[:, None], others), dim=1)

    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    correct = logits.argmax(1) == y
    best = x_nat.clone()
    best_norm = torch.where(correct, math.inf, 0.0).to(work)
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    idx = correct.nonzero().squeeze(1)  # one sync: only the samples still classified right
    if idx.numel():
        found, size, used = _run(model, x_nat[idx], classes[idx], norm, steps, overshoot,
                                 (float(bounds[0]), float(bounds[1])), labels, work)  # fmt: skip
        best[idx], best_norm[idx], queries[idx] = found, size, used
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm=norm, success=best_norm.isfinite(), norms=best_norm,
                  queries=queries)  # fmt: skip


def _run(model, x0, classes, norm, steps, overshoot, bounds, labels, work):
    """DeepFool on samples classified as ``classes[:, 0]``: (x_adv, distance, passes) per sample,
    x0 and inf where no misclassified point was reached. The batch shrinks to the samples not yet
    misclassified: one host sync a step, and DeepFool's few steps cost only what they use."""
    m = x0.shape[0]
    point = x0.clone()
    total = torch.zeros_like(x0, dtype=work)  # r: the accumulated steps, before the overshoot
    found, size = x0.clone(), torch.full((m,), math.inf, dtype=work, device=x0.device)
    passes = torch.zeros(m, dtype=torch.int64, device=x0.device)
    active = torch.arange(m, device=x0.device)
    for k in range(steps + 1):
        last = k == steps  # the last point is only scored
        logits, gap, w = _linearise(model, point[active], classes[active], labels, not last)
        passes[active] += 1
        fooled = logits.argmax(1) != classes[active, 0]
        done = active[fooled]
        found[done] = point[done]
        size[done] = _size((point[done] - x0[done]).flatten(1).to(work), norm)
        active = active[~fooled]
        if last or active.numel() == 0:
            break
        step = _nearest_boundary_step(gap[~fooled], w[~fooled], norm, work)
        r = total[active] + step.view(-1, *total.shape[1:])
        total[active] = r
        point[active] = (x0[active] + (1 + overshoot) * r).clamp(*bounds).to(point.dtype)
    return found, size, passes


def _nearest_boundary_step(gap, w, norm, work):
    """The step (N, D) onto the nearest linearised boundary f_k - f_y = 0 among the candidates:
    gap (N, K) holds f_k - f_y, w (N, K, D) its gradients. A candidate whose gradient is zero is
    unreachable; a sample with none reachable does not move."""
    gap, w = gap.to(work), w.to(work)
    dual = w.norm(p=1 if norm == "linf" else 2, dim=2)
    dist = torch.where(dual > 0, gap.abs() / dual.clamp_min(1e-30), math.inf)
    k = dist.argmin(1)
    rows = torch.arange(len(k), device=k.device)
    d, wk, wk_dual = dist[rows, k], w[rows, k], dual[rows, k]
    reachable = d.isfinite()
    length = torch.where(reachable, d + _CROSS, 0.0)
    direction = wk.sign() if norm == "linf" else wk / wk_dual.clamp_min(1e-30)[:, None]
    return broadcast(length, direction) * direction


def _linearise(model, x, classes, labels, with_grad: bool):
    """(logits (N, classes), f_k - f_y (N, K - 1), their gradients (N, K - 1, D)) at x for the
    candidate ``classes`` (N, K), y first; without ``with_grad`` only the logits (one forward)."""
    if not with_grad:
        with torch.no_grad():
            logits = model(x)
        check_logits(logits, x.shape[0], labels)
        return logits, None, None
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        check_logits(logits, x.shape[0], labels)
        warn_if_probabilities(model, logits)
        z = logits.gather(1, classes)
        gap = z[:, 1:] - z[:, :1]
        rows = jacobian_rows(gap, xg, torch.arange(gap.shape[1], device=gap.device))
    return logits.detach(), gap.detach(), rows.flatten(2).transpose(0, 1)


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row norm of d (N, D)."""
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
