"""The adversarial loss for any training loop: PGD-AT, fast FGSM with random start, TRADES,
Gaussian noise augmentation (the base classifier of randomised smoothing) and certified
training on bound-propagation margins (IBP, CROWN-IBP)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from robustkern import ops
from robustkern.attacks import NORMS, pgd
from robustkern.attacks.gradients import loss_and_grad
from robustkern.attacks.pgd import L1_SPARSITY
from robustkern.attacks.steps import broadcast, noise_like
from robustkern.certify.propagation import NORMS as CERTIFIED_NORMS
from robustkern.certify.propagation import margin_bounds
from robustkern.checks import (
    attacking_for_training,
    check_choice,
    check_eps,
    check_inputs,
    check_logits,
)
from robustkern.modes import eval_mode
from robustkern.types import Bounds, PerSample, Shard

CERTIFIED = ("ibp", "crown-ibp")  # trained on certified margins, not on attacks
METHODS = ("standard", "pgd", "fgsm-rs", "trades", "gaussian", *CERTIFIED)
FINAL_KAPPA = {"ibp": 0.5, "crown-ibp": 0.0}  # Gowal et al.; Zhang et al.'s kappa 1 -> 0


def adversarial_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "pgd",
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    beta: float = 6.0,
    kappa: float | None = None,
    crown_weight: float = 1.0,
    attack_in_eval: bool | None = None,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The loss to backpropagate for one batch; two lines change in an existing loop::

        loss = adversarial_loss(model, x, y, method="pgd", eps=8 / 255)
        loss.backward()

    method: "standard" (cross-entropy on x), "pgd" (Madry et al.: cross-entropy at a PGD point,
    ``steps`` steps of ``alpha`` = 2.5 eps / steps, random start), "fgsm-rs" (Wong et al., "Fast
    is better than free": one sign step of ``alpha`` = 1.25 eps from a uniform random start,
    L-inf only) or "trades" (Zhang et al.: CE(f(x), y) + beta KL(f(x) || f(x')), x' maximising
    the KL term in ``steps`` steps of ``alpha`` = eps / 4 from x + 0.001 N(0, 1)) or
    "gaussian" (Cohen et al.'s training for randomised smoothing: cross-entropy at x + eps
    N(0, I), eps the noise's standard deviation sigma (> 0), the noise not clipped to the
    bounds, as in their code), or the certified methods "ibp" (Gowal et al.) and "crown-ibp"
    (Zhang et al.): kappa CE(f(x), y) + (1 - kappa) CE(-m, y), m (N, classes) the lower bounds
    on logit_y - logit_j over the eps-ball (``certify.margin_bounds``, in x's dtype, so -m is
    the worst-case logit vector); for "crown-ibp" m = crown_weight m_CROWN-IBP + (1 -
    crown_weight) m_IBP. kappa (in [0, 1]; None: the method's final value, 0.5 for "ibp", 0
    for "crown-ibp") and crown_weight (in [0, 1]) are what ``fit`` ramps; the model must be
    certifiable (``certify.graph.SUPPORTED``; no BatchNorm or dropout in train mode), e.g.
    ``models.cert_cnn``, and norm "linf" or "l2".

    The attack takes input gradients only: parameters' ``.grad`` change only when you call
    backward on the result. It runs in the model's current mode for "pgd" and "fgsm-rs" (as
    Madry's and Wong's code: batch norm sees the adversarial batches) and in eval mode for
    "trades" (as its authors' code); ``attack_in_eval`` overrides, and the mode is restored.
    A DistributedDataParallel model is attacked through its ``.module`` (the attack must not
    run the wrapper's gradient synchronisation); the loss goes through the wrapper.
    ``shard=(offset, total)``: x is rows offset.. of a global batch of ``total`` split over
    ranks; random starts are drawn as for the whole batch, so results do not depend on the
    number of ranks (the Gaussian noise too). ``return_logits``: also return the logits the loss
    was computed on (at x' for the adversarial methods; at x for "standard" and the certified
    methods, at the noisy x for "gaussian"), detached, for accuracy bookkeeping."""
    labels = check_inputs(x, y, bounds)
    check_choice(method, METHODS, "method")
    check_choice(norm, NORMS, "norm")
    if method == "fgsm-rs" and norm != "linf":
        raise ValueError("fgsm-rs is an L-inf method: use norm='linf' or method='pgd'")
    if steps < 1 or beta < 0:
        raise ValueError(f"steps must be >= 1 and beta >= 0, got {steps} and {beta}")
    eps = check_eps(eps, x.shape[0], finite=True)
    if method in CERTIFIED:
        loss, logits = _certified_loss(model, x, y, method, eps, norm, kappa, crown_weight,
                                       bounds, labels)  # fmt: skip
        return (loss, logits.detach()) if return_logits else loss
    if method in ("standard", "gaussian"):
        logits = model(x if method == "standard" else gaussian_noise(x, eps, generator, shard))
        check_logits(logits, x.shape[0], labels)
        loss = F.cross_entropy(logits, y)
        return (loss, logits.detach()) if return_logits else loss
    target = model.module if isinstance(model, DistributedDataParallel) else model
    in_eval = attack_in_eval if attack_in_eval is not None else method == "trades"
    # a train-mode model is what PGD-AT means to attack: no TrainModeWarning here
    with eval_mode(target) if in_eval else nullcontext(), attacking_for_training():
        if method == "trades":
            x_adv = _trades_point(target, x, eps, norm, steps, alpha, bounds, generator, labels,
                                  shard)  # fmt: skip
        else:
            one = method == "fgsm-rs"
            x_adv = pgd(target, x, y, eps=eps, norm=norm, steps=1 if one else steps,
                        alpha=(1.25 * eps if one else alpha), bounds=bounds,
                        generator=generator, shard=shard)  # fmt: skip
    logits_adv = model(x_adv)
    loss = F.cross_entropy(logits_adv, y)
    if method == "trades":
        logits = model(x)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits.float(), 1),
                      reduction="batchmean")  # fmt: skip
        loss = F.cross_entropy(logits, y) + beta * kl
    return (loss, logits_adv.detach()) if return_logits else loss


