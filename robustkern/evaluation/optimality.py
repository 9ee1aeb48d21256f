"""AttackBench's local optimality (Cinà et al., "AttackBench: Evaluating Gradient-based Attacks
for Adversarial Examples", AAAI 2025): how close each minimum-norm attack's robust-accuracy
curve comes to the best curve of all the attacks run on the same points, as a share of the
room between the best curve and an attack that finds nothing."""

from __future__ import annotations

import math

import torch


def optimality(
    distances: dict[str, torch.Tensor], clean_correct: torch.Tensor, d_max: float
) -> dict[str, float]:
    """AttackBench's local optimality of each attack, judged against the per-sample best of all
    the attacks given (the "ensemble").

    Attack a's robust accuracy at eps is rho_a(eps) = #{i : d_ai > eps} / N, a step curve. Its
    area on [0, d_max] is exactly A_a = sum_i min(d_ai, d_max) / N. With the ensemble's distances
    d*_i = min_a d_ai (area A*) and an attack that finds nothing (robust accuracy = clean accuracy
    throughout: A_worst = d_max * #correct / N),

        optimality(a) = 1 - (A_a - A*) / (A_worst - A*) = (A_worst - A_a) / (A_worst - A*):

    1 for an attack as good as the ensemble at every eps in [0, d_max], 0 for one that finds
    nothing there. As in AttackBench's code, a misclassified clean sample counts at distance 0
    for every attack (whatever distance it reports) and a failure (inf) at d_max; AttackBench
    takes d_max as the largest ensemble distance. Its code integrates the step curves with the
    trapezoidal rule through their corners, an approximation; these areas are exact (float64).

    Args:
        distances: attack name -> (N,) per-sample minimum adversarial distances, in one norm
            and on the same N points (>= 0; inf where the attack found nothing).
        clean_correct: bool (N,): whether the model classifies each clean point correctly.
        d_max: the upper end (> 0, finite) of the distances compared, in the distances' units.

    Returns:
        attack name -> optimality, in [0, 1]; NaN for every attack where nothing separates
        them: no correctly classified point, or none the ensemble broke within d_max.
    """
    _check(distances, clean_correct, d_max)
    correct = clean_correct.detach().cpu()
    d = torch.stack([v.detach().cpu().to(torch.float64) for v in distances.values()])
    d = d.masked_fill(~correct, 0.0).clamp(max=d_max)  # (attacks, N)
    # A_worst - A per sample, each >= 0, so rounding cannot leave [0, 1]
    worst = correct.to(torch.float64) * d_max
    gained = (worst - d).mean(1)
    room = (worst - d.amin(0)).mean().item()
    if not room > 0:
        return dict.fromkeys(distances, math.nan)
    return {name: g.item() / room for name, g in zip(distances, gained, strict=True)}


def _check(distances: dict, clean_correct: torch.Tensor, d_max: float) -> None:
    if not distances:
        raise ValueError("distances is empty: give at least one attack's per-sample distances")
    if clean_correct.dtype != torch.bool or clean_correct.dim() != 1:
        raise ValueError(
            f"clean_correct must be a 1-D bool tensor (N,), got {clean_correct.dtype} of shape "
            f"{tuple(clean_correct.shape)}"
        )
    if not (math.isfinite(d_max) and d_max > 0):
        raise ValueError(f"d_max must be a finite number > 0, got {d_max}")
    n = clean_correct.shape[0]
    for name, d in distances.items():
        if d.dim() != 1 or d.shape[0] != n:
            raise ValueError(
                f"distances[{name!r}] must have shape ({n},) like clean_correct, got "
                f"{tuple(d.shape)}"
            )
        bad = d.isnan() | (d < 0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"distances[{name!r}] must be >= 0 (inf for a failure), got {d[i].item()} at "
                f"index {i}"
            )
