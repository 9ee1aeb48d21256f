"""What attack loops share besides the fused step ops: noise drawn as for a whole sharded batch,
random points in the eps-ball, per-sample values broadcast over images, and the best point
kept over restarts."""

from __future__ import annotations

import math

import torch

from robustkern import ops
from robustkern.types import Bounds, PerSample, Shard


def noise_like(x: torch.Tensor, fill, shard: Shard | None = None) -> torch.Tensor:
    """Random numbers shaped like x, drawn by ``fill(tensor)`` (an in-place sampler).
    ``shard=(offset, total)``: x holds rows offset..offset+N of a batch of ``total`` rows split
    over data-parallel ranks; the draw is made for all ``total`` rows and this shard's rows are
    kept, so a sample's noise does not depend on how many ranks share its batch."""
    if shard is None:
        return fill(torch.empty_like(x))
    offset, total = shard
    if not 0 <= offset <= offset + x.shape[0] <= total:
        raise ValueError(f"shard=(offset, total) must hold x's {x.shape[0]} rows, got {shard}")
    return fill(x.new_empty((total, *x.shape[1:])))[offset : offset + x.shape[0]]


def broadcast(v: PerSample, x: torch.Tensor) -> PerSample:
    """A per-sample tensor shaped (N, 1, ...) to broadcast over x; numbers unchanged."""
    if isinstance(v, torch.Tensor):
        return v.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return v


def keep_best(best, x_adv: torch.Tensor, fooled: torch.Tensor, score: torch.Tensor):
    """(x, fooled, score) per sample over calls: an adversarial point beats a non-adversarial
    one, then the higher score wins. ``best`` is None on the first call. No host sync."""
    if best is None:
        return x_adv.clone(), fooled, score
    best_x, best_fooled, best_score = best
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (score > best_score))
    return (
        torch.where(broadcast(better, x_adv), x_adv, best_x),
        fooled | best_fooled,
        torch.where(better, score, best_score),
    )


def random_in_ball(x: torch.Tensor, eps: float, norm: str, bounds: Bounds, generator):
    """x plus a random point of the eps-ball: uniform in the L-inf box, on the L2 sphere of
    radius eps, or (L1) Gaussian noise projected onto the L1 ball; clipped to the bounds."""
    noise = torch.empty_like(x)
    if norm == "linf":
        return (x + noise.uniform_(-eps, eps, generator=generator)).clamp(*bounds)
    noise.normal_(generator=generator)
    if norm == "l1":
        return l1_start(x, noise, eps, bounds)
    return (x + noise * eps / broadcast(noise.flatten(1).norm(dim=1).clamp_min(1e-12), x)).clamp(
        *bounds
    )


def l1_start(x: torch.Tensor, noise: torch.Tensor, eps: PerSample, bounds: Bounds):
    """AutoAttack's L1 start: x plus standard Gaussian noise (in units of the bounds' width),
    projected onto the L1 eps-ball within the bounds: a point on the ball's surface whose
    coordinates near the box's faces are spent first."""
    start = x + noise * (float(bounds[1]) - float(bounds[0]))
    ops.l1_project_(start, x, eps=eps, bounds=bounds)
    return start


def box_diameter(x: torch.Tensor, norm: str, bounds: Bounds) -> float:
    """The largest distance between two points of the input box (one sample of x's shape)."""
    width = float(bounds[1]) - float(bounds[0])
    return width * {"linf": 1, "l2": math.sqrt(x[0].numel()), "l1": x[0].numel()}[norm]


def leave_batch(s: dict, fooled, out, found, used, queries_so_far) -> torch.Tensor:
    """A random search's fooled samples leave its batch with their point ``s["x"]`` and query
    count; ``s`` holds per-sample tensors only, ``s["row"]`` their rows of the outputs. Returns
    ``fooled`` for the samples left (all False)."""
    rows = s["row"][fooled]
    out[rows], found[rows], used[rows] = s["x"][fooled], True, queries_so_far
    keep = ~fooled
    for key in s:
        s[key] = s[key][keep]
    return fooled[keep]
