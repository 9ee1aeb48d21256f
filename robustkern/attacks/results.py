"""One return convention for every attack.

An attack returns ``x_adv`` alone, or, when extras are asked for, the tuple ``(x_adv, *extras)``
with the extras in this fixed order, each present only when its flag is set:

* ``return_success``: bool (N,), the model is fooled at ``x_adv`` (untargeted: misclassified;
  targeted: predicted as the target in ``y``).
* ``return_norms``: float (N,), the distance from x to ``x_adv`` in the attack's norm where the
  sample is fooled (0 where the attack returned x itself, as for a sample the model already
  gets wrong), inf where it is not: what a minimum-norm attack reports and
  ``robust_accuracy_curve`` reads.
* ``return_queries``: int64 (N,), the model passes (forwards, or forwards with the input's
  gradient) the attack spent on each sample, a clean forward that only chose which samples to
  attack excluded.

So ``x_adv, fooled = pgd(..., return_success=True)`` and ``x_adv, fooled, queries =
square(..., return_success=True, return_queries=True)`` read the same way for every attack.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.losses import is_adversarial


def finish(
    model,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    flags: tuple[bool, bool, bool],
    *,
    norm: str,
    targeted: bool = False,
    success: torch.Tensor | None = None,
    norms: torch.Tensor | None = None,
    queries: torch.Tensor | int | None = None,
):
    """``x_adv``, or ``(x_adv, *extras)`` for the flags (success, norms, queries) that are set.
    What the attack did not track is computed here: success with one forward of ``x_adv``,
    norms from ``x_adv - x``; ``queries`` may be one count for every sample."""
    want_success, want_norms, want_queries = flags
    if not (want_success or want_norms or want_queries):
        return x_adv
    if success is None and (want_success or (want_norms and norms is None)):
        with torch.no_grad():
            success = is_adversarial(model(x_adv), y, targeted)
    extras = []
    if want_success:
        extras.append(success)
    if want_norms:
        extras.append(norms if norms is not None else distances(x, x_adv, norm, success))
    if want_queries:
        if not isinstance(queries, torch.Tensor):
            queries = torch.full((len(x),), int(queries), dtype=torch.int64, device=x.device)
        extras.append(queries)
    return (x_adv, *extras)


def distances(x: torch.Tensor, x_adv: torch.Tensor, norm: str, fooled: torch.Tensor):
    """Per sample: ``||x_adv - x||`` in ``norm`` where fooled, inf elsewhere; "l0" counts the
    changed coordinates (elements, every channel apart)."""
    delta = (x_adv - x).flatten(1).float()
    size = delta.norm(p={"linf": math.inf, "l2": 2, "l1": 1, "l0": 0}[norm], dim=1)
    return torch.where(fooled, size, torch.full_like(size, math.inf))
