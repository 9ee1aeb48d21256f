"""Box-constrained L-BFGS minimum distortion (Szegedy et al., "Intriguing properties of neural
networks", section 4.1): minimise c |r|^2 + loss_f(x + r, l) subject to x + r in the box, with a
search over c that keeps, per sample, the smallest successful r.

The box constraint is handled exactly by L-BFGS-B (scipy's, the algorithm Szegedy et al. used),
not by a change of variables. |r| is squared so that the objective is smooth at r = 0, where
the solver starts (as Foolbox's implementation does). The batch is solved as one problem: the
objective is a sum of per-sample terms, each with its own c, so its minimiser is every
sample's own minimiser; only the solver's path is shared.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from robustkern.attacks.losses import is_adversarial
from robustkern.attacks.results import finish
from robustkern.checks import check_inputs, check_logits
from robustkern.types import Bounds


def lbfgs(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    targeted: bool = False,
    c_init: float = 1.0,
    search_steps: int = 10,
    max_iter: int = 100,
    bounds: Bounds = (0.0, 1.0),
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Szegedy et al.'s box-constrained L-BFGS: the smallest L2 perturbation found per sample,
    minimising c |r|^2 + loss(x + r) with scipy's L-BFGS-B and searching c per sample.

    Untargeted, the loss drives each sample towards its runner-up class at x (the nearest
    decision boundary to first order); success is any misclassification. ``c`` starts at
    ``c_init`` and moves by factors of 10 until it brackets success, then bisects
    geometrically. The result bounds the minimum distance from above (within 1.4x of the exact
    distance on a linear model in our tests).

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        targeted: reach the classes in ``y``.
        c_init: the first penalty weight per sample. search_steps: solves per sample.
        max_iter: L-BFGS-B iterations per solve. bounds: (lo, hi) of valid inputs.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are L2 distances
            (0 where x is already misclassified, inf where no c succeeded: x_adv is x there);
            queries count the solver's evaluations and the checks after each solve.

    Returns:
        x_adv, then the extras asked for.
    """
    from scipy.optimize import fmin_l_bfgs_b  # scipy comes with scikit-learn

    labels = check_inputs(x, y, bounds, model=model)
    if search_steps < 1 or max_iter < 1 or not c_init > 0:
        raise ValueError(
            f"search_steps and max_iter must be >= 1 and c_init > 0, got {search_steps}, "
            f"{max_iter}, {c_init}"
        )
    x_nat = x.detach()
    n = x.shape[0]
    with torch.no_grad():
        logits = model(x_nat)
    check_logits(logits, n, labels)
    if targeted:
        goal = y
        done = is_adversarial(logits, y, True)
    else:
        goal = logits.float().scatter(1, y[:, None], -math.inf).argmax(1)
        done = is_adversarial(logits, y, False)
    best = x_nat.clone()
    best_norm = torch.where(done, 0.0, math.inf).to(x.device)
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    todo = (~done).nonzero().squeeze(1)
    if todo.numel():
        x_adv, norms, passes = _search(
            model,
            x_nat[todo],
            y[todo],
            goal[todo],
            targeted,
            c_init,
            search_steps,
            max_iter,
            bounds,
            fmin_l_bfgs_b,
        )
        best[todo], best_norm[todo], queries[todo] = x_adv, norms, passes
    return finish(model, x_nat, best, y, (return_success, return_norms, return_queries),
                  norm="l2", targeted=targeted, success=best_norm.isfinite(), norms=best_norm,
                  queries=queries)  # fmt: skip


def _search(model, x, y, goal, targeted, c_init, search_steps, max_iter, bounds, solver):
    n = x.shape[0]
    c = torch.full((n,), c_init, dtype=torch.float64)
    c_lo, c_hi = (
        torch.zeros(n, dtype=torch.float64),
        torch.full((n,), math.inf, dtype=torch.float64),
    )
    best, best_norm = x.clone(), torch.full((n,), math.inf, device=x.device)
    passes = 0
    for _ in range(search_steps):
        x_adv, evaluations = _solve(model, x, goal, c, max_iter, bounds, solver)
        passes += evaluations + 1  # and the forward that checks the solution
        with torch.no_grad():
            fooled = is_adversarial(model(x_adv), goal if targeted else y, targeted)
        norms = (x_adv - x).flatten(1).float().norm(dim=1)
        better = fooled & (norms < best_norm)
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
        best_norm = torch.where(better, norms, best_norm)
        ok = fooled.cpu()
        c_lo, c_hi = torch.where(ok, c, c_lo), torch.where(ok, c_hi, c)
        bisect = (c_lo * c_hi).sqrt()
        c = torch.where(c_hi.isinf(), c * 10, torch.where(c_lo == 0, c / 10, bisect))
    return best, best_norm, passes


def _solve(model, x, goal, c, max_iter, bounds, solver):
    """(argmin over the box of sum_i c_i |r_i|^2 + CE(model(x_i + r_i), goal_i) from r = 0,
    the number of the objective's evaluations)."""
    shape, dtype, device = x.shape, x.dtype, x.device
    x64 = x.detach().double().cpu().numpy().ravel()
    c_dev = c.to(device=device, dtype=torch.float32)

    evaluations = 0

    def objective(r_flat):
        nonlocal evaluations
        evaluations += 1
        r = torch.from_numpy(r_flat).to(device=device, dtype=dtype).view(shape).requires_grad_()
        with torch.enable_grad():
            logits = model(x + r)
            dist = (r.flatten(1).float() ** 2).sum(1)
            value = (c_dev * dist).sum() + F.cross_entropy(logits.float(), goal, reduction="sum")
            (grad,) = torch.autograd.grad(value, r)
        return value.item(), grad.double().cpu().numpy().ravel()

    lo, hi = float(bounds[0]), float(bounds[1])
    box = np.stack([lo - x64, hi - x64], axis=1)
    r, _, _ = solver(objective, np.zeros_like(x64), bounds=box, maxiter=max_iter)
    x_adv = (x + torch.from_numpy(r).to(device=device, dtype=dtype).view(shape)).clamp(lo, hi)
    return x_adv, evaluations
