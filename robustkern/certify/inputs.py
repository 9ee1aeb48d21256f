"""The input set {x' : ||x' - x||_norm <= eps} intersected with the box [lo, hi], and the minimum
of a linear function over it (the concretisation of a linear bound).

L-inf: the set is itself a box, and the minimum is exact. L2: the minimum over the ball alone
(``a.x - eps ||a||_2``) and over the box alone are both sound; the Lagrangian dual of the ball
constraint over the box is sound for every multiplier and exact at the best one, which a
bisection finds (see ``_ball_box_dual``). The bound returned is the best of the three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DUAL_STEPS = 40  # bisection steps on log(lambda)
_DUAL_RANGE = 50.0  # lambda searched in [lambda_ball * e^-50, lambda_ball]


@dataclass
class InputSet:
    """x (B, *S) the centres, eps (B,) the radii, ``norm`` "linf" or "l2", and ``lower`` /
    ``upper`` (B, *S) the smallest box holding the set: max(lo, x - eps), min(hi, x + eps)."""

    x: torch.Tensor
    eps: torch.Tensor
    norm: str
    lower: torch.Tensor
    upper: torch.Tensor

    @classmethod
    def around(cls, x: torch.Tensor, eps: torch.Tensor, norm: str, box: tuple[float, float]):
        e = eps.view(-1, *(1,) * (x.dim() - 1))
        return cls(x, eps, norm, (x - e).clamp_min_(box[0]), (x + e).clamp_max_(box[1]))

    def min_linear(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """min over the set of a . x' + c for a (B or 1, K, *S), c (B, K): (B, K)."""
        a = a.flatten(2)
        x = self.x.flatten(1)[..., None]  # (B, D, 1): batched matrix-vector products
        lo = (self.lower.flatten(1) - self.x.flatten(1))[..., None]  # offsets, <= 0
        hi = (self.upper.flatten(1) - self.x.flatten(1))[..., None]
        centre = (a @ x).squeeze(-1) + c
        box = (a.clamp(min=0) @ lo + a.clamp(max=0) @ hi).squeeze(-1)
        if self.norm == "linf":
            return centre + box
        eps = self.eps[:, None]
        ball = -eps * a.norm(dim=-1)
        dual = _ball_box_dual(a, lo.transpose(1, 2), hi.transpose(1, 2), eps)
        return centre + torch.maximum(torch.maximum(box, ball), dual)


def _ball_box_dual(a, lo, hi, eps):
    """A lower bound on min a . d over ||d||_2 <= eps, lo <= d <= hi (lo <= 0 <= hi), for a
    (B or 1, K, D), lo / hi (B, 1, D), eps (B, 1): (B, K).

    For every lambda >= 0 the minimum is at least min over the box of a . d + lambda / 2
    (||d||^2 - eps^2) (the added term is <= 0 on the set: weak duality), a sum of one-dimensional
    problems solved at d = clip(-a / lambda, lo, hi). ||d(lambda)|| decreases in lambda; at
    lambda = ||a|| / eps the unclipped d has norm eps, so the best lambda (where ||d|| = eps, or 0)
    lies below it, found by bisection on log(lambda) without gradients; the bound at the lambda
    found is then evaluated with them (any lambda is sound, so the bisection's accuracy only
    affects tightness)."""
    tiny = torch.finfo(a.dtype).tiny
    eps = eps.clamp_min(tiny)
    top = (a.norm(dim=-1) / eps).clamp_min(tiny).log()  # (B, K)
    with torch.no_grad():
        lo_log, hi_log = top - _DUAL_RANGE, top.clone()
        for _ in range(_DUAL_STEPS):
            mid = (lo_log + hi_log) / 2
            d = (-a / mid.exp().clamp_min(tiny)[..., None]).clamp(lo, hi)
            long = d.square().sum(-1) > eps.square()  # ||d|| > eps: lambda must grow
            lo_log, hi_log = torch.where(long, mid, lo_log), torch.where(long, hi_log, mid)
        lam = hi_log.exp().clamp_min(tiny)
    d = (-a / lam[..., None]).clamp(lo, hi)
    return (a * d).sum(-1) + lam / 2 * (d.square().sum(-1) - eps.square())