def gaussian_noise(
    x: torch.Tensor,
    sigma: PerSample,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> torch.Tensor:
    """x + sigma N(0, I), unclipped: the inputs of method "gaussian" (sigma a number or (N,),
    > 0, inputs' units). ``shard`` as for ``adversarial_loss``."""
    positive = bool((sigma > 0).all()) if isinstance(sigma, torch.Tensor) else sigma > 0
    if not positive:
        raise ValueError("method 'gaussian' needs eps > 0: the noise's standard deviation sigma")
    noise = noise_like(x, lambda t: t.normal_(generator=generator), shard)
    return x + broadcast(sigma, x) * noise


def _certified_loss(model, x, y, method, eps, norm, kappa, crown_weight, bounds, labels):
    """(loss, logits at x) of the certified methods (see ``adversarial_loss``)."""
    kappa = FINAL_KAPPA[method] if kappa is None else kappa
    if norm not in CERTIFIED_NORMS:
        raise ValueError(f"method {method!r} bounds L-inf or L2 balls: norm must be one of "
                         f"{CERTIFIED_NORMS}, got {norm!r}")  # fmt: skip
    if not (0 <= kappa <= 1 and 0 <= crown_weight <= 1):
        raise ValueError(f"kappa and crown_weight must be in [0, 1], got {kappa}, {crown_weight}")
    logits = model(x)
    check_logits(logits, x.shape[0], labels)
    natural = F.cross_entropy(logits, y)
    if kappa == 1 or (not isinstance(eps, torch.Tensor) and eps == 0):
        return natural, logits  # at eps 0, -m is the logits shifted by logit_y: the same CE
    # the bounds trace the bare network; the natural forward above went through any DDP
    # wrapper and reaches every parameter, so the gradients are still synchronised
    target = model.module if isinstance(model, DistributedDataParallel) else model
    args = dict(eps=eps, norm=norm, bounds=bounds, dtype=None)
    mix = {"crown-ibp": crown_weight, "ibp": 1 - crown_weight} if method == "crown-ibp" else {
        "ibp": 1.0}  # fmt: skip
    with torch.autocast(x.device.type, enabled=False):  # bounds in x's dtype, not AMP's
        margin = sum(w * margin_bounds(target, x, y, method=m, **args)
                     for m, w in mix.items() if w > 0)  # fmt: skip
    return kappa * natural + (1 - kappa) * F.cross_entropy(-margin, y), logits


def _trades_point(model, x, eps, norm, steps, alpha, bounds, generator, labels, shard):
    """The point in the eps-ball around x maximising KL(f(x) || f(x')), by projected steps."""
    x_nat = x.detach()
    with torch.no_grad():
        p_nat = F.softmax(model(x_nat).float(), 1)
    noise = noise_like(x_nat, lambda t: t.normal_(generator=generator), shard)
    x_adv = x_nat + 0.001 * noise
    step = getattr(ops, f"{norm}_step_")
    alpha = eps / 4 if alpha is None else alpha
    sparse = {"sparsity": L1_SPARSITY} if norm == "l1" else {}

    def kl(logits):
        return F.kl_div(F.log_softmax(logits.float(), 1), p_nat, reduction="none").sum(1)

    getattr(ops, f"{norm}_project_")(x_adv, x_nat, eps=eps, bounds=bounds)
    for _ in range(steps):
        grad, _, _ = loss_and_grad(model, x_adv, kl, labels)
        step(x_adv, x_nat, grad, alpha=alpha, eps=eps, bounds=bounds, **sparse)
    return x_adv
