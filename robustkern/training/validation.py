"""What the trainer measures besides the loss: clean and robust accuracy on validation (and
training) images at each epoch end, summed over ranks, and the class probabilities of chosen
images over time."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from robustkern._env import derived_seed
from robustkern.evaluation import evaluate
from robustkern.modes import eval_mode
from robustkern.training.batches import length, rows
from robustkern.training.config import TrainConfig
from robustkern.training.loss import CERTIFIED, gaussian_noise


def accuracies(model, data, config: TrainConfig, seed_key: tuple, device, rank: int, world: int):
    """(clean, robust) accuracy of ``model`` on ``data`` (robust None when eps is 0), each rank
    scoring its share and the counts summed over ranks; robust under PGD with
    ``config.val_steps`` steps and a random start seeded by ``seed_key`` and the rank (method
    "gaussian": correct on x and on one draw of x + eps N(0, I), the same seeding; "ibp" and
    "crown-ibp": verified by IBP at eps, what they train for, cheap and deterministic)."""
    if data is None:
        return None, None
    if world > 1 and not isinstance(data, DataLoader):
        data = rows(data, range(rank, length(data), world))
    g = torch.Generator(device).manual_seed(derived_seed(config.seed, *seed_key, rank))
    attack = "pgd" if config.eps > 0 else "none"
    options = dict(eps=config.eps, norm=config.norm, steps=config.val_steps, generator=g,
                   bounds=config.bounds) if attack == "pgd" else {}  # fmt: skip
    if config.method == "gaussian":  # scored under the noise it trains for, not PGD at sigma
        attack, options = _gaussian, dict(sigma=config.eps, generator=g)
    certified = config.method in CERTIFIED
    if certified:
        attack, options = "none", dict(eps=config.eps, norm=config.norm, bounds=config.bounds,
                                       certify="ibp")  # fmt: skip
    result = evaluate(model, data, attack, device=device, progress=False, **options)
    robust = result.certified_correct if certified else result.robust_correct
    counts = torch.tensor(
        [result.clean_correct.sum(), robust.sum(), result.n],
        dtype=torch.float64, device=device,
    )  # fmt: skip
    if world > 1:
        dist.all_reduce(counts)
    clean, robust, n = counts.tolist()
    n = max(n, 1)
    return clean / n, (robust / n if config.eps > 0 else None)


def _gaussian(model, x, y, *, sigma: float, generator) -> torch.Tensor:
    """The noisy inputs of method "gaussian", as an attack ``evaluate`` scores."""
    return gaussian_noise(x, sigma, generator)


def snapshot(model, tracked: dict, images: torch.Tensor, labels, index, when: float, device):
    """Appends the class probabilities of ``images`` (eval mode) at training time ``when``
    (in epochs) to ``tracked``, once per time."""
    if tracked and tracked["epoch"][-1] == when:
        return
    with eval_mode(model), torch.no_grad():
        probs = F.softmax(model(images.to(device)).float(), dim=1).cpu().tolist()
    if not tracked:
        tracked.update(index=list(index), label=labels.tolist(), epoch=[], probs=[])
    tracked["epoch"].append(when)
    tracked["probs"].append(probs)
