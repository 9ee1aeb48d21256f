"""Pure-PyTorch twins of every op: the specification, the test oracle and the benchmark baseline.

Each function computes in the op's compute type (float32 for float16/bfloat16/float32 inputs,
float64 for float64) and returns a new tensor in the input's dtype; the ops in robustkern.ops
compute the same function in place.

Conventions of the projected-step family (``linf_step_``, ``l2_step_``, ``linf_project_``,
``l2_project_``):

* ``alpha`` and ``eps`` are a number or a 1-D tensor with one value per sample.
* Non-finite gradient entries (NaN, +-inf) carry no usable direction and count as 0, so a
  NaN gradient never spreads into ``x_adv``; the rest of the sample steps normally.
* L2: a zero gradient moves nothing; a gradient whose step ``alpha / ||g||`` overflows the
  compute type is treated as zero too. Norms are accumulated in float64.
* The projection onto the eps-ball comes first, then the clip to ``bounds``.
"""

from __future__ import annotations

import torch

Bounds = tuple[float, float]


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_sample(v: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A scalar, or a per-sample tensor shaped to broadcast over x's trailing dims."""
    if isinstance(v, torch.Tensor):
        return v.to(device=x.device, dtype=_acc(x)).view(-1, *([1] * (x.dim() - 1)))
    return float(v)


def _finite(g: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device))


def _sample_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm accumulated in float64, shaped (N, 1, ...)."""
    n = t.double().flatten(1).norm(dim=1) if t.numel() else t.new_zeros(t.shape[0]).double()
    return n.view(-1, *([1] * (t.dim() - 1)))


def _clip_ball_linf(v, x_nat, eps):
    return torch.minimum(torch.maximum(v, x_nat - eps), x_nat + eps)


def _clip_bounds(v: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return v.clamp(float(bounds[0]), float(bounds[1]))


def _l2_ball(x_adv: torch.Tensor, x_nat: torch.Tensor, eps) -> torch.Tensor:
    """x_nat + delta * min(1, eps/||delta||), in the compute type."""
    delta = x_adv - x_nat
    norm = _sample_norm(delta)
    eps64 = eps.double() if isinstance(eps, torch.Tensor) else eps
    factor = torch.where(norm > eps64, eps64 / norm, torch.ones_like(norm)).to(x_adv.dtype)
    return x_nat + factor * delta


def linf_step(x_adv, x_nat, grad, *, alpha, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """clip(clip(x_adv + alpha * sign(grad), x_nat - eps, x_nat + eps), lo, hi)."""
    acc = _acc(x_adv)
    xa, xn, g = x_adv.to(acc), x_nat.to(acc), grad.to(acc)
    v = xa + _per_sample(alpha, xa) * torch.sign(_finite(g))
    v = _clip_ball_linf(v, xn, _per_sample(eps, xa))
    return _clip_bounds(v, bounds).to(x_adv.dtype)


def linf_project(x_adv, x_nat, *, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """clip(clip(x_adv, x_nat - eps, x_nat + eps), lo, hi)."""
    acc = _acc(x_adv)
    xa, xn = x_adv.to(acc), x_nat.to(acc)
    return _clip_bounds(_clip_ball_linf(xa, xn, _per_sample(eps, xa)), bounds).to(x_adv.dtype)


def l2_step(x_adv, x_nat, grad, *, alpha, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Step alpha along grad/||grad|| per sample, project onto the L2 eps-ball, clip to bounds."""
    acc = _acc(x_adv)
    xa, xn, g = x_adv.to(acc), x_nat.to(acc), _finite(grad.to(acc))
    norm = _sample_norm(g)
    alpha64 = _per_sample(alpha, xa)
    alpha64 = alpha64.double() if isinstance(alpha64, torch.Tensor) else alpha64
    step = torch.where(norm > 0, alpha64 / norm, torch.zeros_like(norm)).to(acc)
    step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    v = _l2_ball(xa + step * g, xn, _per_sample(eps, xa))
    return _clip_bounds(v, bounds).to(x_adv.dtype)


def l2_project(x_adv, x_nat, *, eps, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Project x_adv onto the L2 eps-ball around x_nat per sample, then clip to bounds."""
    acc = _acc(x_adv)
    xa, xn = x_adv.to(acc), x_nat.to(acc)
    return _clip_bounds(_l2_ball(xa, xn, _per_sample(eps, xa)), bounds).to(x_adv.dtype)
